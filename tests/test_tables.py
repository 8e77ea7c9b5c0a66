"""tables.py: rows from run folders and the comparisons between them. "End against start"
is computed in one place (end_against_start), and the study's verdict is assembled once
(verdict_rows), as notebooks 00 and 05 show it."""

import pytest
from conftest import synthetic_run

from sftrl_kit import study, tables
from sftrl_kit.evaluation import evaluation_key
from sftrl_kit.models import SamplingConfig
from sftrl_kit.run_folder import checkpoint_dir, write_counters, write_evaluation
from sftrl_kit.stats import rate_by_task

SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=64)


def test_change_from_start_and_what_moved_read_one_end_against_start(tmp_path, monkeypatch):
    rl = synthetic_run(tmp_path, "rl", "ppo", [(10, 6), (20, 8), (30, 30), (35, 31)])
    sft = synthetic_run(tmp_path, "sft", "sft", [(10, 6), (30, 4), (40, 2)])
    calls = []
    computed_once = tables.end_against_start

    def spy(rows, run, eval_set, metric="success_rate"):
        calls.append((run, eval_set, metric))
        return computed_once(rows, run, eval_set, metric)

    monkeypatch.setattr(tables, "end_against_start", spy)
    rows = tables.checkpoint_rows([rl, sft])
    for metric in ("success_rate", "per_step_accuracy"):
        calls.clear()
        moved = {
            (r["comparison"], r["eval_set"]): r for r in tables.what_moved([rl, sft], ["id", "ood"], metric=metric)
        }
        assert calls == [(run, eval_set, metric) for run in ("rl", "sft") for eval_set in ("id", "ood")]
        for eval_set in ("id", "ood"):
            calls.clear()
            changes = tables.change_from_start(rows, eval_set, metric)
            assert calls == [("rl", eval_set, metric), ("sft", eval_set, metric)]  # the same function, per run
            for change in changes:
                row = moved[(f"{change['run']}: end - start", eval_set)]
                shown = f"{change['change']:+.1f} [{change['low']:+.1f}, {change['high']:+.1f}]"
                assert row["A - B (points)"] == shown
                assert row["p"] == change["p_value"]
                assert row["test"] == change["test"]
                assert row["A"].split(" = ")[1].startswith(f"{change['end']:.1f}%")
                assert row["B"].split(" = ")[1].startswith(f"{change['start']:.1f}%")
            end_to_end = moved[("rl end - sft end", eval_set)]  # the branches' ends: the same ends
            assert end_to_end["A"] == moved[("rl: end - start", eval_set)]["A"]
            assert end_to_end["B"] == moved[("sft: end - start", eval_set)]["A"]
            assert (end_to_end["GFLOPs A"], end_to_end["GFLOPs B"]) == (30.0, 20.0)


def test_a_run_starts_and_ends_at_its_first_and_last_checkpoint_evaluated_there(tmp_path):
    run = synthetic_run(tmp_path, "rl", "ppo", [(10, 6), (20, 8), (30, 12)])
    rows = tables.checkpoint_rows([run])
    moved = tables.end_against_start(rows, "rl", "ood", "success_rate")
    assert (moved.start["step"], moved.end["step"]) == (0, 2)
    assert moved.comparison["difference"] == pytest.approx((12 - 6) / 50)
    assert tables.end_against_start(rows[:2], "rl", "ood") is None  # one checkpoint on ood: nothing to compare
    rows[0]["success_rate_rate"] = None  # a start without the rate is named, not skipped
    with pytest.raises(KeyError, match="rl update-0000: its evaluation on id has no rate 'success_rate'"):
        tables.change_from_start(rows, "id")


def test_what_moved_names_a_missing_end_instead_of_leaving_a_row_out(tmp_path):
    """A table compares each run's first and last evaluated checkpoints on every set it is
    asked for: a set missing at an end, or no evaluation at the asked settings, is an error
    that names what the checkpoint holds, never a table with fewer rows."""
    import shutil

    run = synthetic_run(tmp_path, "rl", "ppo", [(10, 6), (20, 8), (30, 12)])
    with pytest.raises(FileNotFoundError, match="has no evaluation on fake"):
        tables.what_moved([run], ["fake"])
    with pytest.raises(FileNotFoundError, match="has no evaluation on id with max_attempts=2"):
        tables.what_moved([run], ["id"], keys={"id": {"max_attempts": 2}})
    shutil.rmtree(checkpoint_dir(run, "ppo", 2) / "eval" / "ood")  # an evaluation interrupted at the end
    with pytest.raises(FileNotFoundError, match="update-0002 has no evaluation on ood"):
        tables.what_moved([run], ["id", "ood"])
    assert len(tables.what_moved([run], ["id"])) == 1


def per_task(eval_set, hits, answers=1):
    """A rate over 40 tasks of eval_set: hits[i] of `answers` right in task i."""
    return rate_by_task({f"{eval_set}:{i}": (hit, answers) for i, hit in enumerate(hits)})


def rich_run(root, name, method, counts, sets):
    """A run folder whose evaluations carry every rate the verdict reads: per checkpoint and
    set, counts[step] of 40 tasks solved, and rates derived from it (first answers,
    recognition, the memorisation signatures as failure modes)."""
    run_dir = root / name
    tasks = range(40)
    for step, k in enumerate(counts):
        folder = checkpoint_dir(run_dir, method, step)
        for eval_set in sets:
            metrics = {
                "key": evaluation_key(
                    eval_set, [{"env_config": {}}] * 40, "gp-l", SAMPLING, engine="hf", max_attempts=5
                ),
                "seconds": 1.0,
                "episodes": 40,
                "mean_attempts": 1.0,
                "mean_return": 0.0,
                "success_rate": per_task(eval_set, [int(i < k) for i in tasks]),
                "per_step_accuracy": per_task(eval_set, [min(2, max(0, k - 2 * i)) for i in tasks], 2),
                "first_answer_accuracy": per_task(eval_set, [int(i < k // 2) for i in tasks]),
                "recognition_accuracy": per_task(eval_set, [int(i % 3 != step % 3) for i in tasks]),
                "failure_modes": {
                    "answers": 80,
                    "other_rule_used": {"rate": per_task(eval_set, [int(i < 2 * step) for i in tasks], 2)},
                    "other_rule_numbers": {"rate": per_task(eval_set, [int(i < 3 * step) for i in tasks], 2)},
                    "valid": {"rate": per_task(eval_set, [int(i < 10 + step) for i in tasks], 2)},
                },
            }
            write_evaluation(folder, metrics, episodes=[])
        write_counters(folder, {"method": method, "step": step, "gflops": 10.0 * step})
    return run_dir


def test_verdict_rows_of_an_image_task_with_the_fake_rule_control(tmp_path):
    settings = study.StudySettings(task="gp-vl", fake_rule=True)
    info = settings.task_info
    sets = [*settings.headline_sets, info.fake_rule_set]
    runs = [
        rich_run(tmp_path, "ppo", "ppo", [6, 9, 14], sets),
        rich_run(tmp_path, "sft", "sft", [6, 20, 30], sets),
    ]
    keys = {name: {"max_attempts": 5} for name in sets}
    rows = tables.verdict_rows(settings, runs, keys)

    def block(eval_sets, metric):
        return [(f"{run}: end - start", s, metric) for run in ("ppo", "sft") for s in eval_sets] + [
            ("ppo end - sft end", s, metric) for s in eval_sets
        ]

    headline = [info.id_set, info.rule_ood_set, info.visual_ood_set]
    assert headline == ["gp-id", "gp-rule-ood", "gp-visual-ood"]
    assert [(r["comparison"], r["eval_set"], r["metric"]) for r in rows] == (
        block(headline, "success_rate")
        + block([info.rule_ood_set], "other_rule_used")
        + block([info.rule_ood_set], "other_rule_numbers")
        + block(headline, "valid")
        + block([info.fake_rule_set], tables.FIRST_ANSWER_METRIC)
        + block([info.fake_rule_set], "other_rule_used")
        + block(headline, "recognition_accuracy")
    )
    # exactly notebook 00's assembly, row for row
    typed = tables.what_moved(runs, settings.headline_sets, metric=info.metric, keys=keys)
    for signature in info.signatures:
        typed += tables.what_moved(runs, [info.rule_ood_set], metric=signature, keys=keys)
    typed += tables.what_moved(runs, settings.headline_sets, metric="valid", keys=keys)
    typed += tables.what_moved(runs, [info.fake_rule_set], metric=tables.FIRST_ANSWER_METRIC, keys=keys)
    typed += tables.what_moved(runs, [info.fake_rule_set], metric="other_rule_used", keys=keys)
    typed += tables.what_moved(runs, settings.headline_sets, metric="recognition_accuracy", keys=keys)
    assert rows == typed
    sft_ood = next(r for r in rows if r["comparison"] == "sft: end - start" and r["eval_set"] == "gp-rule-ood")
    assert sft_ood["A"].startswith("30/40 = 75.0%")
    assert sft_ood["B"].startswith("6/40 = 15.0%")
    assert sft_ood["max_attempts"] == 5

    text = study.StudySettings(task="gp-l")  # a text task without the control: headline and signatures only
    text_rows = tables.verdict_rows(text, runs, keys)
    assert [(r["comparison"], r["eval_set"], r["metric"]) for r in text_rows] == (
        block(["gp-id", "gp-rule-ood"], "success_rate")
        + block(["gp-rule-ood"], "other_rule_used")
        + block(["gp-rule-ood"], "other_rule_numbers")
        + block(["gp-id", "gp-rule-ood"], "valid")
    )


def test_pooled_verdict_pools_each_comparison_over_the_seeds(tmp_path):
    """One row per comparison of the verdict: each seed's difference as its own verdict
    states it, and their mean with the pooled test."""
    settings = study.StudySettings(task="gp-l")
    sets = settings.headline_sets
    seeds = {
        0: [
            rich_run(tmp_path / "s0", "ppo", "ppo", [6, 9, 14], sets),
            rich_run(tmp_path / "s0", "sft", "sft", [6, 20, 30], sets),
        ],
        1: [
            rich_run(tmp_path / "s1", "ppo", "ppo", [6, 8, 10], sets),
            rich_run(tmp_path / "s1", "sft", "sft", [6, 25, 36], sets),
        ],
    }
    keys = {seed: {name: {"max_attempts": 5} for name in sets} for seed in seeds}
    rows = tables.pooled_verdict(settings, seeds, keys)
    alone = {seed: tables.verdict_rows(settings, runs, keys[seed]) for seed, runs in seeds.items()}
    assert [(r["comparison"], r["eval_set"], r["metric"]) for r in rows] == [
        (r["comparison"], r["eval_set"], r["metric"]) for r in alone[0]
    ]
    for row, first, second in zip(rows, alone[0], alone[1]):
        assert (
            row["per seed (points)"] == f"{first['A - B (points)'].split()[0]}, {second['A - B (points)'].split()[0]}"
        )
        assert row["seeds"] == 2
    sft_id = next(r for r in rows if r["comparison"] == "sft: end - start" and r["eval_set"] == "gp-id")
    assert sft_id["pooled (points)"].startswith("+67.5 [")  # (24/40 + 30/40) / 2
    assert sft_id["p"] < 1e-6
    with pytest.raises(ValueError, match="different comparisons"):
        tables.pooled_verdict(settings, {0: seeds[0], 1: seeds[1][:1]}, keys)
