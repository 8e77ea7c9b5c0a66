"""What every environment shares: observations, the Env protocol and the registry.

Environments are text-native and follow gymnasium's signatures: `reset(seed=, options=)
-> (observation, info)` and `step(answer_text) -> (observation, reward, terminated,
truncated, info)`. The first observation is the task prompt (with images for the VL
variants); a later one is the verifier's message asking for a revision, or, where a
correct answer moves the task on (V-IRL), the next prompt. `Env` documents every return.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

PROMPT_VARIANTS = 4
"""Wordings and layouts of each task's prompt (its prompts.build_prompt); 0 is the
canonical one, which evaluation always uses. SFT data can vary them (the prompt-varied
SFT control); in every variant the rule is stated where the canonical prompt states it
(GP: the task sentence and the output schema's number field; V-IRL: the action space in
the task and in the output format), so a rule-OOD prompt differs from an ID one there
alone."""


def check_prompt_variant(variant: int) -> None:
    if not isinstance(variant, int) or isinstance(variant, bool) or not 0 <= variant < PROMPT_VARIANTS:
        raise ValueError(f"prompt_variant must be an integer in [0, {PROMPT_VARIANTS}), got {variant!r}")


@dataclass
class Observation:
    """What the model reads: a user turn's text, and the images that come with it."""

    text: str
    images: list[Image.Image] = field(default_factory=list)


class Env(Protocol):
    """A task the model plays by writing answers as text, scored by the task's verifier.

    Attributes:
        env_id: the id the environment was made with ("gp-l", "virl-vl", ...).
        answer_field: the answer's decisive JSON field ("formula", "action"); PPO can
            weight the tokens before it (`thought_coef`).
        single_conversation: True when every observation after the first continues one
            conversation; False when a step can start a new one (`info["new_prompt"]`).
        buffer_lambda: the paper's D_buffer / D_RL for this task, the inference tokens
            PPO's FLOPs count per trained token (compute.rl_flops): GeneralPoints 6,
            V-IRL 5.1. A new task states its own (6 is a fair first guess).
        config: (optional) the environment's settings dataclass; rollouts record it in
            each Episode.

    The info dict of `reset` and `step` holds, in every environment:
        task (dict): the task of this episode, as JSON; `reset(options={"task": task})`
            replays it exactly (the eval sets store it).
        success (bool): True on the step that solves the task, which is the step that
            terminates the episode; False on `reset` and on every other step.
    after a `step`, also:
        verdict (dict): the verifier's judgement of this answer. Every task's verdict
            holds `outcome` (str: "correct" or the task's failure outcome), `reward`
            (float: the verifier's reward, before any budget penalty), `feedback` (str:
            the verifier's message, worded for the model), `recognition_correct` (bool | None:
            the VL variants' check of what the image shows; None where nothing is
            checked) and `other_rule_used` (bool: the answer followed the rule that is
            not in force: a GP formula valued under the other face-card rule, a V-IRL
            action of the other action space; on a rule-OOD set, the trained rule).
            Rollouts keep it in each Turn; evaluation counts its `outcome`,
            `recognition_correct` and `other_rule_used`.
    and, in environments with `single_conversation` False:
        new_prompt (bool): the observation starts a new conversation (it is a fresh
            prompt, not a reply to the last answer); absent means False.
    Each environment adds task-specific keys, listed in its class docstring.
    """

    env_id: str
    answer_field: str
    single_conversation: bool
    buffer_lambda: float

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Start an episode.

        Args:
            seed: re-seeds the environment's generator; without one the generator goes
                on from the last episode, so `reset(seed=s)` followed by plain `reset()`
                calls gives the same tasks every time (gymnasium's rule).
            options: {"task": info["task"]} replays that task instead of drawing one.

        Returns:
            observation (Observation): the task prompt, with its images in the VL variants.
            info (dict): `task` and `success` (False), and the keys the class adds.
        """
        ...

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """Score one answer (`action` is the model's whole reply text) and move on.

        Returns:
            observation (Observation): after a failed answer, `revision_text` of the
                verifier's feedback (text only); after the answer that ends the episode
                by success, the feedback; after a correct answer that moves to the next
                decision (`info["new_prompt"]`), that decision's prompt with its images.
            reward (float): the verifier's reward for this answer, plus the budget
                penalty when this answer spends the verification budget.
            terminated (bool): the task is solved; the episode is over.
            truncated (bool): the verification budget is spent without solving the
                task; the episode is over. Never both.
            info (dict): `task`, `success` and `verdict` (as above), and
                `new_prompt` where the environment starts new conversations.

        Raises:
            RuntimeError: when called before `reset` or after the episode ended.
        """
        ...


def revision_text(feedback: str) -> str:
    """The user turn that follows a failed attempt in sequential revision."""
    return f"You failed because: {feedback} Revise your answer and reply with the JSON object only."


def recognised(verdict: Mapping[str, Any]) -> list[str] | None:
    """What a vision answer said it saw, as its verdict (the dict episodes keep) records
    it: GP's card ranks (`recognised_cards`) or V-IRL's places in view
    (`recognised_places`); None where it named nothing. An empty card list names nothing
    (GP reads a missing "cards" field as []); an empty place list is V-IRL's claim that
    no named place is in view, so it stays []."""
    return verdict.get("recognised_cards") or verdict.get("recognised_places")


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
