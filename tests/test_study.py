import json

import pytest

from sftrl_kit import study
from sftrl_kit.evaluation import wilson_interval

from test_plots import synthetic_run


def test_what_moved_compares_each_run_to_its_start_and_the_branches_ends(tmp_path):
    rl = synthetic_run(tmp_path, "rl", "ppo", [(10, 6), (20, 8), (30, 30)])
    sft = synthetic_run(tmp_path, "sft", "sft", [(10, 6), (30, 4), (40, 2)])
    rows = study.what_moved([rl, sft], ["id", "ood"])
    by_label = {(r["comparison"], r["eval_set"]): r for r in rows}
    assert len(rows) == 6
    ood_rl = by_label[("rl: end - start", "ood")]
    assert ood_rl["A"].startswith("30/50 = 60.0%") and ood_rl["B"].startswith("6/50 = 12.0%")
    assert ood_rl["A - B (points)"].startswith("+48.0 [") and ood_rl["significant"] and ood_rl["p"] < 0.001
    same = by_label[("rl: end - start", "id")]
    assert same["A - B (points)"].startswith("+40.0") and same["GFLOPs A"] == 20.0 and same["GFLOPs B"] == 0.0
    ends = by_label[("rl end - sft end", "ood")]
    assert ends["A"].startswith("30/50") and ends["B"].startswith("2/50") and ends["significant"]


def test_what_moved_skips_runs_with_one_evaluated_checkpoint(tmp_path):
    lone = synthetic_run(tmp_path, "lone", "ppo", [(10, 6)])
    assert study.what_moved([lone], ["id"]) == []


def test_sft_steps_match_a_flops_target(tmp_path):
    start = tmp_path / "start"
    start.mkdir()
    (start / "checkpoint.json").write_text(json.dumps({"step": 10, "tokens": 1000, "num_parameters": 1_000_000}))
    # X_SFT = 6 N (D_init + D): 6e6 * (1000 + 300 * steps) flops; 100 tokens per step
    target_gflops = 6e6 * (1000 + 2450) / 1e9
    assert study.sft_steps_for(target_gflops, start) == 25  # 24.5 steps, rounded up
    assert study.sft_steps_for(0.0, start) == 1


def test_find_runs_prefers_the_folder_then_its_subfolders_then_the_newest_study(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTRL_RUNS", str(tmp_path / "runs"))
    old = tmp_path / "runs" / "20260101-000000-old"
    synthetic_run(old / "quickstart", "ppo", "ppo", [(1, 1), (2, 2)])
    synthetic_run(old / "quickstart", "sft-start", "sft", [(1, 1)])
    here = tmp_path / "here"
    here.mkdir()
    runs, start = study.find_runs(here)
    assert [r.name for r in runs] == ["ppo"] and start.name == "step-000000"
    synthetic_run(here, "sft", "sft", [(1, 1), (2, 2)])
    runs, start = study.find_runs(here)
    assert [r.name for r in runs] == ["sft"] and start is None
    monkeypatch.setenv("SFTRL_RUNS", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no training runs"):
        study.find_runs(tmp_path / "nothing")


def test_evaluation_is_reused_only_with_the_same_settings(tmp_path):
    folder = tmp_path / "eval" / "gp-id"
    folder.mkdir(parents=True)
    settings = study.StudySettings(eval_limit=40, eval_max_attempts=2)
    wanted = {"sampling": settings.eval_sampling().__dict__, "limit": 40, "max_attempts": 2}
    metrics = {"sampling": settings.eval_sampling().__dict__, "limit": 40, "env_overrides": {"max_attempts": 2},
               "success_rate": wilson_interval(1, 40)}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    assert not study._stale(folder / "metrics.json", wanted)
    assert study._stale(folder / "metrics.json", {**wanted, "limit": 300})
    assert study._stale(folder / "metrics.json", {**wanted, "max_attempts": 5})
    assert study._stale(tmp_path / "missing.json", wanted)


def test_tables_are_written_as_csv_and_json(tmp_path):
    path = study.write_table([{"a": 1, "b": "x"}, {"a": 2, "c": True}], tmp_path, "t")
    assert path.read_text().splitlines() == ["a,b,c", "1,x,", "2,,True"]
    assert json.loads((tmp_path / "tables" / "t.json").read_text())[1] == {"a": 2, "c": True}


def test_smoke_settings_replace_the_sizing_fields():
    from sftrl_kit.runs import settings_from

    namespace = {"model": "default", "start_steps": 99, "eval_limit": 7, "unrelated": 1}
    settings = settings_from(study.StudySettings, namespace, smoke=False)
    assert (settings.model, settings.start_steps, settings.eval_limit) == ("default", 99, 7)
    smoke = settings_from(study.StudySettings, namespace, smoke=True, eval_sets=["gp-id"])
    assert (smoke.model, smoke.start_steps, smoke.eval_sets) == ("tiny", 2, ["gp-id"])
