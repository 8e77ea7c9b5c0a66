"""Batched multi-turn rollouts: many environments, one generate call per turn.

Each turn gathers the episodes still running, builds each conversation so far with
`chat_messages`, answers them all in batches with the policy, and hands every answer to
its environment's verifier. When an environment reports `info["new_prompt"]` (V-IRL
moved to its next point), its observation starts a fresh conversation. Episodes leave the batch when they terminate or their
verification budget is spent. Any object with `respond(conversations, sampling,
with_logprobs)` can act as the policy (a transformers Policy, or a scripted one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from .envs.base import Env, Observation
from .episodes import Episode, Turn, chat_messages
from .models import Conversation, Generation, SamplingConfig


class Responder(Protocol):
    """What writes responses: a generation engine (`sftrl_kit.engines`) or a scripted
    policy. `engine` (optional) names it in episodes and evaluation keys."""

    def respond(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, with_logprobs: bool = True
    ) -> list[Generation]: ...


def engine_of(responder: Responder) -> str:
    """The engine name recorded for a responder: its `engine`, or "hf" (a Policy's)."""
    return str(getattr(responder, "engine", "hf"))


@dataclass
class _Running:
    env: Env
    prompt: Observation
    episode: Episode
    exchanges: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False


def rollout(
    policy: Responder,
    envs: Sequence[Env],
    sampling: SamplingConfig,
    *,
    tasks: Sequence[dict[str, Any]] | None = None,
    seeds: Sequence[int | None] | None = None,
    splits: Sequence[str | None] | None = None,
    batch_size: int = 16,
    with_logprobs: bool = True,
    progress: bool = True,
) -> list[Episode]:
    """Play one episode in each env; returns them in the order of `envs`.

    tasks replays fixed tasks (eval sets); otherwise each env is reset with its seed.
    batch_size: conversations per respond call, for responders that do not schedule
    their own batches (`batches_itself`, as the vLLM engine does: it gets them all).
    """
    count = len(envs)
    for name, values in (("tasks", tasks), ("seeds", seeds), ("splits", splits)):
        if values is not None and len(values) != count:
            raise ValueError(f"{name} has {len(values)} entries for {count} environments")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    running = [
        _start(
            env,
            None if tasks is None else tasks[i],
            None if seeds is None else seeds[i],
            None if splits is None else splits[i],
            sampling,
            engine_of(policy),
        )
        for i, env in enumerate(envs)
    ]
    torch.manual_seed(sampling.seed)
    bar = tqdm(total=count, desc="episodes", disable=not progress, leave=False)
    active = list(running)
    while active:
        size = len(active) if getattr(policy, "batches_itself", False) else batch_size
        for start in range(0, len(active), size):
            chunk = active[start : start + size]
            conversations = [Conversation(chat_messages(r.prompt, r.exchanges), r.prompt.images) for r in chunk]
            for item, generation in zip(chunk, policy.respond(conversations, sampling, with_logprobs)):
                _advance(item, generation)
                bar.update(int(item.done))
        active = [item for item in active if not item.done]
    bar.close()
    return [item.episode for item in running]


def _start(env: Env, task, seed, split, sampling: SamplingConfig, engine: str) -> _Running:
    observation, info = env.reset(seed=seed, options=None if task is None else {"task": task})
    config = getattr(env, "config", None)
    episode = Episode(
        env_id=env.env_id,
        env_config=dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {},
        task=info.get("task", {}),
        prompt=observation.text,
        split=split,
        seed=seed,
        sampling=dataclasses.asdict(sampling),
        engine=engine,
        images=list(observation.images),
    )
    return _Running(env, observation, episode)


def _advance(item: _Running, generation: Generation) -> None:
    observation, reward, terminated, truncated, info = item.env.step(generation.text)
    verdict = info.get("verdict", {})
    item.episode.turns.append(
        Turn(
            response=generation.text,
            reward=float(reward),
            outcome=str(verdict.get("outcome", "")),
            feedback=observation.text,
            verdict=verdict,
            prompt_token_ids=generation.prompt_token_ids,
            response_token_ids=generation.response_token_ids,
            response_logprobs=generation.response_logprobs,
            images=list(item.prompt.images),
        )
    )
    if info.get("new_prompt"):  # the environment moved on: a new conversation starts
        item.prompt, item.exchanges = observation, []
    else:
        item.exchanges.append((generation.text, observation.text))
    if terminated or truncated:
        item.done = True
        item.episode.success = bool(info.get("success", False))
