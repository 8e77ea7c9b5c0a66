"""GRPO with TRL's GRPOTrainer on the kit's GeneralPoints or V-IRL, evaluated by the kit.

    .venv/bin/python examples/trl_grpo.py --smoke          # the tiny model, about a minute on a CPU
    .venv/bin/python examples/trl_grpo.py --model <run>/quickstart-gp-l/sft-start/checkpoints/step-000024
    .venv/bin/python examples/trl_grpo.py --env virl-l --model <a V-IRL-L start>

What it does:
  1. the kit's training deals as a dataset (`grpo_dataset`, in the order the kit's own
     GRPO meets them);
  2. TRL trains with multi-turn episodes: every answer is scored by the kit's verifier and
     a wrong one gets the verifier's message as the next turn, until the budget is spent
     (`EpisodeRollout`); one optimizer step per update, every episode of the update in it;
  3. the trained model is evaluated on the kit's frozen sets (`evaluate_model`), and
     `summary.json` holds the reward of every update and the evaluation.

On many GPUs, launch the same script with accelerate (docs/integrations.md): every process plays
its share of the episodes, and `--vllm-mode server` or `colocate` hands generation to
TRL's vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL 1.16

import torch
from trl import GRPOConfig, GRPOTrainer

from sftrl_kit.compute import gflops, rl_flops
from sftrl_kit.data import eval_set_path
from sftrl_kit.envs import make
from sftrl_kit.evaluation import EVAL_SAMPLING, evaluate_model
from sftrl_kit.integrations.trl import EpisodeRollout, episode_return, grpo_dataset
from sftrl_kit.models.loading import resolve_model
from sftrl_kit.run_folder import start_tokens

EVAL_SETS = {
    "gp-l": ("gp-id", "gp-rule-ood"),
    "gp3-l": ("gp3-id", "gp3-rule-ood"),
    "virl-l": ("virl-id", "virl-rule-ood"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="a checkpoint folder, or 'default' / 'tiny'")
    parser.add_argument("--env", default="gp-l", choices=sorted(EVAL_SETS), help="the task trained and evaluated")
    parser.add_argument("--out", default="papermill_runs/trl-grpo", help="run folder (must not hold a finished run)")
    parser.add_argument("--updates", type=int, default=8, help="GRPO updates (one optimizer step each)")
    parser.add_argument("--deals", type=int, default=4, help="deals per update")
    parser.add_argument("--group-size", type=int, default=4, help="episodes per deal (TRL's num_generations)")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--budget", type=int, default=2, help="verification budget: answers per episode")
    parser.add_argument("--turn-tokens", type=int, default=128, help="longest answer of one turn, in tokens")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="the training deals and TRL's seed")
    parser.add_argument("--loss-type", default="dr_grpo", help="TRL's loss_type (dr_grpo: no length normalisation)")
    parser.add_argument("--eval-limit", type=int, default=None, help="deals per eval set (None: all 100)")
    parser.add_argument("--eval-budget", type=int, default=None, help="evaluation budget (None: the sets' own, 5)")
    parser.add_argument("--engine", default="auto", help="the kit's evaluation engine: auto, hf, vllm")
    parser.add_argument("--vllm-mode", default=None, choices=["colocate", "server"], help="generate with TRL's vLLM")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the tiny model: 2 updates of 2 deals; 8 eval deals, 1 answer of 16 tokens each",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.updates, args.deals, args.group_size = "tiny", 2, 2, 2
        args.turn_tokens, args.learning_rate = 16, 1e-4
        args.eval_limit, args.eval_budget, args.engine = 8, 1, "hf"
    for name in ("updates", "deals", "group_size", "budget", "turn_tokens", "eval_budget", "eval_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.group_size < 2:
        raise SystemExit("--group-size must be >= 2: GRPO's baseline is the group's other episodes")
    return args


def grpo_config(args: argparse.Namespace, out: Path) -> GRPOConfig:
    episodes = args.deals * args.group_size
    on_gpu = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=str(out / "trl"),
        use_cpu=not on_gpu,
        bf16=on_gpu,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        max_steps=args.updates,
        num_generations=args.group_size,
        per_device_train_batch_size=episodes,
        gradient_accumulation_steps=1,  # one optimizer step per update, over all its episodes
        shuffle_dataset=False,  # the deals in the kit's order
        temperature=args.temperature,
        max_completion_length=args.budget * args.turn_tokens,
        loss_type=args.loss_type,
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_vllm=args.vllm_mode is not None,
        vllm_mode=args.vllm_mode or "colocate",
    )


def training_compute(args: argparse.Namespace, trainer: GRPOTrainer, rollout: EpisodeRollout) -> dict:
    """The run's X_RL as the kit counts it (compute.rl_flops): D_RL is every token of the
    sequences TRL trained on, once per iteration, summed over processes; D_init is the
    start checkpoint's own (0 for a base model)."""
    tokens = rollout.sequence_tokens * trainer.args.num_iterations
    rl_tokens = int(trainer.accelerator.reduce(torch.tensor(tokens, device=trainer.accelerator.device), "sum"))
    init_tokens = start_tokens(args.model)
    parameters = sum(p.numel() for p in trainer.model.parameters())
    buffer_lambda = make(args.env).buffer_lambda
    flops = rl_flops(parameters, init_tokens, rl_tokens, buffer_lambda)
    return {"rl_tokens": rl_tokens, "init_tokens": init_tokens, "num_parameters": parameters, "gflops": gflops(flops)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    if (out / "summary.json").exists():
        raise SystemExit(f"{out} holds a finished run; pass another --out")
    dataset = grpo_dataset(args.env, size=args.updates * args.deals, seed=args.seed)
    rollout = EpisodeRollout(args.env, max_attempts=args.budget, max_turn_tokens=args.turn_tokens)
    trainer = GRPOTrainer(
        model=str(resolve_model(args.model)),
        args=grpo_config(args, out),
        train_dataset=dataset,
        reward_funcs=[episode_return],
        rollout_func=rollout,
    )
    trainer.train()
    compute = training_compute(args, trainer, rollout)
    final = out / "final"
    trainer.save_model(str(final))
    rewards = [
        {
            "update": row["step"],
            "reward": row["reward"],
            "reward_std": row["reward_std"],
            "num_tokens": row["num_tokens"],
        }
        for row in trainer.state.log_history
        if "reward" in row
    ]
    del trainer
    budget = {} if args.eval_budget is None else {"max_attempts": args.eval_budget}
    evaluation = evaluate_model(
        final,
        out,
        {name: eval_set_path(name) for name in EVAL_SETS[args.env]},
        env_id=args.env,
        # greedy, as every evaluation of the kit; a smoke run's answers are cut at its turn length
        sampling=replace(EVAL_SAMPLING, max_new_tokens=args.turn_tokens) if args.smoke else EVAL_SAMPLING,
        limit=args.eval_limit,
        engine=args.engine,
        **budget,
    )
    summary = {
        "settings": vars(args),
        "updates": len(rewards),
        "rewards": rewards,
        "compute": compute,
        "evaluation": {
            name: {key: result["success_rate"][key] for key in ("value", "low", "high", "successes", "trials")}
            for name, result in evaluation.items()
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name, result in summary["evaluation"].items():
        print(f"{name}: success {result['successes']}/{result['trials']} [{result['low']:.2f}, {result['high']:.2f}]")
    return summary


if __name__ == "__main__":
    main()
