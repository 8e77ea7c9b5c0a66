"""V-IRL navigation as a sequential-revision environment (V-IRL-L text, V-IRL-VL images)."""

from __future__ import annotations

import copy
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
    """One route, walked one decision at a time: V-IRL-L (text) and V-IRL-VL (images).

    A route is a list of decisions (`Route.decisions`): at the start, a turn to face the
    first street; forward() along each street; at each intersection a turn to the next
    street, taken in place; stop() at the destination.

    Action: the model's reply text, read as a JSON object (tolerantly: `answers.py`) with
    the fields "action" (required: one action of the active space, normalised for case
    and spacing), "current observation" (V-IRL-VL: must name exactly the places in view,
    where the route knows what is in view) and "current instruction" (not checked). The
    action spaces (each is V-IRL's rule):
        absolute  turn_direction(x), x one of the eight compass directions; forward(); stop()
        relative  turn_direction(x), x one of left, right, slightly left, slightly right;
                  forward(); stop()

    Observation: each decision's prompt holds the task with the action space, the route
    instruction, the last `history` (observation, action) pairs of the walk, the current
    view (V-IRL-L: the places in view as text; V-IRL-VL: one image, a 2x2 grid of street
    views: front, right, back, left, each `panel_size` pixels square, rendered from the
    generated city or read from `views_dir`) and the answer format. After a wrong answer
    the observation is the verifier's feedback asking for a revision (text only), in the
    same conversation; after a correct one, the next decision's prompt, which starts a new
    conversation (`info["new_prompt"]`); after the correct stop(), the feedback.

    Reward (`VirlRewards`, the paper's appendix B.3), per answer:
        correct          +1    the expert's action at this decision
        wrong_action     -1    any other action (wrong_action), an action outside the
                               space (invalid_action), or no readable answer (unparseable)
        landmark_missed  -1.5  V-IRL-VL, added where the view is known: the observation
                               does not name exactly the places in view (not added to an
                               unreadable answer)
        budget_exceeded  -1    added to the answer that spends a decision's budget
    A correct action with missed landmarks is still executed (+1 - 1.5).

    Episode end: a correct action is executed and moves to the next decision; a wrong
    one is not. Terminated when the final stop() is correct (the route is walked);
    truncated when `max_attempts` answers at one decision have failed. The budget is per
    decision (it restarts after each correct action), so an episode has at most
    decisions x max_attempts steps.

    Info, besides the keys every `Env` writes: `route_id`, `point` (the index of the
    current decision: actions executed so far), `points` (the route's decisions),
    `attempts_at_point` (answers scored at the current decision) and `new_prompt`.
    `task` is {"route": Route.to_json()}; real V-IRL routes (`routes.load_routes`) are
    played by replaying such a task. The verdict adds `action` (normalised) and
    `recognised_places`.

    Arguments:
        config: `VirlConfig`: action_space ("absolute", the trained rule, or
            "relative"), modality ("text" or "image"; set by the env id through
            `make`), city (one of `city.CITIES`; the training city by default) and
            city_seed (0) of the generated city, min_turns and max_turns (1, 3: a
            route's turns are drawn uniformly between them), max_blocks (3, the most
            blocks per street), max_straight (5, the cap on forward() steps per street),
            max_attempts (2, the verification budget per decision), panel_size (112),
            views_dir (None: render the views; else real grids read from
            <views_dir>/<route_id>/<point>.png, the point's index along the route in
            three digits), history (8) and rewards (`VirlRewards`).
        env_id: the id it was made with ("virl-l" or "virl-vl").
    """

    answer_field = "action"
    single_conversation = False  # each point's prompt starts a new conversation
    buffer_lambda = 5.1  # the paper's D_buffer / D_RL (compute.rl_flops)

    def __init__(self, config: VirlConfig | None = None, env_id: str = "virl-l") -> None:
        self.config = config or VirlConfig()
        self.env_id = env_id
        self._rng: random.Random | None = None
        self.route: Route | None = None
        self.decisions: list[Decision] = []
        self.position = 0
        self.attempts = 0
        self.history: list[tuple[str, str]] = []
        self.task: dict[str, Any] = {}
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw a route in the generated city, or replay `options["task"]` (from an earlier info)."""
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
            self.route = generate_route(
                city,
                random.Random(route_seed),
                turns,
                self.config.max_blocks,
                self.config.max_straight,
                route_id=f"{self.config.city}-{route_seed}",
            )
            self.route.meta["city_seed"] = self.config.city_seed
        self.decisions = self.route.decisions(self.config.action_space)
        self.task = {"route": self.route.to_json()}
        self.position, self.attempts, self.history, self._done = 0, 0, [], False
        return self._observation(), self._info()

    def step(self, action: str):
        """Score one answer at the current decision (returns as `Env.step` documents)."""
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        decision = self.decisions[self.position]
        verdict = verify(action, decision, self.config)
        self.attempts += 1
        if verdict.success:
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
            raise ValueError(
                f"route {self.route.route_id} has no generated geometry; give views_dir with its street views"
            )
        city = generate_city(self.route.city, int(self.route.meta.get("city_seed", self.config.city_seed)))
        return render_views(
            city, tuple(nodes[decision.point]), decision.heading, seed=decision.point, panel=self.config.panel_size
        )

    def _info(self, verdict: Verdict | None = None, new_prompt: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {
            "task": copy.deepcopy(self.task),  # each info its own: a caller may keep or change it
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
