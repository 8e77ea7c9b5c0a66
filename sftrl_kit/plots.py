"""The study's figures, drawn from run folders alone.

The plots take the rows of `tables.checkpoint_rows` (one per run, checkpoint and
evaluation, with each evaluation's settings as columns), so every figure can be redrawn
from the folders; what a figure shows beyond the rows (a change from the start) is
computed in tables.py too. A figure refuses rows whose settings differ (a ValueError names
them): pick them with `tables.checkpoint_rows(..., keys=settings.eval_keys())`.

  plot_curves      a metric against training GFLOPs, one panel per eval set (ID, OOD),
                   points with the 95% intervals the evaluation stored (Wilson's, on the
                   effective number of answers for rates over answers), and a
                   Savitzky-Golay-smoothed line (polynomial order 3), as in the paper
  plot_change      change of a metric from each run's first checkpoint to its last,
                   in points, with the difference's 95% interval (the paper's OOD bars;
                   the numbers: tables.change_from_start)
  plot_drift       each checkpoint's forward KL from the start (drift.forward_kl) against
                   its change on a set from the run's first checkpoint (RL's Razor)
  plot_recognition recognition accuracy against success per checkpoint, one panel per
                   set (the vision tasks: the paper's recognition figure)
  training_curves  a run's own log (metrics.jsonl): PPO's success, return, KL, clip
                   fraction and explained variance per update; SFT's loss per step

Every figure names runs and sets the same way: `tables.run_label` ("RL (PPO)", "SFT") and
`set_label` (the split registry's description, data.GP_EVAL_SPLITS / VIRL_EVAL_SPLITS).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import run_folder
from .data import GP_EVAL_SPLITS, VIRL_EVAL_SPLITS
from .run_folder import METRICS, read_metrics
from .stats import wilson_interval
from .tables import change_from_start, require_one_setting, run_label, run_series, runs_in

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# --- names, defined once --------------------------------------------------------------

# What the kind of a split is called, from the end of its id (gp-rule-ood -> rule OOD).
_SET_KINDS = {"id": "ID", "rule-ood": "rule OOD", "fake-rule": "fake rule", "visual-ood": "visual OOD", "ood": "OOD"}
# One look per run, in the order runs come: colour, marker and line style all differ,
# so two runs stay apart in greyscale and where their lines coincide.
_STYLES = [
    ("tab:blue", "o", "-"),
    ("tab:orange", "s", "--"),
    ("tab:green", "^", "-."),
    ("tab:red", "D", ":"),
    ("tab:purple", "v", "-"),
    ("tab:brown", "P", "--"),
    ("tab:pink", "X", "-."),
    ("tab:gray", "*", ":"),
]


def set_label(eval_set: str) -> str:
    """How figures name an eval set: its kind and the split registry's description,
    'gp-rule-ood' -> 'rule OOD: new rule (J, Q, K = 11, 12, 13), at least one face card,
    black suits'. Sets outside the registry keep their kind or their id."""
    kind = next(
        (label for suffix, label in _SET_KINDS.items() if eval_set == suffix or eval_set.endswith(f"-{suffix}")),
        eval_set,
    )
    split = {**GP_EVAL_SPLITS, **VIRL_EVAL_SPLITS}.get(eval_set)
    return f"{kind}: {split.description}" if split else kind


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _episodes_text(rows: Sequence[dict[str, Any]], what: str = "per point") -> str:
    counts = sorted({r["episodes"] for r in rows})
    if not counts:
        return ""
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return f"n = {n} episodes {what}"


def _below_above(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> list[np.ndarray]:
    """An interval as errorbar's asymmetric yerr (rounding never makes a side negative)."""
    return [np.maximum(0.0, values - low), np.maximum(0.0, high - values)]


def _with_legend(figure: Figure, ax: Axes, handles: list) -> Figure:
    """The figure, laid out, with one legend entry per label on `ax`."""
    ax.legend(handles=list({h.get_label(): h for h in handles}.values()), fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def smooth(values: Sequence[float], window: int = 5, order: int = 3) -> np.ndarray:
    """Savitzky-Golay smoothing; series shorter than the window are returned as they are."""
    from scipy.signal import savgol_filter

    values = np.asarray(values, dtype=float)
    window = min(window, len(values) if len(values) % 2 else len(values) - 1)
    if window <= order:
        return values
    return savgol_filter(values, window, order)


# --- evaluations against compute ------------------------------------------------------


def plot_curves(
    rows: Sequence[dict[str, Any]],
    metric: str = "success_rate",
    eval_sets: Sequence[str] | None = None,
    smooth_window: int = 5,
    x: str = "gflops",
) -> Figure:
    """Metric (%) against training GFLOPs (x="gflops", the paper's axis) or optimizer
    steps (x="step", e.g. the SFT window of one run); one panel per eval set, one line
    per run.

    Points carry the 95% interval each evaluation stored (`<metric>_low`/`_high`, Wilson's:
    wide at 0/n, where a binomial standard error would be zero). Runs' points are moved
    apart by 1% of the GFLOPs range each, so that runs sharing a start (the same
    checkpoint at 0 GFLOPs) do not hide one another; the lines keep the true GFLOPs.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    sets = list(eval_sets or sorted({r["eval_set"] for r in rows}))
    require_one_setting([r for r in rows if r["eval_set"] in sets], f"the {metric} curves")
    runs = runs_in(r for r in rows if r["eval_set"] in sets)
    if x not in ("gflops", "step"):
        raise ValueError(f"x must be 'gflops' or 'step', got {x!r}")
    xs = [r[x] for r in rows] or [0.0]
    dodge = 0.01 * ((max(xs) - min(xs)) or 1.0)
    figure, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 4.2), squeeze=False)
    handles = []
    for ax, eval_set in zip(axes[0], sets):
        top = 10.0
        shown = []
        for index, (run, label) in enumerate(runs.items()):
            series = run_series(rows, run, eval_set, metric, x)
            if not series:
                continue
            shown += series
            colour, marker, linestyle = _STYLES[index % len(_STYLES)]
            at = np.array([r[x] for r in series])
            y = np.array([100 * r[metric] for r in series])
            low = np.array([100 * r[f"{metric}_low"] for r in series])
            high = np.array([100 * r[f"{metric}_high"] for r in series])
            offset = (index - (len(runs) - 1) / 2) * dodge
            ax.errorbar(
                at + offset,
                y,
                yerr=_below_above(y, low, high),
                fmt=marker,
                color=colour,
                ms=5,
                capsize=3,
                elinewidth=1,
                alpha=0.85,
                zorder=3 + index,
            )
            # a rate's smoothed line stays within 0..100 (Savitzky-Golay overshoots at jumps)
            ax.plot(
                at,
                np.clip(smooth(y, smooth_window), 0, 100),
                color=colour,
                linestyle=linestyle,
                linewidth=1.6,
                zorder=2 + index,
            )
            handles.append(Line2D([], [], color=colour, marker=marker, linestyle=linestyle, label=label))
            top = max(top, float(high.max()) * 1.1)
        ax.set_ylim(-0.03 * top, min(100.0, top) + 0.03 * top)  # points at 0 and 100 stay off the frame
        ax.set_title(_wrap(f"{set_label(eval_set)}\n{_episodes_text(shown)}, 95% intervals", 52), fontsize=10)
        ax.set_xlabel("training GFLOPs" if x == "gflops" else "optimizer steps")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.grid(alpha=0.3)
    return _with_legend(figure, axes[0][0], handles)


def plot_change(rows: Sequence[dict[str, Any]], eval_set: str, metric: str = "success_rate") -> Figure:
    """Bars of each run's change (points) from its first checkpoint, with the 95%
    interval of the difference from compare_rates (not zero when both rates are 0/n).
    Each value is written beyond its interval's end, clear of the cap; the p-value
    under the run's name."""
    import matplotlib.pyplot as plt

    changes = change_from_start(rows, eval_set, metric)
    runs = list(runs_in(rows))
    figure, ax = plt.subplots(figsize=(max(5.5, 1.5 + 1.6 * len(changes)), 4.4))
    positions = np.arange(len(changes))
    for position, change in zip(positions, changes):
        colour, _, _ = _STYLES[runs.index(change["run"]) % len(_STYLES)]
        ax.bar(
            position,
            change["change"],
            width=0.6,
            color=colour,
            alpha=0.8,
            yerr=[[change["change"] - change["low"]], [change["high"] - change["change"]]],
            capsize=5,
        )
        above = change["change"] >= 0
        ax.annotate(
            f"{change['change']:+.1f}",
            (position, change["high"] if above else change["low"]),
            xytext=(0, 6 if above else -6),
            textcoords="offset points",
            ha="center",
            va="bottom" if above else "top",
            fontsize=9,
        )
    ax.set_xticks(positions, [f"{c['label']}\np = {c['p_value']:.2g}" for c in changes], fontsize=9)
    ax.margins(y=0.15)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"change in {metric.replace('_', ' ')} (points)")
    tests = ", ".join(dict.fromkeys(c["test"] for c in changes))
    ends = [r for r in rows if r["eval_set"] == eval_set and r[metric] is not None]
    ax.set_title(
        _wrap(
            f"{set_label(eval_set)}\nfirst checkpoint to last, {_episodes_text(ends, 'each')}\n"
            f"95% interval of the difference: {tests}",
            62,
        ),
        fontsize=9,
    )
    figure.tight_layout()
    return figure


# --- drift from the start against the rule-OOD change ----------------------------------


def plot_drift(
    rows: Sequence[dict[str, Any]], drift: dict[str, Sequence[dict[str, Any]]], eval_set: str, metric: str
) -> Figure:
    """Each checkpoint's forward KL from the start on the trained task (drift.forward_kl,
    nats per response, with its standard error) against its change in `metric` on
    `eval_set` from the run's first checkpoint (points), one line per run: RL's Razor's
    question, whether the distance travelled on the trained task, more than the
    algorithm, says how much the other rule was lost.

    drift: {run folder name: forward_kl's entries} (study.drift); rows: checkpoint_rows of
    the same runs, named by their folders (no `labels`). A ValueError when no checkpoint of
    the rows has an entry in drift."""
    import matplotlib.pyplot as plt

    require_one_setting([r for r in rows if r["eval_set"] == eval_set], f"the drift figure on {eval_set}")
    figure, ax = plt.subplots(figsize=(6.0, 4.4))
    handles = []
    for index, (run, label) in enumerate(runs_in(rows).items()):
        series = run_series(rows, run, eval_set, metric, x="step")
        kl_of = {Path(entry["checkpoint"]).name: entry for entry in drift.get(run, [])}
        points = [(kl_of[r["checkpoint"]], r) for r in series if r["checkpoint"] in kl_of]
        if not series or not points:
            continue
        first = series[0][metric]
        colour, marker, line = _STYLES[index % len(_STYLES)]
        x = [entry["forward_kl"] for entry, _ in points]
        y = [100 * (row[metric] - first) for _, row in points]
        ax.errorbar(
            x,
            y,
            xerr=[entry["se"] for entry, _ in points],
            color=colour,
            marker=marker,
            linestyle=line,
            capsize=3,
            label=label,
        )
        handles.append(label)
    if not handles:
        plt.close(figure)
        raise ValueError(
            f"no checkpoint of the rows' runs {sorted(runs_in(rows))} has a forward KL in drift "
            f"(its runs: {sorted(drift)}); build the rows without labels, so that runs are named by their folders"
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("forward KL from the start on the trained task (nats per response)")
    ax.set_ylabel(f"change in {metric.replace('_', ' ')} (points)")
    ax.set_title(_wrap(f"{set_label(eval_set)}\neach checkpoint against its run's first", 62), fontsize=9)
    if handles:
        ax.legend(fontsize=9)
    figure.tight_layout()
    return figure


# --- recognition against success (the vision tasks) ----------------------------------


def plot_recognition(rows: Sequence[dict[str, Any]], eval_sets: Sequence[str], metric: str = "success_rate") -> Figure:
    """The paper's recognition figure: per checkpoint, recognition accuracy (the share of
    answers whose "cards" or landmarks were read right) against `metric`, one panel per
    set (ID, visual OOD), one path per run through its checkpoints in order of GFLOPs,
    from the shared start (hollow marker) to its end (filled). Both axes carry the 95%
    intervals the evaluation stored."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    recognition = "recognition_accuracy"
    require_one_setting([r for r in rows if r["eval_set"] in eval_sets], "the recognition figure")
    runs = runs_in(r for r in rows if r["eval_set"] in eval_sets)
    figure, axes = plt.subplots(1, len(eval_sets), figsize=(5.2 * len(eval_sets), 4.4), squeeze=False)
    handles = []
    for ax, eval_set in zip(axes[0], eval_sets):
        shown = []
        for index, (run, label) in enumerate(runs.items()):
            series = [r for r in run_series(rows, run, eval_set, metric) if r[recognition] is not None]
            if not series:
                continue
            shown += series
            colour, marker, linestyle = _STYLES[index % len(_STYLES)]
            x, y = (np.array([100 * r[m] for r in series]) for m in (recognition, metric))
            x_err, y_err = (
                _below_above(
                    v, np.array([100 * r[f"{m}_low"] for r in series]), np.array([100 * r[f"{m}_high"] for r in series])
                )
                for v, m in ((x, recognition), (y, metric))
            )
            ax.errorbar(x, y, xerr=x_err, yerr=y_err, fmt="none", ecolor=colour, elinewidth=0.8, alpha=0.5, capsize=2)
            ax.plot(x, y, color=colour, linestyle=linestyle, marker=marker, ms=5, mfc="white", zorder=3)
            ax.plot(x[-1:], y[-1:], color=colour, marker=marker, ms=7, linestyle="none", zorder=4)
            handles.append(Line2D([], [], color=colour, marker=marker, linestyle=linestyle, label=label))
        ax.set_xlim(-3, 103)
        ax.set_ylim(-3, 103)
        ax.set_title(_wrap(f"{set_label(eval_set)}\n{_episodes_text(shown)}, 95% intervals", 52), fontsize=10)
        ax.set_xlabel("recognition accuracy (%)")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.grid(alpha=0.3)
    return _with_legend(figure, axes[0][0], handles)


# --- a run's own log ------------------------------------------------------------------


def training_curves(run_dir: str | Path) -> Figure:
    """A training run's curves from run_dir/metrics.jsonl (run_folder.read_metrics).

    PPO (rows with "update"): success rate with its 95% Wilson interval over the
    update's episodes, mean return, KL (approx_kl between the policy before and after
    the update; kl_to_initial, to the reference, when the run has a KL penalty), clip
    fraction and explained variance (runs with a critic), against the update. SFT: the
    training loss against the step.
    """
    run_dir = Path(run_dir)
    if not (run_dir / METRICS).is_file():
        raise FileNotFoundError(
            f"{run_dir / METRICS} not found: {run_dir} is not a training run folder, or its "
            "trainer has logged nothing yet (train/sft.py and train/ppo.py write metrics.jsonl)"
        )
    rows = read_metrics(run_dir)
    updates = [r for r in rows if "update" in r]
    if updates:
        return _ppo_curves(run_dir, updates)
    losses = [r for r in rows if "loss" in r]
    if losses:
        return _sft_curves(run_dir, losses)
    raise ValueError(
        f"{run_dir / METRICS} holds no PPO updates (rows with 'update') and no SFT losses (rows with 'loss')"
    )


def _ppo_curves(run_dir: Path, rows: list[dict[str, Any]]) -> Figure:
    import matplotlib.pyplot as plt

    figure, grid = plt.subplots(2, 3, figsize=(13, 6.4))
    success, ret, kl, clip, variance, unused = grid.flat
    figure.delaxes(unused)
    x = [r["update"] for r in rows]
    rates = [wilson_interval(round(r["success_rate"] * r["episodes"]), r["episodes"]) for r in rows]
    y = np.array([100 * r["value"] for r in rates])
    low, high = (np.array([100 * r[end] for r in rates]) for end in ("low", "high"))
    success.errorbar(x, y, yerr=_below_above(y, low, high), fmt="o-", ms=4, capsize=3)
    success.set_ylim(-3, 103)
    _panel(success, f"success rate (%)\n{_episodes_text(rows, 'per update')}, 95% intervals")
    ret.plot(x, [r["mean_return"] for r in rows], "o-", ms=4)
    _panel(ret, "mean return per episode")
    kl.plot(x, [r.get("approx_kl") for r in rows], "o-", ms=4, label="approx. KL, before → after the update")
    if any("kl_to_initial" in r for r in rows):
        kl.plot(
            x, [r.get("kl_to_initial") for r in rows], "s--", ms=4, color="tab:orange", label="KL to the initial policy"
        )
    kl.legend(fontsize=8)
    _panel(kl, "KL (nats)")
    clip.plot(x, [r.get("clip_fraction") for r in rows], "o-", ms=4)
    _panel(clip, "clip fraction")
    if any("explained_variance" in r for r in rows):
        variance.plot(x, [r.get("explained_variance") for r in rows], "o-", ms=4)
        variance.axhline(0, color="black", linewidth=0.8)
    else:
        variance.text(
            0.5,
            0.5,
            "not logged: this run has no critic",
            ha="center",
            va="center",
            transform=variance.transAxes,
            color="gray",
        )
        variance.set_yticks([])
    _panel(variance, "explained variance (critic)")
    if not variance.get_lines():
        variance.set_xticks([])
    figure.suptitle(f"{run_label(run_dir.name, 'ppo')} training (run folder {run_dir.name})")
    figure.tight_layout()
    return figure


def _sft_curves(run_dir: Path, rows: list[dict[str, Any]]) -> Figure:
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], "o-", ms=3)
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_xlabel("SFT step")
    ax.grid(alpha=0.3)
    ax.set_title(f"{run_label(run_dir.name, 'sft')} training (run folder {run_dir.name})")
    figure.tight_layout()
    return figure


def _panel(ax: Axes, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=10)
    ax.set_xlabel("PPO update")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def save_figure(figure: Figure, run_dir: str | Path, name: str) -> Path:
    """run_dir/figures/<name>.png (150 dpi) and .svg; returns the PNG's path."""
    folder = run_folder.figures_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / f"{name}.png", dpi=150, bbox_inches="tight")
    figure.savefig(folder / f"{name}.svg", bbox_inches="tight")
    return folder / f"{name}.png"
