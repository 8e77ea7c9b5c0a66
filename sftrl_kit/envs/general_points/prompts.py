"""The GeneralPoints prompt and answer format: the one place either is worded.

The prompt has the paper's three sections: task (with the face-card rule in words),
input (the cards as text for GP-L; for GP-VL a pointer to the image), and output (the
JSON schema, the rule repeated in its number field). Those two sentences are the only
places the rule appears: a rule-OOD prompt differs from an ID one there alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .cards import Card, face_values
from .config import GPConfig

ANSWER_FIELDS = ("cards", "number", "formula")


def rule_text(face_rule: str) -> str:
    """The face-card rule in words: "J, Q and K each count as 10" where the three values
    are equal, else "J counts as 11, Q as 12 and K as 13" (cards.face_values)."""
    j, q, k = face_values(face_rule)
    if j == q == k:
        return f"J, Q and K each count as {j}"
    return f"J counts as {j}, Q as {q} and K as {k}"


def build_prompt(hand: Sequence[Card], config: GPConfig) -> str:
    """The prompt in config.prompt_variant's wording and layout (0: the paper's three
    sections), stating config.stated_face_rule; with config.compact_prompt, the compact
    form of every variant (about a third of the tokens)."""
    rule = rule_text(config.stated_face_rule)
    if config.modality == "image":
        cards = "The image shows the cards you hold."
    else:
        cards = "Cards: " + ", ".join(card.rank for card in hand)
    if config.compact_prompt:
        return _compact(len(hand), cards, rule, config.target)
    return _VARIANTS[config.prompt_variant](len(hand), cards, rule, config.target)


_EXAMPLE_FORMULAS = {2: "a*b", 3: "(a+b)*c", 4: "(a+b)*c/d"}


def _example(count: int, target: int) -> str:
    """The example equation of the answer format: one letter per card."""
    return f"{_EXAMPLE_FORMULAS[count]}={target}"


def _canonical(count: int, cards: str, rule: str, target: int) -> str:
    return "\n".join(
        [
            "[Task]",
            f"You are an expert player of the card game Points. You hold {count} cards. "
            f"An ace counts as 1, number cards count their number, and {rule}. "
            f"Write one equation that equals {target} and uses the number of every "
            "card exactly once. Allowed: + - * / and parentheses.",
            "",
            "[Input]",
            cards,
            "",
            "[Output]",
            "Reply with one JSON object and nothing else:",
            '{"cards": [the card symbols you hold, e.g. "A", "7", "Q"], '
            f'"number": [the number of each card, where {rule}], '
            f'"formula": "an equation using those numbers, e.g. {_example(count, target)}"}}',
        ]
    )


def _reworded(count: int, cards: str, rule: str, target: int) -> str:
    return "\n".join(
        [
            "## Goal",
            f"Points is a card game and you play it well. Combine your {count} cards into a single "
            f"equation whose value is {target}, using each card's number once and only once, with the "
            "operations + - * / and brackets.",
            f"Card numbers: aces are 1, number cards are worth their number, {rule}.",
            "",
            "## Your hand",
            cards,
            "",
            "## Answer format",
            "Answer with a single JSON object only, with the fields",
            '"cards" (your cards\' symbols, such as "A", "7", "Q"), '
            f'"number" (each card\'s number; {rule}) and '
            f'"formula" (the equation, such as {_example(count, target)}).',
        ]
    )


def _input_first(count: int, cards: str, rule: str, target: int) -> str:
    return "\n".join(
        [
            "[Input]",
            cards,
            "",
            "[Task]",
            f"These {count} cards come from the card game Points, which you are an expert at. Each card "
            f"has a number: 1 for an ace, the printed number for number cards, and {rule}. Find one "
            f"equation equal to {target} that uses every card's number exactly once (+ - * / and parentheses).",
            "",
            "[Output]",
            "One JSON object, nothing else:",
            '{"cards": [symbols of your cards, e.g. "A", "7", "Q"], '
            f'"number": [each card\'s number, with {rule}], '
            f'"formula": "the equation, e.g. {_example(count, target)}"}}',
        ]
    )


def _plain(count: int, cards: str, rule: str, target: int) -> str:
    return "\n".join(
        [
            f"Let's play Points. {cards}",
            f"Use the numbers of all {count} cards, each exactly once, with + - * / and parentheses, "
            f"to make {target}. An ace is 1 and a number card is its number; {rule}.",
            'Write only a JSON object: "cards" lists your card symbols (like "A", "7", "Q"), '
            f'"number" lists their numbers ({rule}), and "formula" is your equation (like {_example(count, target)}).',
        ]
    )


def _compact(count: int, cards: str, rule: str, target: int) -> str:
    """The task in two lines: what a CPU run trains on when every prompt token costs time."""
    return "\n".join(
        [
            f"{cards}. Make {target} using each card's number once, with + - * / and parentheses. "
            f"An ace is 1, a number card its number, and {rule}.",
            f'Reply with JSON only: {{"cards": [...], "number": [...], "formula": "{_example(count, target)}"}}',
        ]
    )


_VARIANTS = (_canonical, _reworded, _input_first, _plain)  # envs.base.PROMPT_VARIANTS of them


def format_answer(cards: Sequence[str], numbers: Sequence[int], formula: str, thought: str | None = None) -> str:
    """A well-formed answer, as the expert writes it in the SFT data; with `thought`, a
    short reasoning field comes first."""
    answer = {"cards": list(cards), "number": list(numbers), "formula": formula}
    return json.dumps({"thought": thought, **answer} if thought is not None else answer)


def number_thought(cards: Sequence[str], numbers: Sequence[int], face_rule: str) -> str:
    """The expert's reasoning before its answer: the stated rule applied to each card."""
    pairs = ", ".join(f"{card} is {number}" for card, number in zip(cards, numbers))
    return f"Here {rule_text(face_rule)}, so {pairs}."
