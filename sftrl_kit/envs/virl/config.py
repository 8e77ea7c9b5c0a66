"""V-IRL settings; defaults are the paper's (appendix B.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..base import check_prompt_variant
from ..general_points.cards import check_choice
from .city import CITIES, TRAIN_CITY
from .routes import ACTION_SPACES, ActionSpace


@dataclass
class VirlRewards:
    correct: float = 1.0  # the right action at the current point
    wrong_action: float = -1.0  # a wrong (or unreadable, or out-of-space) action
    budget_exceeded: float = -1.0  # added when the last allowed attempt at a point fails
    landmark_missed: float = -1.5  # V-IRL-VL: the observation does not name exactly the places in view (added)


@dataclass
class VirlConfig:
    action_space: ActionSpace = "absolute"
    modality: Literal["text", "image"] = "text"
    city: str = TRAIN_CITY.name
    city_seed: int = 0
    min_turns: int = 1
    max_turns: int = 3
    max_blocks: int = 3  # blocks per street in generated routes
    max_straight: int = 5  # cap on forward() steps between turning points
    max_attempts: int = 2  # the verification budget, per point (answers allowed at each point)
    panel_size: int = 112  # each of the four street views, in pixels
    views_dir: str | None = None  # real street-view grids: <views_dir>/<route_id>/<point>.png
    history: int = 8  # earlier (observation, action) pairs shown in the prompt
    rewards: VirlRewards = field(default_factory=VirlRewards)
    prompt_action_space: ActionSpace | None = (
        None  # the space the prompt states; None: action_space (the fake-rule control sets it apart)
    )
    prompt_variant: int = 0  # the prompt's wording and layout (envs.base.PROMPT_VARIANTS; 0: canonical)

    def __post_init__(self) -> None:
        check_choice("action_space", self.action_space, ACTION_SPACES)
        if self.prompt_action_space is not None:
            check_choice("prompt_action_space", self.prompt_action_space, ACTION_SPACES)
        check_prompt_variant(self.prompt_variant)
        check_choice("modality", self.modality, ("text", "image"))
        check_choice("city", self.city, tuple(CITIES))
        if not 1 <= self.min_turns <= self.max_turns:
            raise ValueError(f"need 1 <= min_turns <= max_turns, got {self.min_turns}, {self.max_turns}")
        if self.max_attempts < 1 or self.max_straight < 1 or self.max_blocks < 1:
            raise ValueError("max_attempts, max_straight and max_blocks must be >= 1")
        if isinstance(self.rewards, dict):
            self.rewards = VirlRewards(**self.rewards)

    @property
    def stated_action_space(self) -> ActionSpace:
        """The action space the prompt states (the verifier always scores action_space)."""
        return self.prompt_action_space or self.action_space

    @property
    def checks_landmarks(self) -> bool:
        return self.modality == "image"
