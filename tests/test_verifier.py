import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftrl_kit.envs.general_points import GPConfig, GPRewards, OUTCOMES, verify
from sftrl_kit.envs.general_points.cards import Card
from sftrl_kit.envs.general_points.verifier import normalise_rank

HAND = [Card("Q", "S"), Card("3", "C"), Card("8", "S"), Card("A", "C")]  # ten: 10 3 8 1
TEXT = GPConfig()
IMAGE = GPConfig(modality="image")
ORDINAL = GPConfig(face_rule="ordinal")  # 12 3 8 1


def answer(formula, cards=("Q", "3", "8", "A")):
    return json.dumps({"cards": list(cards), "number": [], "formula": formula})


@pytest.mark.parametrize(
    "formula, config, outcome, reward",
    [
        ("(10-1)*8/3", TEXT, "correct", 5.0),
        ("( 10 - 1 ) * 8 / 3 = 24", TEXT, "correct", 5.0),
        ("(12-8+1)*3+9", TEXT, "numbers_mismatch", -2.0),
        ("10+8+3+1", TEXT, "wrong_value", -1.0),
        ("(10-1)*8/3=25", TEXT, "wrong_value", -1.0),
        ("10*8*3*1", TEXT, "wrong_value", -1.0),
        ("10+8+3", TEXT, "numbers_mismatch", -2.0),
        ("10+8+3+1+1", TEXT, "numbers_mismatch", -2.0),
        ("(10-1)*8/3)", TEXT, "illegal_formula", -3.0),
        ("10/(8-8)*3*1", TEXT, "numbers_mismatch", -2.0),
        ("(12-8)*3*(1+1)", ORDINAL, "numbers_mismatch", -2.0),
        ("12*8/(3+1)", ORDINAL, "correct", 5.0),
    ],
)
def test_outcomes_and_the_paper_reward_table(formula, config, outcome, reward):
    verdict = verify(answer(formula), HAND, config)
    assert (verdict.outcome, verdict.reward) == (outcome, reward)
    assert verdict.feedback


def test_division_by_zero_with_the_right_numbers_is_illegal():
    hand = [Card("3", "S"), Card("3", "C"), Card("8", "S"), Card("8", "C")]
    verdict = verify(answer("8/(3-3)*8"), hand, TEXT)
    assert (verdict.outcome, verdict.reward) == ("illegal_formula", -3.0)
    assert "divides by zero" in verdict.feedback


def test_fractional_solutions_are_correct():
    hand = [Card("3", "S"), Card("3", "C"), Card("8", "S"), Card("8", "C")]
    assert verify(answer("8/(3-8/3)"), hand, TEXT).outcome == "correct"


def test_feedback_names_what_went_wrong():
    assert "equals 22, not 24" in verify(answer("10+8+3+1"), HAND, TEXT).feedback
    mismatch = verify(answer("(12-8+1)*3+9"), HAND, TEXT).feedback
    assert "[1, 3, 8, 9, 12]" in mismatch and "[1, 3, 8, 10]" in mismatch


def test_applying_the_trained_rule_under_the_new_rule_is_flagged():
    verdict = verify(answer("(10-1)*8/3"), HAND, ORDINAL)  # used Q=10 (the trained rule); the new rule says 12
    assert verdict.outcome == "numbers_mismatch" and verdict.other_rule_used
    assert not verify(answer("10+8+3"), HAND, ORDINAL).other_rule_used


def test_gp_vl_charges_wrong_recognition_on_top_of_the_outcome():
    right = verify(answer("(10-1)*8/3"), HAND, IMAGE)
    assert (right.reward, right.recognition_correct) == (5.0, True)
    misread = verify(answer("(10-1)*8/3", cards=("K", "3", "8", "A")), HAND, IMAGE)
    assert (misread.outcome, misread.reward, misread.recognition_correct) == ("correct", 3.5, False)
    assert "not the cards in the image" in misread.feedback
    both = verify(answer("10+8+3+1", cards=("3",)), HAND, IMAGE)
    assert both.reward == -1.0 - 1.5
    unreadable = verify("no answer", HAND, IMAGE)
    assert (unreadable.reward, unreadable.recognition_correct) == (-3.0, False)
    assert verify("no answer", HAND, TEXT).recognition_correct is None
    missing = verify('{"formula": "(10-1)*8/3"}', HAND, IMAGE)
    assert missing.recognition_correct is False and missing.reward == 3.5


def test_gp_l_does_not_check_recognition():
    verdict = verify(answer("(10-1)*8/3", cards=("K",)), HAND, TEXT)
    assert verdict.reward == 5.0 and verdict.recognition_correct is None


def test_card_names_are_normalised_for_recognition():
    names = ["10 of spades", "Q♥", "KH", "king", "T", "ace", "7"]
    assert [normalise_rank(n) for n in names] == ["10", "Q", "K", "K", "10", "A", "7"]
    hand = [Card("10", "S"), Card("Q", "H"), Card("K", "D"), Card("A", "C")]
    cards = ("10 of spades", "Q♥", "king", "Ace")
    assert verify(answer("(12-10)*(13-1)", cards), hand, GPConfig(modality="image")).recognition_correct


def test_reward_table_is_configurable():
    config = GPConfig(rewards=GPRewards(correct=1.0, illegal=-10.0))
    assert verify(answer("(10-1)*8/3"), HAND, config).reward == 1.0
    assert verify("nonsense", HAND, config).reward == -10.0


HOSTILE = {
    "ten_megabytes": "{" + '"formula": "1+1", ' * 500_000 + "}",
    "deep_parentheses": '{"formula": "' + "(" * 1_000_000 + "1" + ")" * 1_000_000 + '"}',
    "deep_braces": "{" * 1_000_000,
    "power_tower": '{"formula": "9**9**9**9"}',
    "huge_integer": '{"formula": "' + "9" * 5000 + '"}',
    "division_by_zero": '{"formula": "10/(8-8)+3+1"}',
    "unicode_digits": '{"formula": "(١٠-٨+١)*٣"}',
    "null_bytes": '{"formula": "1\\u0000+2"}',
    "not_a_string": None,
    "formula_is_a_list": '{"formula": [10, 8, 3, 1]}',
    "formula_is_a_number": '{"formula": 24}',
    "python_code": "{\"formula\": \"__import__('os').system('echo hacked')\"}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_answers_get_a_defined_outcome(name):
    verdict = verify(HOSTILE[name], HAND, TEXT)
    assert verdict.outcome in OUTCOMES and verdict.outcome != "correct"
    assert verdict.reward <= -1.0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_whatsoever_gets_a_verdict(text):
    verdict = verify(text, HAND, IMAGE)
    assert verdict.outcome in OUTCOMES


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r'\{"formula": "[0-9+\-*/() =]{0,40}"\}', fullmatch=True))
def test_formula_shaped_text_never_crashes(text):
    assert verify(text, HAND, TEXT).outcome in OUTCOMES
