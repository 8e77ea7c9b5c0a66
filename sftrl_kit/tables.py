"""Rows from run folders, and the comparisons between them: what the study's tables hold
and its figures draw (plots.py draws; it computes nothing of its own).

A run folder holds checkpoints/<name>/checkpoint.json (step, tokens, GFLOPs) and, after
evaluation, checkpoints/<name>/eval/<set>/<key digest>/metrics.json, one per set and
settings (the layout: run_folder).

    checkpoint_rows    one row per (run, checkpoint, evaluation): counters, settings
                       (evaluation.KEY_FIELDS as columns) and rates
    end_against_start  a run's first and last checkpoint on one set, and the last against
                       the first (stats.compare_rates): "end against start", computed here only
    change_from_start  per run, end_against_start in points (plots.plot_change draws it)
    what_moved         per run and set, end against start; per set, the first run's end
                       against each other run's; one formatted row each
    verdict_rows       the study's verdict: what_moved on the headline sets, the memorisation
                       signatures, the fake-rule control and recognition (image tasks)
    pooled_verdict     verdict_rows over several seeds: each seed's difference and their
                       pooled difference, interval and p-value
    drift_rows         study.drift's forward KL per checkpoint as table rows
    write_table        rows -> run_dir/tables/<name>.csv (and .json, exact values)

Every figure and table names runs the same way (`run_label`: "RL (PPO)", "SFT"), and
refuses rows whose settings differ (a ValueError names them): pick the evaluations with
`keys=settings.eval_keys()`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from . import run_folder
from .evaluation import (
    FIRST_ANSWER_METRIC,
    KEY_FIELDS,
    RATES,
    evaluation_row,
    load_evaluations,
    require_same_settings,
    select_evaluation,
)
from .files import write_atomically
from .run_folder import list_checkpoints, read_counters, read_evaluations
from .stats import compare_rates, format_rate, pooled_paired_difference

METHOD_LABELS = {"ppo": "RL (PPO)", "sft": "SFT"}

# The fake-rule control's rows: the first answer's rate (the clean number: later tries are
# told the verifier's rule) and the share of answers that followed the prompt.
FAKE_RULE_METRICS = (FIRST_ANSWER_METRIC, "other_rule_used")


def run_label(name: str, method: str | None = None) -> str:
    """How figures name a run: "RL (PPO)" or "SFT" for a folder named after its method
    (the study's branches), else the method's label and the folder ("RL (PPO), budget-3")."""
    if name in METHOD_LABELS:
        return METHOD_LABELS[name]
    return f"{METHOD_LABELS[method]}, {name}" if method in METHOD_LABELS else name


# --- rows from run folders ------------------------------------------------------------


def checkpoint_rows(
    run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None, keys: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per (run, checkpoint, evaluation) with counters, settings and rates.

    `run` is labels[i] or the folder's name; `label`, what figures show, is labels[i] or
    run_label(folder name, method). `keys` ({set: key or some of its fields}, e.g.
    settings.eval_keys()) keeps the evaluations of those sets with those settings;
    without it, every evaluation. `<metric>_rate` holds the full rate (with its per-task
    counts, for compare_rates); the failure modes' rates (evaluation.failure_modes:
    other_rule_used, other_rule_numbers, ...) are columns too, so that plot_change draws
    a memorisation signature as it draws success.
    """
    wanted = list(keys.items()) if keys is not None else [(None, None)]
    rows = []
    for index, run_dir in enumerate(run_dirs):
        run = labels[index] if labels else Path(run_dir).name
        for checkpoint in list_checkpoints(run_dir):
            counters = read_counters(checkpoint)
            label = labels[index] if labels else run_label(run, counters.get("method"))
            for eval_set, where in wanted:
                for metrics in load_evaluations(checkpoint, eval_set, where):
                    row = evaluation_row(run, checkpoint, counters, metrics)
                    rates = {metric: metrics.get(metric) for metric in RATES}
                    modes = metrics.get("failure_modes", {})
                    rates |= {mode: entry["rate"] for mode, entry in modes.items() if isinstance(entry, dict)}
                    values = {mode: rate["value"] for mode, rate in rates.items() if mode not in RATES and rate}
                    rows.append({**row, **values, "label": label, **{f"{m}_rate": rate for m, rate in rates.items()}})
    return rows


def require_one_setting(rows: Iterable[dict[str, Any]], what: str) -> None:
    """A ValueError naming the differing settings if `rows` come from evaluations with
    different settings (evaluation.KEY_FIELDS)."""
    require_same_settings([{f: row.get(f) for f in KEY_FIELDS} for row in rows], what)


def runs_in(rows: Iterable[dict[str, Any]]) -> dict[str, str]:
    """{run: its label}, in the order the rows bring them."""
    return {r["run"]: r.get("label", r["run"]) for r in rows}


def run_series(rows: Sequence[dict[str, Any]], run: str, eval_set: str, metric: str, x: str = "gflops") -> list[dict]:
    """A run's rows on one set that hold `metric`, in the order of `x`: a figure's points."""
    return sorted(
        (r for r in rows if r["run"] == run and r["eval_set"] == eval_set and r[metric] is not None),
        key=lambda r: r[x],
    )


# --- end against start ----------------------------------------------------------------


class EndAgainstStart(NamedTuple):
    """A run's first and last checkpoint on one set (their rows) and stats.compare_rates
    of the end's rate against the start's (difference end - start)."""

    start: dict[str, Any]
    end: dict[str, Any]
    comparison: dict[str, Any]


def end_against_start(
    rows: Sequence[dict[str, Any]], run: str, eval_set: str, metric: str = "success_rate"
) -> EndAgainstStart | None:
    """A run's end against its start on one set: of the run's rows on eval_set (one
    evaluation per checkpoint: rows at several settings raise a ValueError naming them),
    the first and the last checkpoint in step order, and compare_rates of the last's
    `metric` against the first's. None when fewer than two checkpoints were evaluated
    there. Both ends must hold the rate: a KeyError names the checkpoint that lacks it."""
    series = sorted((r for r in rows if r["run"] == run and r["eval_set"] == eval_set), key=lambda r: r["step"])
    require_one_setting(series, f"{run}'s {metric} on {eval_set}")
    if len(series) < 2:
        return None
    start, end = series[0], series[-1]
    return EndAgainstStart(start, end, compare_rates(_rate(end, metric), _rate(start, metric)))


def _rate(row: dict[str, Any], metric: str) -> dict[str, Any]:
    """A row's full rate `metric` (a rate of evaluation's metrics or a failure mode)."""
    rate = row.get(f"{metric}_rate")
    if rate is None:
        raise KeyError(f"{row['run']} {row['checkpoint']}: its evaluation on {row['eval_set']} has no rate {metric!r}")
    return rate


def change_from_start(
    rows: Sequence[dict[str, Any]], eval_set: str, metric: str = "success_rate"
) -> list[dict[str, Any]]:
    """Per run: last checkpoint minus first on one eval set (end_against_start), in
    points, with the 95% interval and p-value of stats.compare_rates, the test it used,
    and the episodes of each end."""
    require_one_setting([r for r in rows if r["eval_set"] == eval_set], f"the change in {metric} on {eval_set}")
    out = []
    for run, label in runs_in(rows).items():
        moved = end_against_start(rows, run, eval_set, metric)
        if moved is None:
            continue
        first, last, interval = moved
        out.append(
            {
                "run": run,
                "label": label,
                "start": 100 * first[metric],
                "end": 100 * last[metric],
                "change": 100 * (last[metric] - first[metric]),
                "low": 100 * interval["low"],
                "high": 100 * interval["high"],
                "p_value": interval["p_value"],
                "test": interval["test"],
                "episodes": (first["episodes"], last["episodes"]),
            }
        )
    return out


# --- the tables of what moved -----------------------------------------------------------


class Compared(NamedTuple):
    """One comparison of what_moved before its test: checkpoint rows a and b of one set."""

    label: str  # "ppo: end - start", "ppo end - sft end"
    eval_set: str
    metric: str
    a: dict[str, Any]
    b: dict[str, Any]


def what_moved(
    runs: Sequence[Path],
    eval_sets: Sequence[str],
    metric: str = "success_rate",
    keys: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Did anything move? `metric`: a rate of evaluation's metrics (success_rate,
    per_step_accuracy, ...) or a failure mode (other_rule_used: the share of answers
    that followed the rule not in force; on rule-OOD sets, the trained rule). Rows of A - B with A's and B's rates and
    95% intervals, the difference with its 95% interval, a p-value, and the test used
    (stats.compare_rates: McNemar's for checkpoints on the same tasks, cluster-robust
    tests for rates over answers): per run and set, its last checkpoint (A) against its
    first (B) (end_against_start: the first and last checkpoint evaluated on that set);
    then per set, the first run's last checkpoint (A) against each other run's (B).

    `keys` ({set: key or some of its fields}, e.g. settings.eval_keys()) picks the
    evaluations; without it, a run's evaluations on a set must share their settings (one
    per checkpoint). Rows whose evaluations differ in any setting raise a ValueError that
    names them."""
    return _tested(compared(runs, eval_sets, metric, keys))


def compared(
    runs: Sequence[Path],
    eval_sets: Sequence[str],
    metric: str = "success_rate",
    keys: dict[str, dict[str, Any]] | None = None,
) -> list[Compared]:
    """what_moved's comparisons, in its order, before any test: each run's end against
    its start per set, then the first run's end against each other run's."""
    wanted = {name: (keys or {}).get(name) for name in eval_sets}
    pairs, ends = [], {}
    for index, run in enumerate(map(Path, runs)):
        evaluated = checkpoint_rows([run], keys=wanted)
        checkpoints = [c for c in list_checkpoints(run) if read_evaluations(c)]  # evaluated on any set
        for name in eval_sets:
            moved = end_against_start(evaluated, run.name, name, metric)
            _require_both_ends(checkpoints, name, wanted[name], moved)
            if moved is not None:
                ends[(index, name)] = moved.end
                pairs.append(Compared(f"{run.name}: end - start", name, metric, moved.end, moved.start))
    names = [Path(r).name for r in runs]
    for name in eval_sets:
        for index, other in enumerate(names[1:], start=1):
            if (0, name) in ends and (index, name) in ends:
                label = f"{names[0]} end - {other} end"
                pairs.append(Compared(label, name, metric, ends[(0, name)], ends[(index, name)]))
    return pairs


def _tested(pairs: Sequence[Compared]) -> list[dict[str, Any]]:
    """One formatted row per comparison, with compare_rates' interval, p-value and test."""
    rows = []
    for pair in pairs:
        require_one_setting([pair.a, pair.b], f"{pair.label} on {pair.eval_set}")
        tested = compare_rates(_rate(pair.a, pair.metric), _rate(pair.b, pair.metric))
        rows.append(_comparison(pair.label, pair.eval_set, pair.metric, pair.a, pair.b, tested))
    require_one_setting(rows, "what_moved")
    return rows


def _require_both_ends(
    checkpoints: list[Path], eval_set: str, key: dict[str, Any] | None, moved: EndAgainstStart | None
) -> None:
    """A run evaluated at two or more `checkpoints` must hold this set's evaluation (at
    these settings) at its first and its last: a table never compares other checkpoints,
    nor leaves a row out, because one evaluation is missing (the error names what is there)."""
    if len(checkpoints) < 2:
        return
    first, last = checkpoints[0], checkpoints[-1]
    if moved is not None and (moved.start["checkpoint"], moved.end["checkpoint"]) == (first.name, last.name):
        return
    for checkpoint in (first, last):
        select_evaluation(checkpoint, eval_set, key)  # raises, naming the evaluations the folder holds
    raise ValueError(
        f"{first.parent.parent}: its first and last evaluated checkpoints hold no comparable {eval_set} evaluations"
    )


def _comparison(
    label: str, eval_set: str, metric: str, a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]
) -> dict[str, Any]:
    """One row of what_moved: checkpoint rows a and b, and c, compare_rates of a against b."""
    return {
        "comparison": label,
        "eval_set": eval_set,
        "metric": metric,
        "A": format_rate(_rate(a, metric)),
        "B": format_rate(_rate(b, metric)),
        "A - B (points)": f"{100 * c['difference']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]",
        "p": c["p_value"],  # exact; stats.format_p_value writes it for people
        "significant": c["significant"],
        "test": c["test"],
        "GFLOPs A": round(a["gflops"], 1),
        "GFLOPs B": round(b["gflops"], 1),
        **{field: a[field] for field in KEY_FIELDS if field in a},  # the key's settings (evaluation.key_columns)
    }


def verdict_rows(settings: Any, runs: Sequence[Path], keys: dict[str, dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The study's verdict, what_moved's rows in this order: the task's headline metric on
    the headline sets (ID, rule OOD, and visual OOD for the image tasks); each memorisation
    signature on the rule-OOD set; the validity rate (evaluation.failure_modes' "valid":
    well-formed answers under the rule in force) on the headline sets; with fake_rule, the fake-rule set's FAKE_RULE_METRICS
    (the first answer's rate, then other_rule_used); for the image tasks,
    recognition_accuracy on the headline sets.

    `settings`: a study.StudySettings (its task_info, headline_sets and fake_rule are
    read); `keys`: the evaluations to use (settings.eval_keys())."""
    return _tested(verdict_comparisons(settings, runs, keys))


def verdict_comparisons(settings: Any, runs: Sequence[Path], keys: dict[str, dict[str, Any]] | None) -> list[Compared]:
    """verdict_rows' comparisons, in its order, before any test."""
    task = settings.task_info
    pairs = compared(runs, settings.headline_sets, metric=task.metric, keys=keys)
    for signature in task.signatures:  # answers that followed the trained rule
        pairs += compared(runs, [task.rule_ood_set], metric=signature, keys=keys)
    pairs += compared(runs, settings.headline_sets, metric="valid", keys=keys)  # following the rule, right or not
    if settings.fake_rule:  # the prompt states the new rule, the verifier scores the trained one
        for metric in FAKE_RULE_METRICS:
            pairs += compared(runs, [task.fake_rule_set], metric=metric, keys=keys)
    if task.vision:  # did the model read the cards or signs better, or worse?
        pairs += compared(runs, settings.headline_sets, metric="recognition_accuracy", keys=keys)
    return pairs


def pooled_verdict(
    settings: Any,
    runs_by_seed: Mapping[int, Sequence[Path]],
    keys_by_seed: Mapping[int, dict[str, dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """The verdict over several seeds: one row per comparison of verdict_rows, with each
    seed's difference and their pooled difference, 95% interval and p-value
    (stats.pooled_paired_difference: the mean of the seeds' paired differences, the
    frozen tasks as clusters across seeds).

    settings: the study's (a study.StudySettings; its seed is replaced by each seed's);
    runs_by_seed: {seed: the runs verdict_rows compares, e.g. [ppo_run, sft_run]};
    keys_by_seed: {seed: the evaluations to use}; default, each seed's eval_keys(). Every
    seed must make the same comparisons at the same evaluation settings but the seed."""
    if not runs_by_seed:
        raise ValueError("no seeds to pool")
    per_seed = []
    for seed, runs in runs_by_seed.items():
        seeded = replace(settings, seed=seed)
        keys = keys_by_seed[seed] if keys_by_seed is not None else seeded.eval_keys()
        per_seed.append(verdict_comparisons(seeded, runs, keys))
    names = [[(c.label, c.eval_set, c.metric) for c in seed] for seed in per_seed]
    if any(n != names[0] for n in names):
        raise ValueError("the seeds' verdicts make different comparisons; pool runs of one study design")
    rows = []
    for comparisons in zip(*per_seed):
        first = comparisons[0]
        ends = [row for c in comparisons for row in (c.a, c.b)]
        require_same_settings(
            [{f: row.get(f) for f in KEY_FIELDS} for row in ends], f"pooling {first.label}", ignore=("eval_set", "seed")
        )
        pooled = pooled_paired_difference([(_rate(c.a, c.metric), _rate(c.b, c.metric)) for c in comparisons])
        rows.append(
            {
                "comparison": first.label,
                "eval_set": first.eval_set,
                "metric": first.metric,
                "seeds": len(comparisons),
                "per seed (points)": ", ".join(f"{100 * d:+.1f}" for d in pooled["per_seed"]),
                "pooled (points)": f"{100 * pooled['difference']:+.1f} "
                f"[{100 * pooled['low']:+.1f}, {100 * pooled['high']:+.1f}]",
                "p": pooled["p_value"],
                "significant": pooled["significant"],
                "test": pooled["test"],
            }
        )
    return rows


def drift_rows(drift: Mapping[str, Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """study.drift's {run: entries} as table rows: run, checkpoint, step, GFLOPs, the
    forward KL (nats per response) with its standard error, per token, and samples."""
    fields = ("step", "gflops", "forward_kl", "se", "per_token", "samples")
    return [
        {"run": run, "checkpoint": Path(entry["checkpoint"]).name, **{f: entry[f] for f in fields}}
        for run, entries in drift.items()
        for entry in entries
    ]


def write_table(rows: Sequence[dict[str, Any]], run_dir: str | Path, name: str, vary: Sequence[str] = ()) -> Path:
    """rows -> run_dir/tables/<name>.csv (and .json, exact values).

    Rows that carry evaluation settings (columns named as in evaluation.KEY_FIELDS) must
    agree on them, except the fields in `vary` (a table meant to compare, e.g., budgets):
    otherwise a ValueError names the differing fields.
    """
    settings = [{f: row[f] for f in KEY_FIELDS if f in row} for row in rows]
    if any(settings):
        require_same_settings(settings, f"table {name!r}", ignore=("eval_set", *vary))
    folder = run_folder.tables_dir(run_dir)
    write_atomically(folder / f"{name}.json", json.dumps(list(rows), indent=2) + "\n")
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    return write_atomically(folder / f"{name}.csv", text.getvalue())
