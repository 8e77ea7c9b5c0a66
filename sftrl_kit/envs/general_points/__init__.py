"""GeneralPoints: make an equation equal to the target from four cards (GP-L / GP-VL)."""

from .cards import Card, card_value, deal, deck, hand_values
from .config import GPConfig, GPRewards
from .env import GeneralPointsEnv
from .prompts import build_prompt, format_answer, rule_text
from .solver import is_solvable, solve
from .verifier import OUTCOMES, Verdict, verify

__all__ = [
    "Card",
    "card_value",
    "deal",
    "deck",
    "hand_values",
    "GPConfig",
    "GPRewards",
    "GeneralPointsEnv",
    "build_prompt",
    "format_answer",
    "rule_text",
    "is_solvable",
    "solve",
    "OUTCOMES",
    "Verdict",
    "verify",
]
