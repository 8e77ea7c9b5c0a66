"""The verifiers as reward functions for other trainers (TRL's GRPOTrainer, verl, ...).

    reward = verifier_reward("gp-l", face_rule="ten")
    GRPOTrainer(..., reward_funcs=[reward], train_dataset=rows_with_a_task_column)

Each completion is scored as the first answer to its task: the environment replays
the task (`env.reset(options={"task": task})`) and its reward for one step is the
reward. The dataset needs a `task` column (the eval-set / episode `task` dicts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .envs import make


def verifier_reward(env_id: str, **env_config: Any) -> Callable[..., list[float]]:
    env = make(env_id, **env_config)

    def reward(completions: list, task: list[dict[str, Any]], **_: Any) -> list[float]:
        scores = []
        for completion, one_task in zip(completions, task):
            env.reset(options={"task": one_task})
            _, value, _, _, _ = env.step(_completion_text(completion))
            scores.append(float(value))
        return scores

    reward.__name__ = f"{env_id}_verifier"
    return reward


def _completion_text(completion: Any) -> str:
    """TRL passes plain strings, or for conversational data a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    return str(completion)
