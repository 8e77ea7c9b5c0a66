"""The study's figures, drawn from run folders alone.

A run folder holds checkpoints/<name>/checkpoint.json (step, tokens, GFLOPs) and, after
evaluation, checkpoints/<name>/eval/<set>/<key digest>/metrics.json, one per set and
settings (the layout: run_folder). `checkpoint_rows` flattens them
(evaluation.evaluation_row), with each evaluation's settings as columns
(evaluation.KEY_FIELDS); the plots take those rows, so every figure can be redrawn from
the folders. A figure refuses rows whose settings differ (a ValueError names them): pick
them with `checkpoint_rows(..., keys=settings.eval_keys())`.

  plot_curves      a metric against training GFLOPs, one panel per eval set (ID, OOD),
                   points with binomial error bars sqrt(P(1-P)/N) (N: the effective
                   number of answers, for rates over answers), and a
                   Savitzky-Golay-smoothed line (polynomial order 3), as in the paper
  plot_change      change of a metric from each run's first checkpoint to its last,
                   in points, with the difference's 95% interval (the paper's OOD bars)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .evaluation import KEY_FIELDS, RATES, compare_rates, evaluation_row, load_evaluations, require_same_settings
from .run_folder import list_checkpoints, read_counters


def checkpoint_rows(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None,
                    keys: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per (run, checkpoint, evaluation) with counters, settings and rates.

    `keys` ({set: key or some of its fields}, e.g. settings.eval_keys()) keeps the
    evaluations of those sets with those settings; without it, every evaluation.
    `<metric>_rate` holds the full rate (with its per-task counts, for compare_rates).
    """
    wanted = list(keys.items()) if keys is not None else [(None, None)]
    rows = []
    for index, run_dir in enumerate(run_dirs):
        label = labels[index] if labels else Path(run_dir).name
        for checkpoint in list_checkpoints(run_dir):
            counters = read_counters(checkpoint)
            for eval_set, where in wanted:
                for metrics in load_evaluations(checkpoint, eval_set, where):
                    row = evaluation_row(label, checkpoint, counters, metrics)
                    rows.append({**row, **{f"{metric}_rate": metrics.get(metric) for metric in RATES}})
    return rows


def _one_setting(rows: Sequence[dict[str, Any]], what: str) -> None:
    require_same_settings([{f: row.get(f) for f in KEY_FIELDS} for row in rows], what)


def smooth(values: Sequence[float], window: int = 5, order: int = 3) -> np.ndarray:
    """Savitzky-Golay smoothing; series shorter than the window are returned as they are."""
    from scipy.signal import savgol_filter

    values = np.asarray(values, dtype=float)
    window = min(window, len(values) if len(values) % 2 else len(values) - 1)
    if window <= order:
        return values
    return savgol_filter(values, window, order)


def binomial_error(p: float | None, n: int) -> float:
    return 0.0 if p is None or n == 0 else math.sqrt(p * (1 - p) / n)


def plot_curves(rows: Sequence[dict[str, Any]], metric: str = "success_rate",
                eval_sets: Sequence[str] | None = None, smooth_window: int = 5):
    """Metric (%) against training GFLOPs; one panel per eval set, one line per run."""
    import matplotlib.pyplot as plt

    sets = list(eval_sets or sorted({r["eval_set"] for r in rows}))
    _one_setting([r for r in rows if r["eval_set"] in sets], f"the {metric} curves")
    figure, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, eval_set in zip(axes[0], sets):
        top = 5.0
        for run in sorted({r["run"] for r in rows}):
            series = sorted((r for r in rows if r["run"] == run and r["eval_set"] == eval_set and r[metric] is not None),
                            key=lambda r: r["gflops"])
            if not series:
                continue
            x = [r["gflops"] for r in series]
            y = np.array([100 * r[metric] for r in series])
            errors = [100 * binomial_error(r[metric], r[f"{metric}_effective_trials"]) for r in series]
            points = ax.errorbar(x, y, yerr=errors, fmt="o", ms=3, capsize=2, alpha=0.6)
            ax.plot(x, smooth(y, smooth_window), color=points[0].get_color(), label=run)
            top = max(top, float(np.max(y + np.array(errors))) * 1.1)
        ax.set_ylim(-0.03 * top, min(100, top))  # points at 0 stay visible above the axis
        ax.set_title(eval_set)
        ax.set_xlabel("training GFLOPs")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def change_from_start(rows: Sequence[dict[str, Any]], eval_set: str, metric: str = "success_rate") -> list[dict[str, Any]]:
    """Per run: last checkpoint minus first on one eval set, in points, with its error,
    the 95% interval and p-value of evaluation.compare_rates, and the test it used."""
    _one_setting([r for r in rows if r["eval_set"] == eval_set], f"the change in {metric} on {eval_set}")
    out = []
    for run in sorted({r["run"] for r in rows}):
        series = sorted((r for r in rows if r["run"] == run and r["eval_set"] == eval_set and r[metric] is not None),
                        key=lambda r: r["gflops"])
        if len(series) < 2:
            continue
        first, last = series[0], series[-1]
        error = math.hypot(binomial_error(first[metric], first[f"{metric}_effective_trials"]),
                           binomial_error(last[metric], last[f"{metric}_effective_trials"]))
        interval = compare_rates(last[f"{metric}_rate"], first[f"{metric}_rate"])
        out.append({"run": run, "start": 100 * first[metric], "end": 100 * last[metric],
                    "change": 100 * (last[metric] - first[metric]), "error": 100 * error,
                    "low": 100 * interval["low"], "high": 100 * interval["high"], "p_value": interval["p_value"],
                    "test": interval["test"]})
    return out


def plot_change(rows: Sequence[dict[str, Any]], eval_set: str, metric: str = "success_rate"):
    """Bars of each run's change (points) from its first checkpoint, with the 95%
    interval of the difference from compare_rates (not zero when both rates are 0/n)."""
    import matplotlib.pyplot as plt

    changes = change_from_start(rows, eval_set, metric)
    figure, ax = plt.subplots(figsize=(1.6 + 1.2 * max(1, len(changes)), 3.4))
    below = [c["change"] - c["low"] for c in changes]
    above = [c["high"] - c["change"] for c in changes]
    bars = ax.bar([c["run"] for c in changes], [c["change"] for c in changes], yerr=[below, above],
                  capsize=4, color=["tab:green" if c["change"] >= 0 else "tab:red" for c in changes])
    ax.bar_label(bars, labels=[f"{c['change']:+.1f}" for c in changes], padding=2, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"change in {metric.replace('_', ' ')} (points)")
    ax.set_title(f"{eval_set}: from the shared start")
    figure.tight_layout()
    return figure


def save_figure(figure, run_dir: str | Path, name: str) -> Path:
    """run_dir/figures/<name>.png (150 dpi) and .svg; returns the PNG's path."""
    folder = Path(run_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / f"{name}.png", dpi=150, bbox_inches="tight")
    figure.savefig(folder / f"{name}.svg", bbox_inches="tight")
    return folder / f"{name}.png"
