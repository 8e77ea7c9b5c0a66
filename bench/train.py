"""Training throughput on the embedded default model (CPU); writes JSON.

    python bench/train.py [--out bench/results/train.json] [--model default]
                          [--sft-steps 4] [--episodes 8] [--max-new-tokens 64]

Measured in one run, on the same GP-L deals and generation length:
  - SFT (TRL SFTTrainer through the kit): sequences per hour, batch 8;
  - the kit's PPO: episodes per hour for single-turn episodes (max_attempts=1), one
    update of --episodes episodes and one epoch, so it compares with GRPO's one pass;
    and for the paper's multi-turn setting (budget 5) as well;
  - TRL's GRPOTrainer as a reference point: episodes (completions) per hour with the
    kit's verifier as its reward, --episodes completions per step.
Each figure is wall time of the training calls only (model loading excluded), one
measurement each: the machine is shared, so read ratios, not third digits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, machine, write_report  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(REPO))

from sftrl_kit.data import GP_TRAIN_CONFIG, expert_records, write_sft_dataset  # noqa: E402
from sftrl_kit.run_folder import read_metrics  # noqa: E402


def bench_sft(model: str, work: Path, steps: int) -> dict:
    from sftrl_kit.train.sft import SFTSettings, train_sft

    data = work / "sft.jsonl"
    write_sft_dataset(data, expert_records("gp-l", 8 * steps))
    run = train_sft(
        SFTSettings(
            model=model,
            dataset=str(data),
            run_dir=str(work / "sft"),
            max_steps=steps,
            batch_size=8,
            save_steps=10_000,
            logging_steps=1,
        )
    )
    final = [r for r in read_metrics(run) if "train_runtime" in r][-1]
    seconds = float(final["train_runtime"])
    return {
        "steps": steps,
        "batch_size": 8,
        "seconds": round(seconds, 1),
        "sequences_per_hour": round(8 * steps / seconds * 3600),
        "tokens": final["tokens"],
        "seconds_per_step": round(seconds / steps, 2),
    }


def bench_ppo(model: str, work: Path, episodes: int, max_new_tokens: int, max_attempts: int) -> dict:
    from sftrl_kit.train.ppo import PPOSettings, train_ppo

    run = train_ppo(
        PPOSettings(
            model=model,
            run_dir=str(work / f"ppo-{max_attempts}"),
            updates=1,
            episodes_per_update=episodes,
            max_attempts=max_attempts,
            max_new_tokens=max_new_tokens,
            ppo_epochs=1,
            minibatch_size=8,
            micro_batch_size=4,
            env_config=dict(GP_TRAIN_CONFIG),
            save_every=10_000,
        )
    )
    row = read_metrics(run)[-1]
    return {
        "episodes": row["episodes"],
        "turns_per_episode": row["mean_episode_length"],
        "seconds": row["seconds"],
        "episodes_per_hour": round(row["episodes"] / row["seconds"] * 3600),
        "generated_tokens": row["generated_tokens"],
    }


def bench_grpo(model: str, work: Path, episodes: int, max_new_tokens: int) -> dict:
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from sftrl_kit.envs import make
    from sftrl_kit.models import load_policy
    from sftrl_kit.rewards import verifier_reward

    env = make("gp-l", **GP_TRAIN_CONFIG)
    rows = []
    for seed in range(episodes):
        prompt, info = env.reset(seed=seed)
        rows.append({"prompt": [{"role": "user", "content": prompt.text}], "task": info["task"]})
    policy = load_policy(model)
    config = GRPOConfig(
        output_dir=str(work / "grpo"),
        max_steps=1,
        per_device_train_batch_size=episodes,
        num_generations=episodes // 2,
        max_completion_length=max_new_tokens,
        temperature=1.0,
        learning_rate=1e-6,
        beta=0.0,
        num_iterations=1,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=policy.model,
        processing_class=policy.tokenizer,
        reward_funcs=[verifier_reward("gp-l", **GP_TRAIN_CONFIG)],
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {
        "completions": episodes,
        "seconds": round(seconds, 1),
        "episodes_per_hour": round(episodes / seconds * 3600),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "train.json"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--sft-steps", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sft = bench_sft(args.model, work, args.sft_steps)
        ppo_single = bench_ppo(args.model, work, args.episodes, args.max_new_tokens, max_attempts=1)
        grpo = bench_grpo(args.model, work, args.episodes, args.max_new_tokens)
        ppo_multi = bench_ppo(args.model, work, args.episodes, args.max_new_tokens, max_attempts=5)
    report = {
        "benchmark": "train",
        "model": args.model,
        "machine": machine(),
        "max_new_tokens": args.max_new_tokens,
        "sft": sft,
        "ppo_single_turn": ppo_single,
        "trl_grpo_single_turn": grpo,
        "ppo_vs_grpo_episodes_per_hour": round(ppo_single["episodes_per_hour"] / grpo["episodes_per_hour"], 2),
        "ppo_multi_turn_budget_5": ppo_multi,
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
