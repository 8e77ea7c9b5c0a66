"""The `sftrl` command.

    sftrl data gp [--root data] [--eval-size N] [--sft-text N] [--sft-image N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sftrl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate datasets and frozen evaluation sets")
    tasks = data.add_subparsers(dest="task", required=True)
    gp = tasks.add_parser("gp", help="GeneralPoints: eval sets (data/eval/), SFT data (data/generated/)")
    gp.add_argument("--root", default="data", help="data folder (default: data)")
    from .data import GPDataSizes

    for f in fields(GPDataSizes):
        gp.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default, help=f"(default: {f.default})")
    gp.add_argument("--json", action="store_true", help="print the summary as JSON")
    gp.set_defaults(run=_data_gp)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"sftrl: error: {error}", file=sys.stderr)
        return 2


def _data_gp(args: argparse.Namespace) -> int:
    from .data import GPDataSizes, generate_gp_data

    sizes = GPDataSizes(**{f.name: getattr(args, f.name) for f in fields(GPDataSizes)})
    for name, value in vars(args).items():
        if name in {f.name for f in fields(GPDataSizes)} and value < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    started = time.perf_counter()
    summary = generate_gp_data(args.root, sizes)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print("GeneralPoints data")
    print("  frozen evaluation sets (commit these):")
    for name, item in summary["eval"].items():
        print(f"    {name:<15} {item['records']:>5} deals  {item['bytes'] / 1e3:8.1f} kB  {item['path']}  ({item['description']})")
    print("  SFT datasets (TRL conversational format):")
    for name, item in summary["sft"].items():
        print(f"    {name:<18} {item['records']:>5} records {item['bytes'] / 1e6:7.2f} MB  {item['path']}")
    print("  sample GP-VL images:")
    for path in summary["samples"]:
        print(f"    {path}")
    print(f"  done in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
