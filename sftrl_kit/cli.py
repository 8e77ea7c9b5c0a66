"""The `sftrl` command: the kit's data, evaluation, training and notebook batches.

sftrl run <preset | notebook ...> [-p key value ...] [--out DIR] [--resume RUN_FOLDER]
sftrl lab [--out DIR]                 JupyterLab, every notebook sharing one run folder
sftrl eval [--model default] [--env gp-l] [--sets ...] [--limit N] [--engine auto|hf|vllm] [--out DIR]
sftrl sft [--config sft.yaml] [field=value ...] [--out DIR]
sftrl ppo [--config ppo.yaml] [field=value ...] [--out DIR]   (also under `accelerate launch -m`)
sftrl data gp|virl [--out DIR] [--eval-size N] ...
sftrl plan --model FOLDER --method ppo|sft --gpus N --gpu-memory-gib G [--lora] [--zero 0|2] ...

--out is where a command writes, in every subcommand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import fields

RATE_COLUMNS = ("success_rate", "first_attempt_success", "per_step_accuracy")  # sftrl eval's table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"sftrl: error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The `sftrl` parser. Help strings go through %-formatting: write a literal % as %%."""
    parser = argparse.ArgumentParser(
        prog="sftrl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate datasets and frozen evaluation sets")
    tasks = data.add_subparsers(dest="task", required=True)
    from .config import field_docs
    from .data import DATA_ROOT, GPDataSizes, VirlDataSizes
    from .envs import registered
    from .models import BUILT_IN

    for task, sizes, help_text in (
        ("gp", GPDataSizes, "GeneralPoints: eval sets (data/eval/), SFT data (data/generated/)"),
        ("virl", VirlDataSizes, "V-IRL: eval sets (data/eval/), SFT data and street views (data/generated/)"),
    ):
        sub = tasks.add_parser(task, help=help_text)
        sub.add_argument(
            "--out",
            default=str(DATA_ROOT),
            help="data folder (default: the kit's data/; its committed eval sets are never overwritten)",
        )
        for f in fields(sizes):
            sub.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=int,
                default=f.default,
                help=f"{field_docs(sizes)[f.name]} (default: {f.default})",
            )
        sub.add_argument("--json", action="store_true", help="print the summary as JSON")
        sub.set_defaults(run=_data, sizes_class=sizes)

    evaluate = commands.add_parser("eval", help="evaluate a model on frozen eval sets (success with 95%% CIs)")
    evaluate.add_argument(
        "--model", default="default", help=f"a built-in model ({', '.join(BUILT_IN)}) or a model folder (a checkpoint)"
    )
    evaluate.add_argument("--env", default="gp-l", choices=registered(), help="environment id (default: gp-l)")
    evaluate.add_argument(
        "--sets",
        nargs="+",
        default=None,
        help="eval set names (the kit's data/eval/) or JSONL paths (default: the environment's ID and rule-OOD sets)",
    )
    evaluate.add_argument("--limit", type=int, default=None, help="first N tasks of each set (default: all)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="conversations per generate call (default: 16)")
    evaluate.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="longest answer (default: the study's for the task: GP 64, V-IRL 96)",
    )
    evaluate.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    evaluate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1, all)")
    evaluate.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    evaluate.add_argument(
        "--max-attempts", type=int, default=None, help="verification budget (default: the study's evaluation budget, 2)"
    )
    evaluate.add_argument(
        "--engine",
        choices=("auto", "hf", "vllm"),
        default="auto",
        help="generation engine: vllm, hf (transformers generate), auto (vLLM where installed; default)",
    )
    evaluate.add_argument("--out", default=None, help="run folder (default: a new papermill_runs/<time>-eval)")
    evaluate.set_defaults(run=_eval)

    lab = commands.add_parser("lab", help="JupyterLab on the notebooks, all sharing one run folder")
    lab.add_argument("--out", default=None, help="the run folder (default: a new papermill_runs/<time>-lab)")
    lab.set_defaults(run=_lab)

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
        train.add_argument(
            "--out",
            default=None,
            help="the run folder (run_dir); again the same folder resumes or continues its run "
            f"(default: a new papermill_runs/<time>-{name})",
        )
        train.add_argument("overrides", nargs="*", help="field=value pairs (value read as YAML) applied after the YAML")
        train.set_defaults(run=_train, method=name)

    _add_plan_parser(commands)
    pool = commands.add_parser(
        "pool",
        help="the quickstart's verdict pooled over run folders of several seeds (one p-value per claim)",
        description="Pool the verdict of quickstart studies that differ only in their seed: each row gives every "
        "seed's difference and their mean with a 95% interval and p-value (tasks as clusters across seeds). "
        "Give the same -p parameters the runs had, but the seed.",
    )
    pool.add_argument("run_folders", nargs="+", help="run folders of `sftrl run quickstart -p seed S`")
    pool.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="as `sftrl run`"
    )
    pool.add_argument("--out", default=None, help="also write the table to OUT/tables/quickstart-pooled.csv")
    pool.set_defaults(run=_pool)

    run = commands.add_parser(
        "run",
        help="execute notebooks in order with papermill into one run folder",
        description="execute notebooks in order with papermill into one run folder",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "-h", "--help", action=_SettingsHelp, method="run", help="show this help message and exit (with every size)"
    )
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


def _add_plan_parser(commands) -> None:
    """`sftrl plan`: sizes left unset are the trainers' defaults (PPOSettings, SFTSettings: memory_plan.command)."""
    plan = commands.add_parser(
        "plan",
        help="per-GPU memory of a PPO or SFT run, from the model's config alone (exit 1 when it does not fit)",
        description="Per-GPU memory of a PPO or SFT run, planned from the model's config alone (no weights load): "
        "the table, whether it fits, and what would make it fit. Exit status 0 when it fits, 1 when it does not.",
    )
    plan.add_argument(
        "--model",
        default="default",
        help="a model folder with config.json, a built-in model, or a shape from configs/shapes/ "
        "(qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b, llama-3.2-11b-vision)",
    )
    plan.add_argument("--method", choices=("ppo", "sft"), default="ppo")
    plan.add_argument("--gpus", type=int, default=1, help="processes, one GPU each (default: 1)")
    plan.add_argument("--gpu-memory-gib", type=float, required=True, help="memory of one GPU, GiB (e.g. 80)")
    plan.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="what the run trains on")
    plan.add_argument("--lora", action="store_true", help="LoRA adapters (r=16 on every linear layer)")
    plan.add_argument("--zero", type=int, choices=(0, 2), default=0, help="0: DDP; 2: DeepSpeed ZeRO-2 (PPO only)")
    plan.add_argument(
        "--mixed-precision", choices=("auto", "fp32", "bf16"), default="auto", help="as the trainers' setting"
    )
    plan.add_argument("--gradient-checkpointing", action="store_true")
    plan.add_argument("--engine", choices=("auto", "vllm", "hf"), default="auto", help="auto: vllm for text models")
    plan.add_argument(
        "--sleep-mode", choices=("auto", "on", "off"), default="auto", help="vLLM sleep mode (auto: where needed)"
    )
    plan.add_argument("--kl-coef", type=float, default=None, help="KL penalty weight (a reference copy when > 0)")
    plan.add_argument("--advantage", choices=("gae", "grpo", "rloo"), default=None, help="gae has a value head")
    plan.add_argument("--env", default=None, help="the PPO environment (default: gp-l, or gp-vl for a VLM)")
    plan.add_argument("--max-attempts", type=int, default=None, help="verification budget (default: the env's)")
    plan.add_argument("--episodes", type=int, default=None, help="PPO episodes_per_update")
    plan.add_argument("--rollout-batch-size", type=int, default=None, help="PPO conversations per HF generate")
    plan.add_argument("--minibatch-size", type=int, default=None, help="PPO turns per optimizer step")
    plan.add_argument("--micro-batch-size", type=int, default=None, help="PPO turns per forward pass")
    plan.add_argument("--max-new-tokens", type=int, default=None, help="PPO's longest response")
    plan.add_argument(
        "--prompt-tokens", type=int, default=None, help="the longest prompt (default: measured on --env's deals)"
    )
    plan.add_argument("--batch-size", type=int, default=None, help="SFT examples per device per forward pass")
    plan.add_argument("--max-length", type=int, default=None, help="SFT's longest example in tokens")
    plan.add_argument("--gradient-accumulation-steps", type=int, default=None, help="SFT forward passes per step")
    plan.set_defaults(run=_plan)


def _plan(args: argparse.Namespace) -> int:
    from .memory_plan import memory_plan
    from .memory_plan.command import plan_request  # apart from the package's face, which the trainers import

    plan = memory_plan(plan_request(**{k: v for k, v in vars(args).items() if k not in ("command", "run")}))
    print(plan.format())
    return 0 if plan.fits else 1


def _data(args: argparse.Namespace) -> int:
    from .data import generate_gp_data, generate_virl_data

    names = [f.name for f in fields(args.sizes_class)]
    for name in names:
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    sizes = args.sizes_class(**{name: getattr(args, name) for name in names})
    generate = generate_gp_data if args.task == "gp" else generate_virl_data
    started = time.perf_counter()
    summary = generate(args.out, sizes)
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
    from .evaluation import evaluate_model
    from .models import SamplingConfig
    from .run_folder import new_run_dir
    from .stats import compare_rates, format_rate
    from .study import StudySettings
    from .tasks import STUDY_TASKS

    study = StudySettings(task=args.env) if args.env in STUDY_TASKS else None  # the study's defaults
    names = args.sets or (list(STUDY_TASKS[args.env].eval_sets) if study else None)
    if not names:
        raise ValueError(f"{args.env} is no study task, so it has no default sets: name them with --sets")
    sets = {Path(name).stem: eval_set_path(name) for name in names}  # keyed as the study keys them
    sampling = SamplingConfig(
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens or (study.new_tokens if study else 64),
        seed=args.seed,
    )
    budget = args.max_attempts or (study.eval_max_attempts if study else None)
    overrides = {} if budget is None else {"max_attempts": budget}
    run_dir = Path(args.out) if args.out else new_run_dir("eval")
    print(f"model {args.model} on {args.env}; sampling {sampling}; engine {args.engine}; run folder {run_dir}")
    results = evaluate_model(
        args.model,
        run_dir,
        sets,
        args.env,
        sampling,
        limit=args.limit,
        batch_size=args.batch_size,
        engine=args.engine,
        **overrides,
    )
    print("generated by", ", ".join(sorted({m["key"]["engine"] for m in results.values()})))
    print(f"{'set':<15}{'n':>5}  {'success [95% CI]':<22}{'first attempt':<22}{'per-step accuracy':<22}{'attempts':>8}")
    for name, m in results.items():
        rates = "".join(f"{format_rate(m[r], counts=False):<22}" for r in RATE_COLUMNS)
        print(f"{name:<15}{m['episodes']:>5}  {rates}{m['mean_attempts']:>8.2f}")
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
    """--help of `sftrl sft` / `sftrl ppo` / `sftrl run`: the usage, then every settings
    field with its default and meaning, generated from the settings dataclasses (imported
    only when asked: the trainers and the study import torch)."""

    def __init__(self, option_strings, method: str, dest=argparse.SUPPRESS, help=None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)
        self.method = method

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from .config import settings_help

        if self.method == "run":
            from .presets import overrides_help

            parser.epilog = (
                "Sizes a batch can change, as -p KEY VALUE where a notebook declares KEY, or as -p overrides "
                "'{field: value, ...}' (field = the quickstart's value  (type), then its meaning):\n" + overrides_help()
            )
        else:
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

    from .config import ConfigError, from_dict, read_yaml

    settings_class, train = _trainer(args.method)
    data = read_yaml(args.config) if args.config else {}
    for pair in args.overrides:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"override {pair!r} is not field=value")
        data[key] = yaml.safe_load(value)
    if args.out is not None:
        if "run_dir" in data:
            raise ConfigError(f"the run folder is given twice: --out {args.out} and run_dir={data['run_dir']}")
        data["run_dir"] = args.out
    elif "run_dir" not in data:
        import os

        from .run_folder import new_run_dir

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would make a folder of its own
            raise ConfigError("several processes train one run: give it one folder with --out (or run_dir=)")
        data["run_dir"] = str(new_run_dir(args.method))
    settings = from_dict(settings_class, data, where=args.config or settings_class.__name__)
    print(f"{args.method} run folder: {settings.run_dir}", flush=True)
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


def _pool(args: argparse.Namespace) -> int:
    import yaml

    from .presets import choose
    from .stats import format_p_value
    from .study import pool_seeds
    from .tables import write_table

    parameters = {key: _yaml_number(yaml.safe_load(value)) for key, value in args.parameter}
    if "seed" in parameters:
        raise ValueError("the seeds come from the run folders; leave -p seed out")
    overrides = parameters.pop("overrides", None) or {}
    settings = choose("quickstart", {**overrides, **parameters}).study
    rows = pool_seeds(settings, args.run_folders)
    for row in rows:
        print(
            f"{row['comparison']:<22} {row['eval_set']:<16} {row['metric']:<22} seeds {row['per seed (points)']:<24} "
            f"pooled {row['pooled (points)']}, {format_p_value(row['p'])}"
        )
    if args.out:
        print(f"written: {write_table(rows, args.out, 'quickstart-pooled')}")
    return 0


def _lab(args: argparse.Namespace) -> int:
    """JupyterLab on notebooks/, with $SFTRL_RUN_DIR set: every notebook opened in it
    reads and writes that one run folder (notebook.notebook_start)."""
    import os
    from pathlib import Path

    from .batch import NOTEBOOKS
    from .notebook import RUN_DIR_VARIABLE
    from .run_folder import new_run_dir

    folder = Path(args.out) if args.out else new_run_dir("lab")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"sftrl lab: every notebook shares the run folder {folder.resolve()}; open 01_environments first", flush=True)
    command = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={NOTEBOOKS}"]
    os.execvpe(command[0], command, {**os.environ, RUN_DIR_VARIABLE: str(folder.resolve())})
    return 0  # not reached: the process is JupyterLab's now


def _yaml_number(value):
    """YAML 1.1 reads 1e-5 as a string; a notebook parameter written as a number is one
    (but not 'nan' or 'inf', which float() would also take)."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value):
        return float(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
