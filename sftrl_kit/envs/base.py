"""What every environment shares: observations, the Env protocol and the registry.

Environments are text-native and follow gymnasium's signatures: `reset(seed=, options=)
-> (observation, info)` and `step(answer_text) -> (observation, reward, terminated,
truncated, info)`. The first observation is the task prompt (with images for the VL
variants); each later one is the verifier's message that asks for a revision.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from PIL import Image


@dataclass
class Observation:
    text: str
    images: list[Image.Image] = field(default_factory=list)


class Env(Protocol):
    env_id: str
    answer_field: str  # the answer's decisive field ("formula", "action"): trainers may weight it
    single_conversation: bool  # False when a step can start a new prompt (info["new_prompt"])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]: ...

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]: ...


def revision_text(feedback: str) -> str:
    """The user turn that follows a failed attempt in sequential revision."""
    return f"You failed because: {feedback} Revise your answer and reply with the JSON object only."


_REGISTRY: dict[str, Callable[..., Env]] = {}


def register(env_id: str, factory: Callable[..., Env]) -> None:
    if env_id in _REGISTRY:
        raise ValueError(f"environment {env_id!r} is already registered")
    _REGISTRY[env_id] = factory


def registered() -> list[str]:
    return sorted(_REGISTRY)


def make(env_id: str, **config: Any) -> Env:
    """An environment by id, its config fields given as keyword arguments."""
    if env_id not in _REGISTRY:
        close = difflib.get_close_matches(env_id, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown environment {env_id!r}{hint}; registered: {registered()}")
    return _REGISTRY[env_id](**config)
