"""Does RL learn on a CPU? The experiments behind docs/results.md#does-rl-learn-on-a-cpu.

Each step is one command, run in this order (every step reads the folder the previous
ones wrote; nothing runs twice):

    bench/rl_on_cpu.py start OUT --cards 3 --target 12 [--compact]
        the shared start as the quickstart makes it (24 SFT steps, batch 8, lr 1e-4, both
        rules each stated in its prompt) on 2,000 deals of the variant, and its greedy
        evaluation on 100 ID and 100 rule-OOD deals of the variant (budget 2)
    bench/rl_on_cpu.py ppo OUT NAME '{"advantage": "grpo", ...}'
        PPO from that start with the given PPOSettings fields (the variant's training
        rule, 64 new tokens, seed 0; budget 2 unless max_attempts is given), then the
        same evaluation of its last checkpoint
    bench/rl_on_cpu.py sft OUT NAME
        more SFT from the start on the trained rule, for as many steps as reach the PPO
        run NAME's training GFLOPs (study.sft_steps_for), then the same evaluation
    bench/rl_on_cpu.py compare OUT
        every run's end against the start: success, validity and the memorisation
        signature on both sets, with 95% intervals and p-values (stats.compare_rates);
        written to OUT/compare.json

The evaluation sets are dealt here from base seeds 10,000 (ID: the trained rule, black
suits) and 20,000 (rule-OOD: J, Q, K = 11, 12, 13, a face card in every deal), in the
variant's settings; they are not the committed gp3-* sets.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from sftrl_kit.data import EvalSplit, expert_records, make_eval_set, write_sft_dataset
from sftrl_kit.episodes import write_jsonl
from sftrl_kit.evaluation import evaluate_model
from sftrl_kit.models import SamplingConfig
from sftrl_kit.run_folder import last_checkpoint, read_counters
from sftrl_kit.stats import compare_rates, format_p_value
from sftrl_kit.study import sft_steps_for
from sftrl_kit.train.ppo import PPOSettings, train_ppo
from sftrl_kit.train.sft import SFTSettings, train_sft

DEALS = 100
SETS = {
    "id": ({"face_rule": "ten", "sampling": "uniform"}, 10_000),
    "ood": ({"face_rule": "ordinal", "sampling": "with_face"}, 20_000),
}
SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=64, seed=0)
METRICS = ("success_rate", "valid", "other_rule_numbers")


def variant(out: Path) -> dict:
    """The GP settings `start` wrote: colours, num_cards, target, compact_prompt."""
    return json.loads((out / "variant.json").read_text())


def dealing(config: dict) -> dict:
    """The variant's settings the SFT data are dealt with (the training colours are the kit's)."""
    return {k: v for k, v in config.items() if k != "colours"}


def evaluate(checkpoint: Path, out: Path, folder: Path) -> None:
    sets = {name: str(out / f"{name}.jsonl") for name in SETS}
    evaluate_model(checkpoint, folder, sets, "gp-l", SAMPLING, limit=DEALS, progress=False, max_attempts=2)


def train_then_evaluate(out: Path, label: str, train: Callable[[], Path], eval_dir: Callable[[Path], Path]) -> None:
    """Run `train` (returns its run folder), evaluate the run's last checkpoint into
    eval_dir(run folder), and print the time of each."""
    began = time.time()
    folder = train()
    trained = time.time()
    evaluate(last_checkpoint(folder), out, eval_dir(folder))
    print(f"{label}: training {trained - began:.0f} s, evaluation {time.time() - trained:.0f} s")


def sft_settings(model: str, dataset: Path, run_dir: Path, steps: int, **fields) -> SFTSettings:
    """The quickstart's SFT recipe (lr 1e-4, batch 8, one checkpoint at the end)."""
    return SFTSettings(
        model=model,
        dataset=str(dataset),
        run_dir=str(run_dir),
        learning_rate=1e-4,
        max_steps=steps,
        save_steps=steps,
        batch_size=8,
        **fields,
    )


def start(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"colours": "black", "num_cards": args.cards, "target": args.target, "compact_prompt": args.compact}
    (out / "variant.json").write_text(json.dumps(config) + "\n")
    write_sft_dataset(out / "start.jsonl", expert_records("gp-l", 2000, rules="both", **dealing(config)))
    for name, (settings, seed) in SETS.items():
        write_jsonl(out / f"{name}.jsonl", make_eval_set(EvalSplit(name, {**config, **settings}, seed, ""), DEALS))
    settings = sft_settings("default", out / "start.jsonl", out / "start", 24, logging_steps=4, seed=0)
    train_then_evaluate(out, "start", lambda: train_sft(settings), lambda _: out / "eval")


def ppo(args: argparse.Namespace) -> None:
    out = Path(args.out)
    settings = PPOSettings(
        model=str(last_checkpoint(out / "start")),
        run_dir=str(out / args.name),
        env_id="gp-l",
        env_config={"face_rule": "ten", "sampling": "uniform", **variant(out)},
        max_new_tokens=64,
        seed=0,
        **{"max_attempts": 2, **json.loads(args.settings)},
    )
    train_then_evaluate(out, args.name, lambda: train_ppo(settings), lambda run: run / "eval")


def sft(args: argparse.Namespace) -> None:
    out = Path(args.out)
    first = last_checkpoint(out / "start")
    steps = sft_steps_for(read_counters(last_checkpoint(out / args.name))["gflops"], first)
    data = out / "branch.jsonl"
    if not data.exists():
        write_sft_dataset(data, expert_records("gp-l", 2000, **dealing(variant(out))))
    name = f"sft-matching-{args.name}"
    settings = sft_settings(
        str(first), data, out / name, steps, logging_steps=10, seed=1, init_tokens=read_counters(first)["tokens"]
    )
    train_then_evaluate(out, f"{name} ({steps} steps)", lambda: train_sft(settings), lambda run: run / "eval")


def _metrics(folder: Path) -> dict[str, dict]:
    return {m["key"]["eval_set"]: m for m in map(json.loads, map(Path.read_text, folder.rglob("metrics.json")))}


def _rate(metrics: dict, metric: str) -> dict:
    return metrics[metric] if metric in metrics else metrics["failure_modes"][metric]["rate"]


def compare(args: argparse.Namespace) -> None:
    out = Path(args.out)
    baseline = _metrics(out / "eval")
    rows = []
    for folder in sorted(p for p in out.glob("*/eval") if p.parent not in (out / "start", out / "eval")):
        run = folder.parent.name
        end = _metrics(folder)
        counters = read_counters(last_checkpoint(folder.parent))
        for name in SETS:
            for metric in METRICS:
                a, b = _rate(end[name], metric), _rate(baseline[name], metric)
                c = compare_rates(a, b)
                rows.append(
                    {
                        "run": run,
                        "set": name,
                        "metric": metric,
                        "gflops": counters["gflops"],
                        "start": f"{b['successes']}/{b['trials']}",
                        "end": f"{a['successes']}/{a['trials']}",
                        "change": 100 * c["difference"],
                        "low": 100 * c["low"],
                        "high": 100 * c["high"],
                        "p": c["p_value"],
                        "test": c["test"],
                    }
                )
                print(
                    f"{run:24} {name:4} {metric:20} {rows[-1]['start']:>8} -> {rows[-1]['end']:>8}  "
                    f"{rows[-1]['change']:+.1f} [{rows[-1]['low']:+.1f}, {rows[-1]['high']:+.1f}] {format_p_value(c['p_value'])}"
                )
    (out / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    first = steps.add_parser("start")
    first.add_argument("out")
    first.add_argument("--cards", type=int, default=3)
    first.add_argument("--target", type=int, default=12)
    first.add_argument("--compact", action="store_true")
    first.set_defaults(run=start)
    rl = steps.add_parser("ppo")
    rl.add_argument("out")
    rl.add_argument("name")
    rl.add_argument("settings", help="PPOSettings fields as JSON")
    rl.set_defaults(run=ppo)
    more = steps.add_parser("sft")
    more.add_argument("out")
    more.add_argument("name", help="the PPO run whose GFLOPs the SFT branch matches")
    more.set_defaults(run=sft)
    table = steps.add_parser("compare")
    table.add_argument("out")
    table.set_defaults(run=compare)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
