"""The GeneralPoints verifier: one answer text in, one Verdict out, never an exception.

Outcomes and rewards follow the paper's appendix A.3 (values in `GPRewards`):

    correct            legal equation, each card's number once, equals the target
    wrong_value        legal, each card's number once, another value (or '= X' with X
                       not the target)
    numbers_mismatch   legal, but its numbers are not exactly the cards' numbers
    illegal_formula    the formula does not parse, or divides by zero
    unparseable        no answer object with a "formula" field could be read

A numbers mismatch whose numbers are the hand's under the other face-card rule sets
`other_rule_used` (as a V-IRL action of the other action space does): the answer
followed the rule that is not in force, on a rule-OOD set the trained one. Whatever the
formula, `numbers_rule` says whose values the "number" field lists ("scored", "other" or
None): the rule a weak model applies shows there before its arithmetic works.

GP-VL adds `recognition_wrong` to the reward when the "cards" field does not name the
cards in the image; an unreadable answer gets only the illegal reward, but counts as a
failed recognition in the recognition-accuracy metric. It is a pure function, so it can
serve as a reward function for any trainer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Any

from ..answers import AnswerError, as_text_list, parse_answer
from .cards import RANKS, Card, hand_values, other_face_rule
from .config import GPConfig
from .formula import FormulaError, parse_formula
from .prompts import ANSWER_FIELDS

OUTCOMES = ("correct", "wrong_value", "numbers_mismatch", "illegal_formula", "unparseable")

_RANK_ALIASES = {"ACE": "A", "JACK": "J", "QUEEN": "Q", "KING": "K", "T": "10", "1": "A"}
_SUIT_WORDS = re.compile(r"\s*(OF\s+)?(SPADES?|CLUBS?|HEARTS?|DIAMONDS?)\s*$")
_SUIT_SYMBOLS = re.compile(r"[♠♣♥♦♤♧♡♢\ufe0f]")


@dataclass(frozen=True)
class Verdict:
    reward: float
    outcome: str
    feedback: str  # what went wrong, worded for the model to read
    formula: str | None = None
    value: str | None = None  # the formula's exact value, e.g. "22" or "71/3"
    claimed: int | None = None  # the result the formula states after "=", e.g. 24 in "(2+4)*4=24"
    recognised_cards: list[str] | None = None
    recognition_correct: bool | None = None  # None when recognition is not checked
    other_rule_used: bool = False  # its numbers are the hand's under the other face rule
    numbers_rule: str | None = None  # whose values its "number" field lists: "scored" (face_rule), "other", or None

    @property
    def success(self) -> bool:
        return self.outcome == "correct"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(answer_text: str, hand: Sequence[Card], config: GPConfig) -> Verdict:
    """Score one answer to the hand under the config's rule and target."""
    rewards = config.rewards
    try:
        answer = parse_answer(answer_text, fields=ANSWER_FIELDS, required=("formula",))
    except AnswerError as error:
        # GP-VL: an unreadable answer recognised nothing (it counts against recognition
        # accuracy), but its reward is the illegal-answer reward alone.
        return Verdict(
            rewards.illegal,
            "unparseable",
            f"I could not read your answer ({error}). Reply with one JSON object with the "
            'fields "' + '", "'.join(ANSWER_FIELDS[:-1]) + f'" and "{ANSWER_FIELDS[-1]}".',
            recognition_correct=False if config.checks_recognition else None,
        )
    recognised, recognition_ok = _check_recognition(answer, hand, config)
    verdict = replace(
        _score_formula(answer.get("formula"), hand, config),
        recognised_cards=recognised,
        recognition_correct=recognition_ok,
        numbers_rule=_numbers_rule(answer.get("number"), hand, config.face_rule),
    )
    if recognition_ok is False:
        verdict = replace(
            verdict,
            reward=verdict.reward + rewards.recognition_wrong,
            feedback=verdict.feedback + " Also, the cards you listed are not the cards in the image.",
        )
    return verdict


def claimed(verdict: Mapping[str, Any]) -> int | None:
    """The result a stored verdict's formula states after "=" (None without one):
    `Verdict.claimed`, or, for episodes recorded before verdicts carried it, read from
    the verdict's formula by the same parser."""
    if "claimed" in verdict:
        return verdict["claimed"]
    try:
        return parse_formula(verdict.get("formula")).claimed_result
    except FormulaError:
        return None


def _numbers_rule(numbers: Any, hand: Sequence[Card], face_rule: str) -> str | None:
    """Which face-card rule the "number" field applies: "scored" when it lists the hand's
    values under face_rule, "other" under the other rule (in any order, numbers or
    numeric strings); None for neither, for no list, and for hands without a face card
    (both rules value them alike). It does not change the reward: it shows which rule a
    model applies even when its formula is wrong."""
    if not isinstance(numbers, list) or len(numbers) != len(hand):
        return None
    read = [_card_number(n) for n in numbers]
    if None in read:
        return None
    listed = sorted(read)
    scored, others = sorted(hand_values(hand, face_rule)), sorted(hand_values(hand, other_face_rule(face_rule)))
    if scored == others:
        return None
    return "scored" if listed == scored else "other" if listed == others else None


def _card_number(value: Any) -> int | None:
    """A listed card number: an int, a whole float, or up to two ASCII digits as text; else None
    (a card's number is 1 to 13, and nothing longer is parsed: bounded time on any input)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,2}", value.strip(), flags=re.ASCII):
        return int(value.strip())
    return None


def _score_formula(raw_formula: Any, hand: Sequence[Card], config: GPConfig) -> Verdict:
    rewards, target = config.rewards, config.target
    text = raw_formula if isinstance(raw_formula, str) else str(raw_formula)
    try:
        formula = parse_formula(text)
    except FormulaError as error:
        return Verdict(rewards.illegal, "illegal_formula", f"Your formula is not legal: {error}.", text)
    used = sorted(formula.numbers)
    expected = sorted(hand_values(hand, config.face_rule))
    if used != expected:
        other_rule_used = used == sorted(hand_values(hand, other_face_rule(config.face_rule))) and used != expected
        return Verdict(
            rewards.numbers_mismatch,
            "numbers_mismatch",
            f"Your formula uses the numbers {used}, but the cards' numbers are {expected}. "
            "Use each card's number exactly once.",
            text,
            claimed=formula.claimed_result,
            other_rule_used=other_rule_used,
        )
    try:
        value = formula.value()
    except FormulaError as error:
        return Verdict(
            rewards.illegal,
            "illegal_formula",
            f"Your formula is not legal: {error}.",
            text,
            claimed=formula.claimed_result,
        )
    shown = _show(value)
    if formula.claimed_result is not None and formula.claimed_result != target:
        return Verdict(
            rewards.wrong_value,
            "wrong_value",
            f"Your equation claims {formula.claimed_result}, but the target is {target}.",
            text,
            shown,
            formula.claimed_result,
        )
    if value != target:
        return Verdict(
            rewards.wrong_value,
            "wrong_value",
            f"Your formula equals {shown}, not {target}.",
            text,
            shown,
            formula.claimed_result,
        )
    return Verdict(
        rewards.correct, "correct", f"Correct: your formula equals {target}.", text, shown, formula.claimed_result
    )


def _check_recognition(
    answer: dict[str, Any], hand: Sequence[Card], config: GPConfig
) -> tuple[list[str] | None, bool | None]:
    if "cards" not in answer and not config.checks_recognition:
        return None, None
    recognised = [normalise_rank(item) for item in as_text_list(answer.get("cards"))]
    if not config.checks_recognition:
        return recognised, None
    return recognised, Counter(recognised) == Counter(card.rank for card in hand)


def normalise_rank(item: str) -> str:
    """'10 of spades', 'Q♥', 'KH', 'king', 'T' -> '10', 'Q', 'K', 'K', '10'."""
    text = _SUIT_SYMBOLS.sub("", str(item)).strip().upper()
    text = _SUIT_WORDS.sub("", text).strip()
    if len(text) >= 2 and text[-1] in "SCHD" and text[:-1] in RANKS:
        text = text[:-1]
    return _RANK_ALIASES.get(text, text)


def _show(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
