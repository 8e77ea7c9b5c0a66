"""Rollout throughput of the embedded default model on GP-L; writes JSON.

    python bench/rollout.py [--out bench/results/rollout.json] [--repeats 1]
                            [--episodes 8] [--max-new-tokens 64] [--model default]

Compares, in one run on the same deals and sampling settings:
  - `plain_loop`: one episode at a time, one `generate` call per turn, the way a
    first script would do it (chat template -> tokenizer -> generate -> decode -> step);
  - `rollout` at batch sizes 1, 8 and 32 (episodes = max(--episodes, batch size)), and at
    batch 8 with behaviour log-probs recorded, as PPO needs them.
Reports new tokens per second and episodes per hour (medians over --repeats), and the
ratio of each to the plain loop.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from common import REPO, RESULTS, machine, write_report  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from sftrl_kit.envs import make  # noqa: E402
from sftrl_kit.episodes import chat_messages  # noqa: E402
from sftrl_kit.models import SamplingConfig, load_policy  # noqa: E402
from sftrl_kit.rollout import rollout  # noqa: E402

ENV_CONFIG = {"max_attempts": 2}


def plain_loop(policy, seeds: list[int], sampling: SamplingConfig) -> tuple[int, int]:
    """(new tokens, episodes) for the one-at-a-time baseline."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=None,
        max_new_tokens=sampling.max_new_tokens,
        pad_token_id=policy.tokenizer.pad_token_id,
        eos_token_id=policy.stop_token_ids(),
    )
    torch.manual_seed(sampling.seed)
    new_tokens = 0
    for seed in seeds:
        env = make("gp-l", **ENV_CONFIG)
        prompt, _ = env.reset(seed=seed)
        exchanges, done = [], False
        while not done:
            text = policy.prompt_text(chat_messages(prompt, exchanges))
            inputs = policy.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                output = policy.model.generate(**inputs, generation_config=config)
            response = output[0, inputs["input_ids"].shape[1] :]
            new_tokens += int((response != policy.tokenizer.pad_token_id).sum())
            answer = policy.tokenizer.decode(response, skip_special_tokens=True)
            feedback, _, terminated, truncated, _ = env.step(answer)
            exchanges.append((answer, feedback.text))
            done = terminated or truncated
    return new_tokens, len(seeds)


def batched(
    policy, seeds: list[int], sampling: SamplingConfig, batch_size: int, with_logprobs: bool
) -> tuple[int, int]:
    envs = [make("gp-l", **ENV_CONFIG) for _ in seeds]
    episodes = rollout(
        policy, envs, sampling, seeds=seeds, batch_size=batch_size, with_logprobs=with_logprobs, progress=False
    )
    return sum(len(t.response_token_ids) for e in episodes for t in e.turns), len(episodes)


def measure(run, repeats: int) -> dict:
    rates, hours = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens, episodes = run()
        seconds = time.perf_counter() - start
        rates.append(tokens / seconds)
        hours.append(episodes / seconds * 3600)
    return {
        "new_tokens_per_second": round(statistics.median(rates), 1),
        "episodes_per_hour": round(statistics.median(hours)),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "rollout.json"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    policy = load_policy(args.model)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    results = {"plain_loop": measure(lambda: plain_loop(policy, list(range(args.episodes)), sampling), args.repeats)}
    for size in args.batch_sizes:
        seeds = list(range(max(args.episodes, size)))
        results[f"rollout_batch_{size}"] = measure(
            lambda seeds=seeds, size=size: batched(policy, seeds, sampling, size, False), args.repeats
        )
    seeds = list(range(max(args.episodes, 8)))
    results["rollout_batch_8_with_logprobs"] = measure(lambda: batched(policy, seeds, sampling, 8, True), args.repeats)
    base = results["plain_loop"]["new_tokens_per_second"]
    for _name, row in results.items():
        row["tokens_per_second_vs_plain_loop"] = round(row["new_tokens_per_second"] / base, 2)

    report = {
        "benchmark": "rollout",
        "model": args.model,
        "num_parameters": policy.num_parameters,
        "device": str(policy.device),
        "dtype": str(policy.model.dtype),
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
        "task": {"env": "gp-l", **ENV_CONFIG, "sampling": vars(sampling)},
        "results": results,
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
