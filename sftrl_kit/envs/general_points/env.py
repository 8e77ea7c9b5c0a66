"""GeneralPoints as a sequential-revision environment (GP-L text, GP-VL image)."""

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
    """One hand of four cards: write an equation that equals the target (GP-L, GP-VL).

    Action: the model's reply text, read as a JSON object (tolerantly: `answers.py`) with
    the fields "formula" (required: integers, + - * / and parentheses, optionally
    "= <target>"; each card's number used exactly once), "cards" (the ranks seen, e.g.
    ["A", "7", "Q", "10"]; checked in GP-VL only) and "number" (each card's number; not
    checked).

    Observation: `reset` gives the prompt: the task with the face-card rule in words, the
    cards (GP-L: their ranks as text; GP-VL: one `image_size`-pixel square image of the
    hand, and no ranks in the text) and the answer format. After a failed answer, the
    verifier's feedback asking for a revision (text only: the conversation's image is
    the prompt's); after a correct one, the feedback.

    Reward (`GPRewards`, the paper's appendix A.3), per answer:
        correct             +5    legal, each card's number once, equals the target
        wrong_value         -1    legal, each card's number once, another value
        numbers_mismatch    -2    legal, but not exactly the cards' numbers
        illegal             -3    the formula does not parse or divides by zero
                                  (illegal_formula), or no answer could be read
                                  (unparseable)
        recognition_wrong   -1.5  GP-VL, added: "cards" is not the hand's ranks (not
                                  added to an unreadable answer)
        budget_exceeded     -1    added to the answer that spends the budget
    A correct formula with a wrong recognition still solves the hand (+5 - 1.5).

    Episode end: terminated when an answer is correct; truncated when `max_attempts`
    answers have failed. Each step is one answer. (The paper's code charges the budget
    penalty on an extra, unverified step after the budget runs out; here it is added to
    the last failed answer: the same return, one step shorter.)

    Info, besides the keys every `Env` writes: `values` (the cards' numbers under the
    rule), `face_rule`, `target`, `attempt` (answers scored so far), `attempts_left`.
    `task` is {"hand": card codes such as ["QH", "7S"], "image_seed": int}. The verdict
    adds `formula`, `value` (its exact value, e.g. "71/3") and `recognised_cards`.

    Arguments:
        config: `GPConfig`: target (24), face_rule ("ten": J, Q, K count 10; "ordinal":
            11, 12, 13), colours of the deck ("all", "black", "red"), sampling
            ("uniform" over solvable hands, or "with_face": only hands with a J, Q or K),
            max_attempts (5, the verification budget), modality ("text" or "image"; set
            by the env id through `make`), image_size (224) and rewards (`GPRewards`).
        env_id: the id it was made with ("gp-l" or "gp-vl").
    """

    answer_field = "formula"
    single_conversation = True
    buffer_lambda = 6.0  # the paper's D_buffer / D_RL (compute.rl_flops)

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
                num_cards=self.config.num_cards,
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
        """Score one answer to the hand (returns as `Env.step` documents)."""
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
