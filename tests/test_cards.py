import random

import pytest

from sftrl_kit.envs.general_points.cards import FACE_RANKS, Card, card_value, deal, deck, hand_values
from sftrl_kit.envs.general_points.solver import is_solvable


def test_deck_sizes_and_colours():
    assert len(deck()) == 52
    assert len(set(deck())) == 52
    assert len(deck("black")) == 26
    assert not any(c.is_red for c in deck("black"))
    assert len(deck("red")) == 26
    assert all(c.is_red for c in deck("red"))


def test_face_card_rules_and_ace():
    assert [card_value(r, "ten") for r in ("A", "9", "10", "J", "Q", "K")] == [1, 9, 10, 10, 10, 10]
    assert [card_value(r, "ordinal") for r in ("A", "10", "J", "Q", "K")] == [1, 10, 11, 12, 13]
    with pytest.raises(ValueError, match="face_rule"):
        card_value("J", "eleven")


@pytest.mark.parametrize("face_rule", ["ten", "ordinal"])
@pytest.mark.parametrize("sampling", ["uniform", "with_face"])
@pytest.mark.parametrize("colours", ["all", "black", "red"])
def test_every_deal_is_solvable_and_follows_its_settings(face_rule, sampling, colours):
    rng = random.Random(7)
    for _ in range(40):
        hand = deal(rng, face_rule=face_rule, sampling=sampling, colours=colours)
        assert len(set(hand)) == 4  # without replacement
        assert is_solvable(hand_values(hand, face_rule), 24)
        if sampling == "with_face":
            assert any(c.rank in FACE_RANKS for c in hand)
        if colours != "all":
            assert all(c.is_red == (colours == "red") for c in hand)


def test_other_targets_are_honoured():
    rng = random.Random(1)
    for target in (1, 10, 36):
        assert is_solvable(hand_values(deal(rng, target=target), "ten"), target)
    with pytest.raises(ValueError, match="positive"):
        deal(rng, target=0)


def test_same_seed_same_deals():
    first = [deal(random.Random(5)) for _ in range(3)]
    assert first == [deal(random.Random(5)) for _ in range(3)]
    assert deal(random.Random(5)) != deal(random.Random(6))


def test_card_codes_round_trip_and_reject_nonsense():
    assert Card.from_code("10h") == Card("10", "H")
    assert Card("Q", "S").code == "QS"
    for bad in ("", "Z", "1S", "QX", "11H"):
        with pytest.raises(ValueError):
            Card.from_code(bad)
