import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from conftest import synthetic_run  # noqa: E402

from sftrl_kit.plots import (  # noqa: E402
    plot_change,
    plot_curves,
    plot_drift,
    plot_recognition,
    set_label,
    smooth,
    training_curves,
)
from sftrl_kit.tables import change_from_start, checkpoint_rows, run_label  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def wilson(k, n, z=1.959963984540054):
    """The Wilson score interval, written out here independently of evaluation.py."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def error_bars(ax):
    """{(run's marker, x rounded): (low, high)} read back from the Axes' error-bar segments."""
    bars = {}
    for container in ax.containers:
        data_line, _, (segments,) = container.lines
        for (x, low), (_, high) in segments.get_segments():
            bars[(data_line.get_marker(), round(float(x)))] = (low, high)
    return bars


def study_rows(tmp_path, sft_id=(10, 30, 40, 45, 48)):
    """An RL and an SFT branch from one start (0/50 on OOD), named as the study names them."""
    rl = synthetic_run(tmp_path, "ppo", "ppo", [(10, 0), (20, 0), (30, 3), (35, 12), (40, 14)])
    sft = synthetic_run(tmp_path, "sft", "sft", list(zip(sft_id, (0, 0, 0, 0, 1))))
    rows = checkpoint_rows([rl, sft])
    for row in rows:  # the registry's ids, so that the sets have descriptions
        row["eval_set"] = {"id": "gp-id", "ood": "gp-rule-ood"}[row["eval_set"]]
    return rows


def test_rows_curves_and_change_from_a_folder(tmp_path):
    rl = synthetic_run(tmp_path, "rl", "ppo", [(10, 6), (20, 8), (30, 9), (35, 12), (40, 14)])
    sft = synthetic_run(tmp_path, "sft", "sft", [(10, 6), (30, 4), (40, 2), (45, 2), (48, 1)])
    rows = checkpoint_rows([rl, sft])
    assert len(rows) == 20
    assert {r["eval_set"] for r in rows} == {"id", "ood"}
    first = next(r for r in rows if r["run"] == "rl" and r["step"] == 0 and r["eval_set"] == "ood")
    assert first["success_rate"] == 6 / 50
    assert first["success_rate_trials"] == 50
    assert first["gflops"] == 0.0
    changes = {c["run"]: c for c in change_from_start(rows, "ood")}
    assert changes["rl"]["change"] == pytest.approx(16.0)
    assert changes["sft"]["change"] == pytest.approx(-10.0)
    assert changes["rl"]["low"] < 16.0 < changes["rl"]["high"]
    assert changes["sft"]["low"] < -10.0 < changes["sft"]["high"]
    assert 0 < changes["sft"]["p_value"] < 1
    assert changes["sft"]["episodes"] == (50, 50)
    figure = plot_curves(rows, eval_sets=["id", "ood"])
    assert len(figure.axes) == 2
    assert len(figure.axes[1].get_lines()) >= 2
    figure.savefig(tmp_path / "curves.png")
    bars = plot_change(rows, "ood")
    assert len(bars.axes[0].patches) == 2
    bars.savefig(tmp_path / "change.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_curves_draw_the_stored_wilson_interval_even_at_zero_successes(tmp_path):
    rows = study_rows(tmp_path)
    ood = plot_curves(rows, eval_sets=["gp-rule-ood"]).axes[0]
    bars = error_bars(ood)
    low, high = bars[("s", 0)]  # SFT (squares) at the start: 0/50
    assert low == pytest.approx(0.0, abs=1e-9)
    assert high == pytest.approx(100 * wilson(0, 50)[1])  # 7.1 points, not the binomial error's 0
    assert high > 7
    low, high = bars[("o", 40)]  # RL (circles) at the end: 14/50, asymmetric around 28%
    assert (low, high) == pytest.approx(tuple(100 * end for end in wilson(14, 50)))
    assert 28 - low != pytest.approx(high - 28)
    per_answer = next(r for r in rows if r["run"] == "ppo" and r["step"] == 4 and r["eval_set"] == "gp-rule-ood")
    answers = error_bars(plot_curves(rows, "per_step_accuracy", ["gp-rule-ood"]).axes[0])
    assert answers[("o", 40)] == pytest.approx(
        (100 * per_answer["per_step_accuracy_low"], 100 * per_answer["per_step_accuracy_high"])
    )


def test_figures_name_sets_by_their_description_and_runs_by_one_scheme(tmp_path):
    assert set_label("gp-rule-ood").startswith("rule OOD: new rule (J, Q, K = 11, 12, 13)")
    assert set_label("gp-id").startswith("ID: trained rule (J, Q, K = 10)")
    assert set_label("virl-visual-ood").startswith("visual OOD: absolute actions")
    assert set_label("ood") == "OOD"
    assert run_label("ppo") == "RL (PPO)"
    assert run_label("sft") == "SFT"
    assert run_label("budget-3", "ppo") == "RL (PPO), budget-3"
    rows = study_rows(tmp_path)
    axes = plot_curves(rows, eval_sets=["gp-id", "gp-rule-ood"]).axes
    titles = [" ".join(ax.get_title().split()) for ax in axes]
    assert titles[1].startswith("rule OOD: new rule (J, Q, K = 11, 12, 13)")
    assert "n = 50 episodes per point" in titles[1]
    assert not any("gp-" in title for title in titles)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["RL (PPO)", "SFT"]
    bars = plot_change(rows, "gp-rule-ood").axes[0]
    assert [t.get_text().split("\n")[0] for t in bars.get_xticklabels()] == ["RL (PPO)", "SFT"]
    assert " ".join(bars.get_title().split()).startswith("rule OOD: new rule")
    labelled = checkpoint_rows([tmp_path / "ppo"], labels=["RL at budget 5"])
    assert {r["label"] for r in labelled} == {"RL at budget 5"}


def test_no_value_label_on_an_interval_and_no_run_hidden_under_another(tmp_path):
    rows = study_rows(tmp_path, sft_id=(10, 12, 8, 6, 4))  # on ID, RL rises and SFT falls
    ax = plot_change(rows, "gp-id").axes[0]
    changes = change_from_start(rows, "gp-id")
    assert [c["change"] > 0 for c in changes] == [True, False]
    texts = sorted(ax.texts, key=lambda t: t.xy[0])
    assert [t.get_text() for t in texts] == [f"{c['change']:+.1f}" for c in changes]
    for text, change in zip(texts, changes):
        outer_end = change["high"] if change["change"] >= 0 else change["low"]
        assert text.xy[1] == pytest.approx(outer_end)  # anchored at the whisker's end ...
        assert abs(text.xyann[1]) > 0  # ... and set off beyond it, never on the cap
    ood = plot_curves(rows, eval_sets=["gp-rule-ood"]).axes[0]
    points = [container.lines[0] for container in ood.containers]
    assert {p.get_marker() for p in points} == {"o", "s"}
    start = [float(p.get_xdata()[0]) for p in points]  # both runs start at 0 GFLOPs, 0/50
    assert start[0] != start[1]
    assert abs(start[0] - start[1]) < 0.05 * 40  # moved apart, not moved away
    lines = [line for line in ood.get_lines() if line.get_marker() in ("None", "")]
    assert len({line.get_linestyle() for line in lines}) == 2


def write_metrics(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run_dir


def test_training_curves_of_a_ppo_run(tmp_path):
    rows = [
        {
            "method": "ppo",
            "update": u,
            "step": u,
            "episodes": 8,
            "success_rate": s,
            "mean_return": u / 2,
            "approx_kl": 0.01 * u,
            "kl_to_initial": 0.02 * u,
            "clip_fraction": 0.1,
            "explained_variance": 0.5,
        }
        for u, s in ((1, 0.0), (2, 0.25), (3, 0.5))
    ]
    axes = training_curves(write_metrics(tmp_path / "ppo", rows)).axes
    titles = [ax.get_title().split("\n")[0] for ax in axes]
    assert titles == [
        "success rate (%)",
        "mean return per episode",
        "KL (nats)",
        "clip fraction",
        "explained variance (critic)",
    ]
    assert "n = 8 episodes per update" in axes[0].get_title()
    low, high = error_bars(axes[0])[("o", 1)]  # 0/8 in update 1: an interval, not a point
    assert low == pytest.approx(0.0, abs=1e-9)
    assert high == pytest.approx(100 * wilson(0, 8)[1])
    assert [t.get_text() for t in axes[2].get_legend().get_texts()] == [
        "approx. KL, before → after the update",
        "KL to the initial policy",
    ]
    assert list(axes[2].get_lines()[1].get_ydata()) == pytest.approx([0.02, 0.04, 0.06])
    assert list(axes[1].get_lines()[0].get_xdata()) == [1, 2, 3]
    assert axes[0].figure.texts[0].get_text().startswith("RL (PPO) training")


def test_training_curves_of_a_ppo_run_without_critic_or_kl_penalty(tmp_path):
    rows = [
        {
            "method": "ppo",
            "update": u,
            "step": u,
            "episodes": 4,
            "success_rate": 0.5,
            "mean_return": 1.0,
            "approx_kl": 0.01,
            "clip_fraction": 0.0,
        }
        for u in (1, 2)
    ]
    axes = training_curves(write_metrics(tmp_path / "grpo", rows)).axes
    assert len(axes[2].get_lines()) == 1
    assert not axes[4].get_lines()
    assert "not logged" in axes[4].texts[0].get_text()


def test_training_curves_of_an_sft_run_plot_the_loss_per_step(tmp_path):
    rows = [{"method": "sft", "step": s, "loss": 2.0 / s, "learning_rate": 1e-4} for s in (1, 2, 3, 4)]
    rows.append({"method": "sft", "step": 4, "train_loss": 1.0, "train_runtime": 3.0})  # TRL's summary row
    (ax,) = training_curves(write_metrics(tmp_path / "sft", rows)).axes
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3, 4]
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([2.0, 1.0, 2 / 3, 0.5])
    assert ax.get_title().startswith("SFT training")
    assert ax.get_xlabel() == "SFT step"


def test_training_curves_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl not found"):
        training_curves(tmp_path / "empty")
    with pytest.raises(ValueError, match="no PPO updates .* and no SFT losses"):
        training_curves(write_metrics(tmp_path / "odd", [{"step": 1, "note": "nothing to plot"}]))


def test_smoothing_keeps_short_series_and_fits_cubics_exactly():
    assert list(smooth([1.0, 2.0, 3.0])) == [1.0, 2.0, 3.0]
    cubic = [x**3 - 2 * x for x in range(9)]
    assert smooth(cubic, window=5) == pytest.approx(cubic)


def test_the_recognition_figure_puts_each_checkpoint_at_its_recognition_and_success(tmp_path):
    rows = study_rows(tmp_path)
    for row in rows:  # recognition, here: the synthetic per-step accuracy
        row.update({f"recognition_accuracy{end}": row[f"per_step_accuracy{end}"] for end in ("", "_low", "_high")})
    figure = plot_recognition(rows, ["gp-id", "gp-rule-ood"])
    for ax, eval_set in zip(figure.axes, ["gp-id", "gp-rule-ood"]):
        paths = [line for line in ax.get_lines() if line.get_linestyle() != "None"]  # not the error bars' caps
        assert len(paths) == 2  # one per branch
        for path, run in zip(paths, ["ppo", "sft"]):
            series = sorted(
                (r for r in rows if r["run"] == run and r["eval_set"] == eval_set), key=lambda r: r["gflops"]
            )
            assert list(path.get_xdata()) == pytest.approx([100 * r["per_step_accuracy"] for r in series])
            assert list(path.get_ydata()) == pytest.approx([100 * r["success_rate"] for r in series])


def test_the_drift_figure_puts_each_checkpoint_at_its_kl_and_its_change(tmp_path):
    rl = synthetic_run(tmp_path, "rl", "ppo", [(10, 6), (20, 8), (30, 9)])
    sft = synthetic_run(tmp_path, "sft", "sft", [(10, 6), (30, 4), (40, 2)])
    rows = checkpoint_rows([rl, sft])
    names = {
        run: [r["checkpoint"] for r in rows if r["run"] == run and r["eval_set"] == "ood"] for run in ("rl", "sft")
    }
    drift = {
        run: [{"checkpoint": f"/x/{name}", "forward_kl": kl, "se": 0.1} for name, kl in zip(names[run], kls)]
        for run, kls in (("rl", [0.0, 0.5, 0.9]), ("sft", [0.0, 2.0, 4.0]))
    }
    figure = plot_drift(rows, drift, "ood", "success_rate")
    lines = [container.lines[0] for container in figure.axes[0].containers]  # each run's errorbar data line
    assert [list(line.get_xdata()) for line in lines] == [[0.0, 0.5, 0.9], [0.0, 2.0, 4.0]]
    assert list(lines[1].get_ydata()) == pytest.approx([0.0, -4.0, -8.0])  # 6 -> 4 -> 2 of 50, in points
    figure.savefig(tmp_path / "drift.png")
    labelled = checkpoint_rows([rl, sft], labels=["RL (PPO)", "SFT"])  # runs named by label: nothing to match
    with pytest.raises(ValueError, match="build the rows without labels"):
        plot_drift(labelled, drift, "ood", "success_rate")
