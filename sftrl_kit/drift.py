"""How far a checkpoint has moved from its start on the task it trains on: the forward KL
divergence

    KL(pi_start || pi) = E_{x ~ tasks} E_{y ~ pi_start(.|x)} [ log pi_start(y|x) - log pi(y|x) ]

RL's Razor (Shenfeld, Pari and Agrawal, 2025) finds that this KL, measured on the trained
task's distribution, predicts how much a fine-tuned model forgets better than which
algorithm trained it; the study draws it against the rule-OOD change
(plots.plot_drift).

Monte-Carlo estimate: for each of the first `limit` tasks of a frozen set, one response
sampled from the start at temperature 1 (its own distribution, first turn only), then
scored under the start and under each checkpoint by the same forward pass
(Policy.score). The estimate is the mean over tasks of the response's summed log-ratio, in
nats per response, with its standard error across tasks; `per_token` divides by the
mean response length. The samples are drawn once per setting and kept in the start's
folder, so every checkpoint is scored on the same responses.

    forward_kl    the estimate for each checkpoint, stored in <checkpoint>/drift/ (the
                  layout: run_folder.keyed_file) and read back when its key is there
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import eval_set_path, load_eval_set
from .envs import make
from .episodes import chat_messages
from .models import Conversation, SamplingConfig, is_vision_model
from .run_folder import DRIFT, DRIFT_SAMPLES, keyed_file, read_counters, read_keyed, write_keyed


def forward_kl(
    start: str | Path,
    checkpoints: Sequence[str | Path],
    eval_set: str,
    env_id: str,
    *,
    limit: int = 64,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """KL(pi_start || pi) on the first `limit` tasks of `eval_set` (a frozen set's name or
    JSONL path), one entry per checkpoint: {"checkpoint", "step", "gflops", "forward_kl"
    (nats per response), "se", "per_token", "samples", "key"}. `start` is a checkpoint
    folder (the study's shared start); its own entry is 0 by construction."""
    if is_vision_model(str(start)):
        raise ValueError("forward_kl scores text prompts; the image tasks' prompts are not supported")
    key = {
        "start": str(Path(start).resolve()),
        "eval_set": eval_set,
        "env_id": env_id,
        "limit": limit,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    results = [read_keyed(keyed_file(checkpoint, DRIFT, key), key) for checkpoint in checkpoints]
    samples = None
    for index, checkpoint in enumerate(map(Path, checkpoints)):
        if results[index] is None:
            samples = samples or _start_samples(Path(start), key, batch_size)
            results[index] = _score(checkpoint, samples, key, batch_size)
            write_keyed(keyed_file(checkpoint, DRIFT, key), results[index], indent=2)
    return results


def log_ratio_estimate(start_logprobs: Sequence[float], logprobs: Sequence[float]) -> tuple[float, float]:
    """The mean of log pi_start(y) - log pi(y) over samples y ~ pi_start, and its standard
    error (sample standard deviation / sqrt(n); 0 for one sample)."""
    ratios = [a - b for a, b in zip(start_logprobs, logprobs, strict=True)]
    n = len(ratios)
    if n == 0:
        raise ValueError("no samples to estimate the KL from")
    mean = sum(ratios) / n
    variance = sum((r - mean) ** 2 for r in ratios) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(variance / n)


def _start_samples(start: Path, key: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The start's responses to the set's first prompts, with their summed log-probs under
    the start (Policy.score), drawn once per key and kept in the start's folder."""
    from .models import load_policy

    path = keyed_file(start, DRIFT_SAMPLES, key)
    stored = read_keyed(path, key)
    if stored is not None:
        return stored
    records = load_eval_set(eval_set_path(key["eval_set"]))[: key["limit"]]
    conversations = []
    for record in records:
        observation, _ = make(key["env_id"], **record["env_config"]).reset(options={"task": record["task"]})
        conversations.append(Conversation(chat_messages(observation, [])))
    policy = load_policy(start)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=key["max_new_tokens"], seed=key["seed"])
    prompts, responses = [], []
    for first in range(0, len(conversations), batch_size):
        for generation in policy.respond(conversations[first : first + batch_size], sampling, with_logprobs=False):
            prompts.append(generation.prompt_token_ids)
            responses.append(generation.response_token_ids)
    samples = {"key": key, "prompts": prompts, "responses": responses}
    samples["start_logprobs"] = _summed_logprobs(policy, samples, batch_size)
    write_keyed(path, samples)
    return samples


def _score(checkpoint: Path, samples: dict[str, Any], key: dict[str, Any], batch_size: int) -> dict[str, Any]:
    from .models import load_policy

    logprobs = _summed_logprobs(load_policy(checkpoint), samples, batch_size)
    kl, se = log_ratio_estimate(samples["start_logprobs"], logprobs)
    tokens = sum(map(len, samples["responses"])) / len(samples["responses"])
    counters = read_counters(checkpoint)
    return {
        "checkpoint": str(checkpoint),
        "step": counters.get("step"),
        "gflops": counters.get("gflops"),
        "forward_kl": kl,
        "se": se,
        "per_token": kl / tokens if tokens else 0.0,
        "samples": len(logprobs),
        "key": key,
    }


def _summed_logprobs(policy, samples: dict[str, Any], batch_size: int) -> list[float]:
    """Each sampled response's log-probability under `policy` (the sum over its tokens)."""
    out = []
    for first in range(0, len(samples["responses"]), batch_size):
        prompts = samples["prompts"][first : first + batch_size]
        responses = samples["responses"][first : first + batch_size]
        out += [float(lp.sum()) for lp in policy.score(prompts, responses, {})]
    return out
