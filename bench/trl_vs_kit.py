"""An independent check of the kit's GRPO: the same run trained by the kit and by TRL.

    .venv/bin/python bench/trl_vs_kit.py OUT --model <start checkpoint> [--updates 8 --deals 4 --group-size 4 ...]

The start should be one whose episodes' returns vary (the quickstart's SFT start,
<run>/quickstart-gp-l/sft-start/checkpoints/step-000024): from the base model every
answer is unreadable, every return is -7, and both trainers take zero steps.

Both trainers start from the same model and meet the same deals in the same order (the
kit's training deals of run seed 0, `grpo_dataset`), with the same group size, learning
rate, verification budget, answer length, sampling (temperature 1, no top-k/top-p) and
number of updates; each update is one optimizer step over all its episodes (kit:
ppo_epochs 1 and one minibatch; TRL: num_iterations 1, one gradient accumulation step),
so the clipped ratio is 1 at the step and both reduce to the same policy gradient:
the group-normalised episode return times the sum of the answer tokens' log-probs. The
kit's advantages are not re-normalised over the batch (`normalise_advantages=False`), as
TRL's are not; TRL's loss is `dr_grpo` (a sum over tokens, not a per-answer mean, like the
kit's sequence log-prob); AdamW's epsilon and weight decay are the kit's (1e-5, 0.01).
What still differs, and cannot be removed from outside: the kit scores each turn in its
own re-rendered conversation and TRL the whole episode as one sequence; the kit's group
std is the population std + 1e-6, TRL's the sample std + 1e-4; the two losses differ by
a constant factor per update (AdamW makes that nearly irrelevant).

Written to OUT/trl_vs_kit.json (and bench/results/trl_vs_kit.json):
  - per update, each trainer's mean episode return with a 95% interval over its deals;
  - the paired difference (kit - TRL) of the per-deal mean returns over every update
    (the deals are the same on both sides), with its interval and p-value;
  - each end checkpoint's success on gp-id (greedy, budget 5, the kit's evaluation), and
    their paired comparison (stats.compare_rates);
  - the wall time of each trainer on this machine.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from common import RESULTS, machine, write_report

from sftrl_kit.data import eval_set_path, training_config
from sftrl_kit.episodes import read_episodes
from sftrl_kit.evaluation import EVAL_SAMPLING, evaluate_model
from sftrl_kit.run_folder import episode_files, last_checkpoint
from sftrl_kit.stats import compare_rates, paired_mean_difference


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="a new folder for both runs")
    parser.add_argument("--model", default="default")
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--deals", type=int, default=4, help="deals per update")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--budget", type=int, default=2)
    parser.add_argument("--turn-tokens", type=int, default=64, help="longest answer (the quickstart's 64)")
    parser.add_argument("--eval-limit", type=int, default=100)
    parser.add_argument("--eval-tokens", type=int, default=None, help="answer length of the evaluation (None: 256)")
    parser.add_argument("--eval-engine", default="auto", help="the kit's evaluation engine for both end models")
    return parser.parse_args()


def run_kit(args: argparse.Namespace, folder: Path) -> tuple[list[list[float]], Path, float]:
    """The kit's GRPO; returns each update's episode returns (in deal order), the last
    checkpoint and the wall time."""
    from sftrl_kit.train.ppo import PPOSettings, train_ppo

    episodes = args.deals * args.group_size
    settings = PPOSettings(
        model=args.model,
        run_dir=str(folder),
        env_id="gp-l",
        env_config=training_config("gp-l"),
        max_attempts=args.budget,
        episodes_per_update=episodes,
        group_size=args.group_size,
        max_new_tokens=args.turn_tokens,
        rollout_batch_size=episodes,
        engine="hf",
        updates=args.updates,
        learning_rate=args.learning_rate,
        ppo_epochs=1,
        minibatch_size=episodes * args.budget,  # every turn of the update in one optimizer step
        micro_batch_size=args.budget,
        advantage="grpo",
        normalise_advantages=False,
        save_every=args.updates,
        seed=0,
    )
    start = time.perf_counter()
    train_ppo(settings)
    seconds = time.perf_counter() - start
    returns = [[e.total_reward for e in read_episodes(path)] for _, path in sorted(episode_files(folder).items())]
    return returns, last_checkpoint(folder), seconds


def run_trl(args: argparse.Namespace, folder: Path) -> tuple[list[list[float]], Path, float]:
    """TRL's GRPOTrainer with the kit's episodes; the same returns, end model and time."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from sftrl_kit.integrations.trl import EpisodeRollout, episode_return, grpo_dataset
    from sftrl_kit.models.loading import resolve_model

    seen: list[list[float]] = []

    def recorded_return(completions, **fields):
        values = episode_return(completions, **fields)
        seen.append(values)
        return values

    recorded_return.__name__ = "episode_return"
    episodes = args.deals * args.group_size
    config = GRPOConfig(
        output_dir=str(folder),
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        adam_epsilon=1e-5,
        weight_decay=0.01,
        max_grad_norm=1.0,
        max_steps=args.updates,
        num_generations=args.group_size,
        per_device_train_batch_size=episodes,
        gradient_accumulation_steps=1,
        shuffle_dataset=False,
        temperature=1.0,
        max_completion_length=args.budget * args.turn_tokens,
        loss_type="dr_grpo",
        epsilon=0.1,
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(resolve_model(args.model)),
        args=config,
        train_dataset=grpo_dataset("gp-l", size=args.updates * args.deals, seed=0),
        reward_funcs=[recorded_return],
        rollout_func=EpisodeRollout("gp-l", max_attempts=args.budget, max_turn_tokens=args.turn_tokens),
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    final = folder / "final"
    trainer.save_model(str(final))
    return seen, final, seconds


def per_deal_means(returns: list[float], group_size: int) -> list[float]:
    return [statistics.fmean(returns[i : i + group_size]) for i in range(0, len(returns), group_size)]


def interval(values: list[float]) -> dict[str, float]:
    """The mean of per-deal means with a normal 95% interval over the deals."""
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half}


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; give a new folder")
    kit_returns, kit_end, kit_seconds = run_kit(args, out / "kit")
    trl_returns, trl_end, trl_seconds = run_trl(args, out / "trl")
    if [len(r) for r in kit_returns] != [len(r) for r in trl_returns]:
        raise RuntimeError(f"episodes per update differ: kit {kit_returns}, TRL {trl_returns}")
    curves, kit_deals, trl_deals = [], [], []
    for update, (kit, trl) in enumerate(zip(kit_returns, trl_returns), 1):
        kit_means, trl_means = per_deal_means(kit, args.group_size), per_deal_means(trl, args.group_size)
        kit_deals += kit_means
        trl_deals += trl_means
        curves.append({"update": update, "kit": interval(kit_means), "trl": interval(trl_means)})
    eval_sets = {"gp-id": eval_set_path("gp-id")}
    sampling = EVAL_SAMPLING if args.eval_tokens is None else replace(EVAL_SAMPLING, max_new_tokens=args.eval_tokens)
    kit_eval, trl_eval = (
        evaluate_model(end, end, eval_sets, sampling=sampling, limit=args.eval_limit, engine=args.eval_engine)["gp-id"][
            "success_rate"
        ]
        for end in (kit_end, trl_end)
    )
    keep = ("value", "low", "high", "successes", "trials")
    report = {
        "benchmark": "trl_vs_kit",
        "machine": machine(),
        "settings": vars(args),
        "per_update_mean_return": curves,
        "mean_return_kit_minus_trl": paired_mean_difference(kit_deals, trl_deals),
        "end_success_gp_id": {
            "kit": {k: kit_eval[k] for k in keep},
            "trl": {k: trl_eval[k] for k in keep},
            "kit_minus_trl": compare_rates(kit_eval, trl_eval),
        },
        "wall_seconds": {"kit": kit_seconds, "trl": trl_seconds},
        # a start whose episodes all return the same (the base model's -7: every answer
        # unreadable) gives both trainers zero advantages: their agreement then says nothing
        "returns_varied": {
            "kit": any(len(set(update)) > 1 for update in kit_returns),
            "trl": any(len(set(update)) > 1 for update in trl_returns),
        },
    }
    write_report(out / "trl_vs_kit.json", report)
    write_report(RESULTS / "trl_vs_kit.json", report)


if __name__ == "__main__":
    main()
