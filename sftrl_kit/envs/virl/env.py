"""V-IRL navigation as a sequential-revision environment (V-IRL-L text, V-IRL-VL images).

An episode is one route. At each decision point the model answers with an action; the
verifier scores it. A correct action is executed and the next point's prompt (with the
history of observations and actions) starts a new conversation: `info["new_prompt"]`
tells rollouts so. A wrong action is not executed: the model sees the verifier's
message and may revise, up to `max_attempts` answers per point; then the
episode is truncated (the budget penalty is added to that last answer). Reaching the
end of the route terminates the episode with success.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from PIL import Image

from ..base import Observation, revision_text
from .city import generate_city, generate_route
from .config import VirlConfig
from .prompts import build_prompt, describe_landmarks
from .routes import Decision, Route
from .streetview import render_views
from .verifier import Verdict, verify


class VirlEnv:
    answer_field = "action"
    single_conversation = False  # each point's prompt starts a new conversation

    def __init__(self, config: VirlConfig | None = None, env_id: str = "virl-l") -> None:
        self.config = config or VirlConfig()
        self.env_id = env_id
        self._rng: random.Random | None = None
        self.route: Route | None = None
        self.decisions: list[Decision] = []
        self.position = 0
        self.attempts = 0
        self.correct_first_try = 0
        self.history: list[tuple[str, str]] = []
        self.task: dict[str, Any] = {}
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None or self._rng is None:
            self._rng = random.Random(seed)
        task = (options or {}).get("task")
        if task is not None:
            if not isinstance(task, dict) or "route" not in task:
                raise ValueError(f"a V-IRL task holds a 'route' (Route.to_json()), got {str(task)[:80]!r}")
            self.route = Route.from_json(task["route"])
        else:
            city = generate_city(self.config.city, self.config.city_seed)
            turns = self._rng.randint(self.config.min_turns, self.config.max_turns)
            route_seed = self._rng.getrandbits(32)
            self.route = generate_route(city, random.Random(route_seed), turns, self.config.max_blocks,
                                        self.config.max_straight, route_id=f"{self.config.city}-{route_seed}")
            self.route.meta["city_seed"] = self.config.city_seed
        self.decisions = self.route.decisions(self.config.action_space)
        self.task = {"route": self.route.to_json()}
        self.position, self.attempts, self.correct_first_try, self.history, self._done = 0, 0, 0, [], False
        return self._observation(), self._info()

    def step(self, action: str):
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        decision = self.decisions[self.position]
        verdict = verify(action, decision, self.config)
        self.attempts += 1
        if verdict.success:
            self.correct_first_try += int(self.attempts == 1)
            self.history.append((describe_landmarks(decision.landmarks), decision.action))
            self.position += 1
            self.attempts = 0
            terminated = self.position == len(self.decisions)
            self._done = terminated
            observation = Observation(verdict.feedback) if terminated else self._observation()
            return observation, verdict.reward, terminated, False, self._info(verdict, new_prompt=not terminated)
        truncated = self.attempts >= self.config.max_attempts
        reward = verdict.reward + (self.config.rewards.budget_exceeded if truncated else 0.0)
        self._done = truncated
        return Observation(revision_text(verdict.feedback)), reward, False, truncated, self._info(verdict)

    def _observation(self) -> Observation:
        decision = self.decisions[self.position]
        text = build_prompt(self.route.instruction, describe_landmarks(decision.landmarks), self.history, self.config)
        images = [self._views(decision)] if self.config.modality == "image" else []
        return Observation(text, images)

    def _views(self, decision: Decision) -> Image.Image:
        if self.config.views_dir:
            path = Path(self.config.views_dir) / self.route.route_id / f"{decision.point:03d}.png"
            if not path.is_file():
                raise FileNotFoundError(f"no street-view grid at {path}")
            return Image.open(path).convert("RGB")
        nodes = self.route.meta.get("nodes")
        if not nodes:
            raise ValueError(f"route {self.route.route_id} has no generated geometry; give views_dir with its street views")
        city = generate_city(self.route.city, int(self.route.meta.get("city_seed", self.config.city_seed)))
        return render_views(city, tuple(nodes[decision.point]), decision.heading, seed=decision.point,
                            panel=self.config.panel_size)

    def _info(self, verdict: Verdict | None = None, new_prompt: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {
            "task": self.task,
            "route_id": self.route.route_id,
            "point": self.position,
            "points": len(self.decisions),
            "attempts_at_point": self.attempts,
            "success": self.position == len(self.decisions),
            "new_prompt": new_prompt,
        }
        if verdict is not None:
            info["verdict"] = verdict.to_dict()
        return info
