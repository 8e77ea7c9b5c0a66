import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from sftrl_kit.plots import change_from_start, checkpoint_rows, plot_change, plot_curves, smooth  # noqa: E402
from test_study import synthetic_run  # noqa: E402


def test_rows_curves_and_change_from_a_folder(tmp_path):
    rl = synthetic_run(tmp_path, "rl", "ppo", [(10, 6), (20, 8), (30, 9), (35, 12), (40, 14)])
    sft = synthetic_run(tmp_path, "sft", "sft", [(10, 6), (30, 4), (40, 2), (45, 2), (48, 1)])
    rows = checkpoint_rows([rl, sft])
    assert len(rows) == 20 and {r["eval_set"] for r in rows} == {"id", "ood"}
    first = next(r for r in rows if r["run"] == "rl" and r["step"] == 0 and r["eval_set"] == "ood")
    assert first["success_rate"] == 6 / 50 and first["success_rate_trials"] == 50 and first["gflops"] == 0.0
    changes = {c["run"]: c for c in change_from_start(rows, "ood")}
    assert changes["rl"]["change"] == pytest.approx(16.0) and changes["sft"]["change"] == pytest.approx(-10.0)
    assert changes["rl"]["error"] > 0 and changes["rl"]["low"] < 16.0 < changes["rl"]["high"]
    assert changes["sft"]["low"] < -10.0 < changes["sft"]["high"] and 0 < changes["sft"]["p_value"] < 1
    figure = plot_curves(rows, eval_sets=["id", "ood"])
    assert len(figure.axes) == 2 and len(figure.axes[1].get_lines()) >= 2
    figure.savefig(tmp_path / "curves.png")
    bars = plot_change(rows, "ood")
    assert len(bars.axes[0].patches) == 2
    bars.savefig(tmp_path / "change.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_smoothing_keeps_short_series_and_fits_cubics_exactly():
    assert list(smooth([1.0, 2.0, 3.0])) == [1.0, 2.0, 3.0]
    cubic = [x**3 - 2 * x for x in range(9)]
    assert smooth(cubic, window=5) == pytest.approx(cubic)
