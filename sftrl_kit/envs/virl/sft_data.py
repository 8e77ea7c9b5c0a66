"""V-IRL SFT demonstrations: the expert's answer at every decision point of a route.

Each decision point is its own prompt (with the history of the route so far), so a
route gives one demonstration per point. "expert": the prompt and the expert's answer.
"suboptimal": a wrong action, verified as wrong, with the verifier's message, then the
expert's answer (the budget of 2 per point allows one revision).

Demonstrations are dicts {"prompt", "exchanges", "answer", "seed", "task"};
`sftrl_kit.data` picks the training seeds and settings and turns them into records.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from .env import VirlEnv
from .prompts import action_thought, describe_landmarks, format_answer, sentence_per_decision, valid_actions


def expert_demonstrations(env: VirlEnv, routes: int, seed: int, reasoning: bool = False) -> Iterator[dict[str, Any]]:
    """Route i (seed + i): one demonstration per decision point; its task names the point.
    With `reasoning`, each answer starts with a "thought" reading the sentence it follows
    in the action space."""
    for index in range(routes):
        observation, info = env.reset(seed=seed + index)
        sentences = sentence_per_decision(env.decisions, env.route.instruction)
        for decision, sentence in zip(list(env.decisions), sentences):
            thought = action_thought(sentence, decision.action, env.config.action_space) if reasoning else None
            answer = format_answer(describe_landmarks(decision.landmarks), sentence, decision.action, thought)
            yield {
                "prompt": observation,
                "exchanges": [],
                "answer": answer,
                "seed": seed + index,
                "task": {**info["task"], "point": decision.point},
            }
            observation, _, _, _, _ = env.step(answer)


def suboptimal_demonstrations(env: VirlEnv, routes: int, seed: int) -> Iterator[dict[str, Any]]:
    """Route i (seed + i): per decision point, a wrong action drawn with random.Random(seed + i)
    and the verifier's message, then the expert's answer."""
    for index in range(routes):
        rng = random.Random(seed + index)
        observation, info = env.reset(seed=seed + index)
        sentences = sentence_per_decision(env.decisions, env.route.instruction)
        for decision, sentence in zip(list(env.decisions), sentences):
            wrong_action = rng.choice(sorted(valid_actions(env.config.action_space) - {decision.action}))
            wrong = format_answer(describe_landmarks(decision.landmarks), sentence, wrong_action)
            feedback, _, _, truncated, step_info = env.step(wrong)
            if truncated or step_info["verdict"]["outcome"] != "wrong_action":
                raise RuntimeError(f"the wrong action {wrong_action!r} was not scored as wrong")
            answer = format_answer(describe_landmarks(decision.landmarks), sentence, decision.action)
            yield {
                "prompt": observation,
                "exchanges": [(wrong, feedback.text)],
                "answer": answer,
                "seed": seed + index,
                "task": info["task"],
            }
            observation, _, _, _, _ = env.step(answer)
