import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sftrl_kit.envs import recognised
from sftrl_kit.envs.general_points import OUTCOMES, GPConfig, GPRewards, verify
from sftrl_kit.envs.general_points.cards import Card
from sftrl_kit.envs.general_points.formula import parse_formula
from sftrl_kit.envs.general_points.verifier import normalise_rank
from sftrl_kit.envs.virl import verifier as virl_verifier
from sftrl_kit.envs.virl.config import VirlConfig
from sftrl_kit.envs.virl.prompts import valid_actions
from sftrl_kit.envs.virl.routes import Decision

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
    assert "[1, 3, 8, 9, 12]" in mismatch
    assert "[1, 3, 8, 10]" in mismatch


def test_applying_the_trained_rule_under_the_new_rule_is_flagged():
    verdict = verify(answer("(10-1)*8/3"), HAND, ORDINAL)  # used Q=10 (the trained rule); the new rule says 12
    assert verdict.outcome == "numbers_mismatch"
    assert verdict.other_rule_used
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
    assert missing.recognition_correct is False
    assert missing.reward == 3.5


def test_gp_l_does_not_check_recognition():
    verdict = verify(answer("(10-1)*8/3", cards=("K",)), HAND, TEXT)
    assert verdict.reward == 5.0
    assert verdict.recognition_correct is None


def test_card_names_are_normalised_for_recognition():
    names = ["10 of spades", "Q♥", "KH", "king", "T", "ace", "7"]
    assert [normalise_rank(n) for n in names] == ["10", "Q", "K", "K", "10", "A", "7"]
    hand = [Card("10", "S"), Card("Q", "H"), Card("K", "D"), Card("A", "C")]
    cards = ("10 of spades", "Q♥", "king", "Ace")
    assert verify(answer("(12-10)*(13-1)", cards), hand, GPConfig(modality="image")).recognition_correct


@pytest.mark.parametrize(
    "formula, hand, outcome, claimed",
    [
        ("(10-1)*8/3", HAND, "correct", None),
        ("(10-1)*8/3 = 24", HAND, "correct", 24),
        ("10+8+3+1=22", HAND, "wrong_value", 22),
        ("(10-1)*8/3=25", HAND, "wrong_value", 25),
        ("10+8+3=21", HAND, "numbers_mismatch", 21),
        ("8/(3-3)*8=24", [Card("3", "S"), Card("3", "C"), Card("8", "S"), Card("8", "C")], "illegal_formula", 24),
        ("(10-1)*8/3)=24", HAND, "illegal_formula", None),  # does not parse: it claims nothing
    ],
)
def test_the_verdict_carries_what_the_formula_claims(formula, hand, outcome, claimed):
    verdict = verify(answer(formula), hand, TEXT)
    assert (verdict.outcome, verdict.claimed) == (outcome, claimed)
    if claimed is not None:
        assert claimed == parse_formula(formula).claimed_result
    if outcome == "correct" or formula.startswith("10+8+3+1"):  # an honest claim equals the value
        assert verdict.value == str(claimed if claimed is not None else 24)
    assert json.loads(json.dumps(verdict.to_dict()))["claimed"] == claimed  # episodes store it as JSON


def test_recognised_reads_the_cards_a_gp_verdict_records():
    misread = verify(answer("(10-1)*8/3", cards=("K", "3", "8", "A")), HAND, IMAGE).to_dict()
    assert recognised(misread) == ["K", "3", "8", "A"]
    assert misread["recognition_correct"] is False
    assert recognised(verify(answer("(10-1)*8/3", cards=("Q♠", "3", "8", "ace")), HAND, IMAGE).to_dict()) == [
        "Q",
        "3",
        "8",
        "A",
    ]
    assert recognised(verify(answer("(10-1)*8/3", cards=()), HAND, IMAGE).to_dict()) is None  # named no cards
    assert recognised(verify("no answer", HAND, IMAGE).to_dict()) is None
    assert recognised(verify(answer("(10-1)*8/3"), HAND, TEXT).to_dict()) == ["Q", "3", "8", "A"]


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
    assert verdict.outcome in OUTCOMES
    assert verdict.outcome != "correct"
    assert verdict.reward <= -1.0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=400))
def test_any_text_whatsoever_gets_a_verdict(text):
    verdict = verify(text, HAND, IMAGE)
    assert verdict.outcome in OUTCOMES


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.from_regex(r'\{"formula": "[0-9+\-*/() =]{0,40}"\}', fullmatch=True))
def test_formula_shaped_text_never_crashes(text):
    assert verify(text, HAND, TEXT).outcome in OUTCOMES


# Escapes: an answer whose strings are written with JSON escapes scores as the same
# answer written plainly, whitespace around the value included (json.dumps escapes all
# of these but the space).
WHITESPACE = st.text(alphabet=st.sampled_from(" \n\t\r\x0b\x0c"), max_size=3)
THOUGHTS = st.text(max_size=30)


def escape_every_character(text: str) -> str:
    """A JSON string literal with every UTF-16 code unit written as \\uXXXX."""
    units = text.encode("utf-16-be")
    codes = (int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2))
    return '"' + "".join(f"\\u{code:04x}" for code in codes) + '"'


def write_with_escapes(answer: dict, key: str, how: str) -> str:
    if how == "every character escaped":
        values = {k: escape_every_character(v) if k == key else json.dumps(v) for k, v in answer.items()}
        return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in values.items()) + "}"
    ensure_ascii, indent = {"json": (False, None), "ascii": (True, None), "indented": (True, 2)}[how]
    return json.dumps(answer, ensure_ascii=ensure_ascii, indent=indent)


ENCODINGS = st.sampled_from(["json", "ascii", "indented", "every character escaped"])
GP_FORMULAS = ["(10-1)*8/3", "( 10 - 1 ) * 8 / 3 = 24", "10+8+3+1", "10+8+3", "(10-1)*8/3)", "(10-1)×8÷3"]
GP_CARDS = [("Q", "3", "8", "A"), ("K", "3", "8", "A")]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    formula=st.sampled_from(GP_FORMULAS),
    before=WHITESPACE,
    after=WHITESPACE,
    thought=THOUGHTS,
    cards=st.sampled_from(GP_CARDS),
    how=ENCODINGS,
)
@example(formula="(10-1)*8/3", before="", after="\n", thought="a\nb", cards=GP_CARDS[0], how="json")
def test_gp_formula_written_with_escapes_scores_as_the_plain_formula(formula, before, after, thought, cards, how):
    plain = verify(f'{{"cards": {json.dumps(cards)}, "formula": "{formula}"}}', HAND, IMAGE)
    written = {"thought": thought, "cards": list(cards), "formula": before + formula + after}
    escaped = verify(write_with_escapes(written, "formula", how), HAND, IMAGE)
    scored = (escaped.outcome, escaped.reward, escaped.recognition_correct, escaped.formula)
    assert scored == (plain.outcome, plain.reward, plain.recognition_correct, plain.formula)


VIRL_POINT = Decision(point=0, heading=0.0, landmarks=[], action="turn_direction(southwest)", intersection=None)
VIRL_ACTIONS = sorted(valid_actions("absolute") | {"turn_direction(left)", "Turn_Direction( South West )"})


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    action=st.sampled_from(VIRL_ACTIONS),
    before=WHITESPACE,
    after=WHITESPACE,
    observation=THOUGHTS,
    how=ENCODINGS,
)
@example(action="turn_direction(southwest)", before="", after="\n", observation="", how="json")
def test_virl_action_written_with_escapes_scores_as_the_plain_action(action, before, after, observation, how):
    config = VirlConfig()
    plain = virl_verifier.verify(f'{{"action": "{action}"}}', VIRL_POINT, config)
    written = {"current observation": observation, "action": before + action + after}
    escaped = virl_verifier.verify(write_with_escapes(written, "action", how), VIRL_POINT, config)
    assert (escaped.outcome, escaped.reward, escaped.action) == (plain.outcome, plain.reward, plain.action)


def test_the_escaped_answers_of_the_issue_score_as_written_plainly():
    hand = [Card("3", "S"), Card("3", "C"), Card("8", "S"), Card("8", "C")]
    for escaped in ("8/(3-8/3)\\n", "8/(3-8/3)\\t", "\\u0038/(3-8/3)"):  # \u0038 is "8"
        assert verify(f'{{"formula": "{escaped}"}}', hand, TEXT).reward == 5.0
    both = json.dumps({"thought": "a\nb", "cards": ["3", "3", "8", "8"], "formula": "8/(3-8/3)"}, indent=2)
    assert verify(both, hand, IMAGE).recognition_correct is True
    action = '{"action": "turn_direction(southwest)\\n"}'
    assert virl_verifier.verify(action, VIRL_POINT, VirlConfig()).reward == VirlConfig().rewards.correct
