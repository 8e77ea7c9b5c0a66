"""The GeneralPoints prompt and answer format: the one place either is worded.

The prompt has the paper's three sections: task (with the face-card rule in words),
input (the cards as text for GP-L; for GP-VL a pointer to the image), and output (the
JSON schema, the rule repeated). The rule sentence is the only place the rule appears.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .cards import Card
from .config import GPConfig

ANSWER_FIELDS = ("cards", "number", "formula")


def rule_text(face_rule: str) -> str:
    if face_rule == "ten":
        return "J, Q and K each count as 10"
    return "J counts as 11, Q as 12 and K as 13"


def build_prompt(hand: Sequence[Card], config: GPConfig) -> str:
    rule = rule_text(config.face_rule)
    if config.modality == "image":
        cards_line = "The image shows the cards you hold."
    else:
        cards_line = "Cards: " + ", ".join(card.rank for card in hand)
    return "\n".join(
        [
            "[Task]",
            f"You are an expert player of the card game Points. You hold {len(hand)} cards. "
            f"An ace counts as 1, number cards count their number, and {rule}. "
            f"Write one equation that equals {config.target} and uses the number of every "
            "card exactly once. Allowed: + - * / and parentheses.",
            "",
            "[Input]",
            cards_line,
            "",
            "[Output]",
            "Reply with one JSON object and nothing else:",
            '{"cards": [the card symbols you hold, e.g. "A", "7", "Q"], '
            f'"number": [the number of each card, where {rule}], '
            f'"formula": "an equation using those numbers, e.g. (a+b)*c/d={config.target}"}}',
        ]
    )


def format_answer(cards: Sequence[str], numbers: Sequence[int], formula: str) -> str:
    """A well-formed answer, as the expert writes it in the SFT data."""
    return json.dumps({"cards": list(cards), "number": list(numbers), "formula": formula})
