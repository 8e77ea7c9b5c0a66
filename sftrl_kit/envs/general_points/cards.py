"""Cards, the face-card rule, suit colours and seeded deals of solvable hands.

A card is written as rank + suit letter: "AS", "10H", "QD", "7C". The rank alone
("A", "10", "Q") is what a player reads off the card and what the answer's "cards"
field holds; its numeric value depends on the face-card rule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from .solver import is_solvable

RANKS: tuple[str, ...] = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
FACE_RANKS: frozenset[str] = frozenset({"J", "Q", "K"})
SUITS: tuple[str, ...] = ("S", "C", "H", "D")  # spades, clubs (black); hearts, diamonds (red)
SUIT_NAMES = {"S": "spades", "C": "clubs", "H": "hearts", "D": "diamonds"}
RED_SUITS: frozenset[str] = frozenset({"H", "D"})

FaceRule = str
"""'ten': J, Q and K each count 10 (the trained rule). 'ordinal': J=11, Q=12, K=13. Any
other mapping is written as J's, Q's and K's values joined by dashes: "5-5-5", "2-4-6"
(each 1 to 13; "10-10-10" and "11-12-13" are 'ten' and 'ordinal' under their names)."""

Colours = Literal["all", "black", "red"]
Sampling = Literal["uniform", "with_face"]
"""'uniform': 4 cards without replacement. 'with_face': the same, keeping only hands
with at least one J, Q or K (so that the ordinal rule's 11-13 must be used)."""

FACE_RULES: tuple[str, ...] = ("ten", "ordinal")  # the named rules; face_values reads the others
_NAMED_VALUES = {"ten": (10, 10, 10), "ordinal": (11, 12, 13)}


def face_values(face_rule: str) -> tuple[int, int, int]:
    """J's, Q's and K's values under a face-card rule: a named one (FACE_RULES) or a
    mapping "j-q-k" of three values from 1 to 13; anything else raises a ValueError."""
    if face_rule in _NAMED_VALUES:
        return _NAMED_VALUES[face_rule]
    parts = face_rule.split("-") if isinstance(face_rule, str) else []
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() and 1 <= int(p) <= 13 for p in parts):
        raise ValueError(
            f"face_rule must be one of {FACE_RULES} or J's, Q's and K's values as 'j-q-k' "
            f"(each 1 to 13, e.g. '5-5-5'), got {face_rule!r}"
        )
    j, q, k = (int(p) for p in parts)
    return j, q, k


def other_face_rule(face_rule: str) -> FaceRule:
    """The rule whose values the memorisation signatures look for under `face_rule`: the
    ordinal rule under the trained 'ten', and the trained 'ten' under any other rule."""
    face_values(face_rule)  # a clear error for a rule that is none
    return "ordinal" if face_rule == "ten" else "ten"


COLOURS: tuple[str, ...] = ("all", "black", "red")
SAMPLINGS: tuple[str, ...] = ("uniform", "with_face")


@dataclass(frozen=True, order=True)
class Card:
    rank: str
    suit: str

    def __post_init__(self) -> None:
        if self.rank not in RANKS:
            raise ValueError(f"unknown card rank {self.rank!r}; expected one of {RANKS}")
        if self.suit not in SUITS:
            raise ValueError(f"unknown card suit {self.suit!r}; expected one of {SUITS}")

    @property
    def code(self) -> str:
        return self.rank + self.suit

    @property
    def is_red(self) -> bool:
        return self.suit in RED_SUITS

    @classmethod
    def from_code(cls, code: str) -> Card:
        if not isinstance(code, str) or len(code) < 2:
            raise ValueError(f"card code must look like 'QH' or '10S', got {code!r}")
        return cls(rank=code[:-1].upper(), suit=code[-1].upper())

    def value(self, face_rule: FaceRule) -> int:
        return card_value(self.rank, face_rule)


def card_value(rank: str, face_rule: FaceRule) -> int:
    """Numeric value of a rank under the face-card rule (A counts 1)."""
    if rank in FACE_RANKS:
        return face_values(face_rule)[("J", "Q", "K").index(rank)]
    face_values(face_rule)  # a clear error for a rule that is none
    return RANKS.index(rank) + 1


def hand_values(hand: list[Card], face_rule: FaceRule) -> list[int]:
    return [card.value(face_rule) for card in hand]


def deck(colours: Colours = "all") -> list[Card]:
    """The 52-card deck, or its 26 black or 26 red cards, in a fixed order."""
    check_choice("colours", colours, COLOURS)
    suits = [s for s in SUITS if colours == "all" or (s in RED_SUITS) == (colours == "red")]
    return [Card(rank, suit) for suit in suits for rank in RANKS]


def deal(
    rng: random.Random,
    *,
    target: int = 24,
    face_rule: FaceRule = "ten",
    colours: Colours = "all",
    sampling: Sampling = "uniform",
    num_cards: int = 4,
) -> list[Card]:
    """Draw cards without replacement until the hand is solvable under the rule.

    Rejection sampling keeps the distribution of the paper: uniform over solvable hands
    of the chosen deck (and over those with a face card in 'with_face' mode).
    """
    check_choice("sampling", sampling, SAMPLINGS)
    if target <= 0:
        raise ValueError(f"target must be a positive integer, got {target}")
    cards = deck(colours)
    for _ in range(10_000):
        hand = rng.sample(cards, num_cards)
        if sampling == "with_face" and not any(c.rank in FACE_RANKS for c in hand):
            continue
        if is_solvable(hand_values(hand, face_rule), target):
            return hand
    raise ValueError(
        f"no solvable hand of {num_cards} cards found for target {target} "
        f"(face_rule={face_rule}, colours={colours}, sampling={sampling})"
    )


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
