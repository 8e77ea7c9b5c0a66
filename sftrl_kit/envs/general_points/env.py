"""GeneralPoints as a sequential-revision environment (GP-L text, GP-VL image).

One episode is one hand. The model answers; the verifier scores it. A correct answer
terminates the episode; otherwise the verifier's message is the next observation and
the model may revise, until `max_attempts` answers have been scored (truncation).

The paper's code charges the budget penalty on an extra, unverified step after the
budget runs out; here it is added to the reward of the last failed attempt, so each
transition is exactly one model response (same return, one step shorter).
"""

from __future__ import annotations

import random
from typing import Any

from ..base import Observation, revision_text
from .cards import Card, deal, hand_values
from .config import GPConfig
from .prompts import build_prompt
from .render import render_hand
from .verifier import Verdict, verify


class GeneralPointsEnv:
    answer_field = "formula"
    single_conversation = True

    def __init__(self, config: GPConfig | None = None, env_id: str = "gp-l") -> None:
        self.config = config or GPConfig()
        self.env_id = env_id
        self._rng: random.Random | None = None
        self.hand: list[Card] = []
        self.task: dict[str, Any] = {}
        self.attempts = 0
        self.verdicts: list[Verdict] = []
        self._done = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Deal a new hand, or replay `options["task"]` (a dict from an earlier info)."""
        if seed is not None or self._rng is None:
            self._rng = random.Random(seed)
        task = (options or {}).get("task")
        if task is not None:
            self.hand, image_seed = _task_hand(task), int(task.get("image_seed", 0))
        else:
            self.hand = deal(
                self._rng,
                target=self.config.target,
                face_rule=self.config.face_rule,
                colours=self.config.colours,
                sampling=self.config.sampling,
            )
            image_seed = self._rng.getrandbits(32)
        self.task = {"hand": [card.code for card in self.hand], "image_seed": image_seed}
        self.attempts, self.verdicts, self._done = 0, [], False
        images = []
        if self.config.modality == "image":
            images = [render_hand(self.hand, image_seed, self.config.image_size)]
        observation = Observation(text=build_prompt(self.hand, self.config), images=images)
        return observation, self._info()

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        verdict = verify(action, self.hand, self.config)
        self.attempts += 1
        self.verdicts.append(verdict)
        terminated = verdict.success
        truncated = not terminated and self.attempts >= self.config.max_attempts
        reward = verdict.reward + (self.config.rewards.budget_exceeded if truncated else 0.0)
        self._done = terminated or truncated
        text = verdict.feedback if terminated else revision_text(verdict.feedback)
        return Observation(text=text), reward, terminated, truncated, self._info(verdict)

    def _info(self, verdict: Verdict | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "task": dict(self.task),
            "values": hand_values(self.hand, self.config.face_rule),
            "face_rule": self.config.face_rule,
            "target": self.config.target,
            "attempt": self.attempts,
            "attempts_left": self.config.max_attempts - self.attempts,
            "success": bool(verdict and verdict.success),
        }
        if verdict is not None:
            info["verdict"] = verdict.to_dict()
        return info


def _task_hand(task: dict[str, Any]) -> list[Card]:
    codes = task.get("hand")
    if not isinstance(codes, list) or not codes:
        raise ValueError(f"task must hold a non-empty 'hand' list of card codes, got {task!r}")
    return [Card.from_code(code) for code in codes]
