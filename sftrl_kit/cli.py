"""The `sftrl` command.

sftrl data gp [--root data] [--eval-size N] [--sft-text N] [--sft-image N]
sftrl data virl [--root data] [--eval-routes N] [--visual-ood-routes N] ...
sftrl eval [--model default] [--env gp-l] [--sets gp-id gp-rule-ood] [--limit N] [--engine auto|hf|vllm] ...
sftrl sft [--config sft.yaml] [field=value ...]
sftrl ppo [--config ppo.yaml] [field=value ...]     (also under `accelerate launch -m`)
sftrl run <preset | notebook ...> [-p key value ...] [--resume RUN_FOLDER]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import fields


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"sftrl: error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The `sftrl` parser. Help strings go through %-formatting: write a literal % as %%."""
    parser = argparse.ArgumentParser(prog="sftrl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate datasets and frozen evaluation sets")
    tasks = data.add_subparsers(dest="task", required=True)
    from .data import GPDataSizes, VirlDataSizes

    for task, sizes, help_text in (
        ("gp", GPDataSizes, "GeneralPoints: eval sets (data/eval/), SFT data (data/generated/)"),
        ("virl", VirlDataSizes, "V-IRL: eval sets (data/eval/), SFT data and street views (data/generated/)"),
    ):
        sub = tasks.add_parser(task, help=help_text)
        sub.add_argument("--root", default="data", help="data folder (default: data)")
        for f in fields(sizes):
            sub.add_argument(
                f"--{f.name.replace('_', '-')}", type=int, default=f.default, help=f"(default: {f.default})"
            )
        sub.add_argument("--json", action="store_true", help="print the summary as JSON")
        sub.set_defaults(run=_data, sizes_class=sizes)

    evaluate = commands.add_parser("eval", help="evaluate a model on frozen eval sets (success with 95%% CIs)")
    evaluate.add_argument("--model", default="default", help="'default', 'tiny', 'tiny-vl' or a checkpoint folder")
    evaluate.add_argument("--env", default="gp-l", help="environment id (gp-l, gp-vl)")
    evaluate.add_argument(
        "--sets", nargs="+", default=["gp-id", "gp-rule-ood"], help="eval set names under data/eval/ or JSONL paths"
    )
    evaluate.add_argument("--limit", type=int, default=None, help="first N tasks of each set")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--max-new-tokens", type=int, default=256)
    evaluate.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    evaluate.add_argument("--top-p", type=float, default=1.0)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--max-attempts", type=int, default=None, help="override the verification budget")
    evaluate.add_argument(
        "--engine",
        choices=("auto", "hf", "vllm"),
        default="auto",
        help="generation engine: vllm, hf (transformers generate), auto (vLLM where installed; default)",
    )
    evaluate.add_argument("--out", default=None, help="run folder (default: papermill_runs/<time>-eval)")
    evaluate.set_defaults(run=_eval)

    for name, help_text in (
        ("sft", "supervised fine-tuning on TRL (checkpoint series with FLOPs)"),
        ("ppo", "multi-turn PPO against the verifier (runs under accelerate launch)"),
    ):
        train = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            add_help=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        train.add_argument(
            "-h",
            "--help",
            action=_SettingsHelp,
            method=name,
            help="show this help message and exit (with every settings field)",
        )
        train.add_argument("--config", default=None, help="YAML of settings (dataclass fields)")
        train.add_argument("overrides", nargs="*", help="field=value pairs (value read as YAML) applied after the YAML")
        train.set_defaults(run=_train, method=name)

    run = commands.add_parser("run", help="execute notebooks in order with papermill into one run folder")
    run.add_argument("notebooks", nargs="*", help="presets (quickstart, smoke, study) and/or notebooks (03, 03_sft)")
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a notebook parameter (VALUE read as YAML: 3, 1e-5, true, [a, b]), checked against "
        "the notebooks' parameters cells before any runs; repeatable",
    )
    run.add_argument(
        "--resume",
        default=None,
        metavar="RUN_FOLDER",
        help="continue a batch from the notebook that failed (or was interrupted)",
    )
    run.add_argument("--out", default=None, help="run folder (default: papermill_runs/<time>-<names>)")
    run.set_defaults(run=_run)
    return parser


def _data(args: argparse.Namespace) -> int:
    from .data import generate_gp_data, generate_virl_data

    names = [f.name for f in fields(args.sizes_class)]
    for name in names:
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    sizes = args.sizes_class(**{name: getattr(args, name) for name in names})
    generate = generate_gp_data if args.task == "gp" else generate_virl_data
    started = time.perf_counter()
    summary = generate(args.root, sizes)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print("GeneralPoints data" if args.task == "gp" else "V-IRL data")
    print("  frozen evaluation sets (commit these):")
    for name, item in summary["eval"].items():
        print(
            f"    {name:<16} {item['records']:>5} tasks  {item['bytes'] / 1e3:8.1f} kB  {item['path']}  ({item['description']})"
        )
    print("  SFT datasets (TRL conversational format):")
    for name, item in summary["sft"].items():
        print(f"    {name:<19} {item['records']:>5} records {item['bytes'] / 1e6:7.2f} MB  {item['path']}")
    print("  sample images:")
    for path in summary["samples"]:
        print(f"    {path}")
    print(f"  done in {summary['seconds']} s")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data import eval_set_path
    from .engines import resolve_engine
    from .evaluation import compare_rates, evaluate_model
    from .models import SamplingConfig, is_vision_model
    from .run_folder import new_run_dir

    sets = {f"{args.env}-{name}": eval_set_path(name) for name in args.sets}
    sampling = SamplingConfig(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    overrides = {} if args.max_attempts is None else {"max_attempts": args.max_attempts}
    run_dir = Path(args.out) if args.out else new_run_dir("eval")
    engine = resolve_engine(args.engine, is_vision_model(args.model))
    print(f"model {args.model} on {args.env}; sampling {sampling}; engine {engine}; run folder {run_dir}")
    results = evaluate_model(
        args.model,
        run_dir,
        sets,
        args.env,
        sampling,
        limit=args.limit,
        batch_size=args.batch_size,
        engine=engine,
        **overrides,
    )
    print(f"{'set':<15}{'n':>5}  {'success [95% CI]':<22}{'first attempt':<22}{'per-step accuracy':<22}{'attempts':>8}")
    for name, m in results.items():
        print(
            f"{name:<15}{m['episodes']:>5}  {_rate(m['success_rate']):<22}{_rate(m['first_attempt_success']):<22}"
            f"{_rate(m['per_step_accuracy']):<22}{m['mean_attempts']:>8.2f}"
        )
    names = list(results)
    for other in names[1:]:
        c = compare_rates(results[names[0]]["success_rate"], results[other]["success_rate"])
        print(
            f"success {names[0]} - {other}: {100 * c['difference']:+.1f} points "
            f"[{100 * c['low']:+.1f}, {100 * c['high']:+.1f}], p = {c['p_value']:.3g} ({c['test']})"
        )
    for name, m in results.items():
        print(f"{name}: {m['folder']}")
    return 0


class _SettingsHelp(argparse.Action):
    """--help of `sftrl sft` / `sftrl ppo`: the usage, then every settings field with its
    default and meaning, generated from the settings dataclass (imported only when asked:
    the trainers import torch)."""

    def __init__(self, option_strings, method: str, dest=argparse.SUPPRESS, help=None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)
        self.method = method

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from .config import settings_help

        settings_class = _trainer(self.method)[0]
        parser.epilog = (
            f"{settings_class.__name__} fields, as field=value overrides or YAML keys "
            f"(field = default  (type), then its meaning):\n{settings_help(settings_class)}"
        )
        parser.print_help()
        parser.exit()


def _trainer(method: str):
    """(settings dataclass, train function) of `sftrl sft` or `sftrl ppo`."""
    if method == "sft":
        from .train.sft import SFTSettings, train_sft

        return SFTSettings, train_sft
    from .train.ppo import PPOSettings, train_ppo

    return PPOSettings, train_ppo


def _train(args: argparse.Namespace) -> int:
    import yaml

    from .config import ConfigError, from_dict

    settings_class, train = _trainer(args.method)
    data = {}
    if args.config:
        from pathlib import Path

        if not Path(args.config).is_file():
            raise FileNotFoundError(f"config file not found: {args.config}")
        data = yaml.safe_load(Path(args.config).read_text()) or {}
    for pair in args.overrides:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"override {pair!r} is not field=value")
        data[key] = yaml.safe_load(value)
    settings = from_dict(settings_class, data, where=args.config or settings_class.__name__)
    run_dir = train(settings)
    print(f"{args.method} finished: {run_dir}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import yaml

    from .batch import NotebookFailure, run_batch, run_summary

    if not args.notebooks and not args.resume:
        raise ValueError("name a preset (quickstart, smoke, study) or notebooks, or give --resume RUN_FOLDER")
    parameters = {key: _yaml_number(yaml.safe_load(value)) for key, value in args.parameter}
    try:
        folder = run_batch(args.notebooks, parameters, run_dir=args.out, resume=args.resume)
    except NotebookFailure as failure:
        print(f"sftrl run: {failure}", file=sys.stderr)
        print(f"  fix it, then: sftrl run --resume {failure.output.parent}", file=sys.stderr)
        return 1
    print(f"sftrl run: done\n{run_summary(folder)}")
    return 0


def _yaml_number(value):
    """YAML 1.1 reads 1e-5 as a string; a notebook parameter written as a number is one
    (but not 'nan' or 'inf', which float() would also take)."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value):
        return float(value)
    return value


def _rate(entry) -> str:
    return f"{100 * entry['value']:5.1f}% [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"


if __name__ == "__main__":
    sys.exit(main())
