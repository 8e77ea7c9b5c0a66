"""GeneralPoints settings; defaults are the paper's (appendix A.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..base import check_prompt_variant
from .cards import COLOURS, SAMPLINGS, Colours, FaceRule, Sampling, check_choice, face_values

Modality = Literal["text", "image"]
IMAGE_SIZES = {"small": 224, "large": 560}


@dataclass
class GPRewards:
    """The paper's reward table for one verification step."""

    correct: float = 5.0  # legal equation equal to the target
    wrong_value: float = -1.0  # legal, each card once, but another value
    budget_exceeded: float = -1.0  # added when the last allowed attempt fails
    numbers_mismatch: float = -2.0  # legal, but its numbers are not the cards' values
    illegal: float = -3.0  # anything else: unreadable answer, illegal formula
    recognition_wrong: float = -1.5  # GP-VL only: recognised cards are wrong (added)


@dataclass
class GPConfig:
    target: int = 24
    num_cards: int = 4  # cards in a hand (the paper: 4; "gp3-l" deals 3, an easier variant)
    face_rule: FaceRule = "ten"  # "ten", "ordinal", or a mapping "j-q-k" such as "5-5-5" (cards.face_values)
    colours: Colours = "all"
    sampling: Sampling = "uniform"
    max_attempts: int = 5  # the verification budget of one episode
    modality: Modality = "text"
    image_size: int = IMAGE_SIZES["small"]
    rewards: GPRewards = field(default_factory=GPRewards)
    prompt_face_rule: FaceRule | None = (
        None  # the rule the prompt states; None: face_rule (the fake-rule control sets it apart)
    )
    prompt_variant: int = 0  # the prompt's wording and layout (envs.base.PROMPT_VARIANTS; 0: canonical)
    compact_prompt: bool = False  # the task in two lines, a third of the tokens ("gp3-l"'s default)

    def __post_init__(self) -> None:
        face_values(self.face_rule)
        if self.prompt_face_rule is not None:
            face_values(self.prompt_face_rule)
        check_prompt_variant(self.prompt_variant)
        check_choice("colours", self.colours, COLOURS)
        check_choice("sampling", self.sampling, SAMPLINGS)
        check_choice("modality", self.modality, ("text", "image"))
        if not isinstance(self.target, int) or isinstance(self.target, bool) or self.target <= 0:
            raise ValueError(f"target must be a positive integer, got {self.target!r}")
        if not isinstance(self.num_cards, int) or isinstance(self.num_cards, bool) or not 2 <= self.num_cards <= 4:
            raise ValueError(f"num_cards must be an integer in [2, 4], got {self.num_cards!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not isinstance(self.image_size, int) or not 64 <= self.image_size <= 2048:
            raise ValueError(f"image_size must be an integer in [64, 2048], got {self.image_size!r}")
        if isinstance(self.rewards, dict):
            self.rewards = GPRewards(**self.rewards)

    @property
    def stated_face_rule(self) -> FaceRule:
        """The face-card rule the prompt states (the verifier always scores face_rule)."""
        return self.prompt_face_rule or self.face_rule

    @property
    def checks_recognition(self) -> bool:
        """GP-VL answers must name the cards they saw; GP-L ones are not checked."""
        return self.modality == "image"
