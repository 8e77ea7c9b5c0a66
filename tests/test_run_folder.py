"""The run-folder layout: what counts as a checkpoint, counters, metric rows on resume,
evaluation folders, trainer state, new run folders."""

import json

import pytest

from sftrl_kit import run_folder
from sftrl_kit.episodes import Episode, Turn, read_episodes

# checkpoint.json as train/ppo.py has written it since evaluations were keyed (format kept)
PPO_COUNTERS = """{
  "method": "ppo",
  "update": 2,
  "step": 2,
  "tokens": 1234,
  "generated_tokens": 456,
  "init_tokens": 7890,
  "num_parameters": 3000000,
  "buffer_lambda": 6.0,
  "flops": 1.2e+17,
  "gflops": 120000000.0,
  "seconds": 12.34
}
"""


def checkpoint(run, method, step, **counters):
    folder = run_folder.checkpoint_dir(run, method, step)
    (folder / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    run_folder.write_counters(folder, {"method": method, "step": step, **counters})
    return folder


def test_only_folders_with_their_counters_are_checkpoints_in_the_order_of_their_steps(tmp_path):
    assert run_folder.list_checkpoints(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="no checkpoints under"):
        run_folder.last_checkpoint(tmp_path)
    later = checkpoint(tmp_path, "ppo", 10_000)  # update-10000 sorts before update-9999 by name
    earlier = checkpoint(tmp_path, "ppo", 9_999)
    half = run_folder.checkpoint_dir(tmp_path, "ppo", 10_001)  # weights written, then the run died
    half.mkdir()
    (half / "config.json").write_text("{}")
    (half / "checkpoint.json.partial").write_text('{"step": 10')
    assert run_folder.list_checkpoints(tmp_path) == [earlier, later]
    assert run_folder.last_checkpoint(tmp_path) == later
    assert [p.name for p in (earlier, later)] == ["update-9999", "update-10000"]
    assert run_folder.checkpoint_dir(tmp_path, "sft", 30).name == "step-000030"
    with pytest.raises(ValueError, match="method must be"):
        run_folder.checkpoint_dir(tmp_path, "dpo", 1)


def test_counters_read_back_as_written_and_in_the_format_of_earlier_runs(tmp_path):
    folder = checkpoint(tmp_path, "sft", 4, tokens=800, gflops=1.5)
    assert run_folder.read_counters(folder) == {"method": "sft", "step": 4, "tokens": 800, "gflops": 1.5}
    assert (folder / "checkpoint.json").read_text() == json.dumps(
        {"method": "sft", "step": 4, "tokens": 800, "gflops": 1.5}, indent=2
    ) + "\n"
    old = tmp_path / "old" / "checkpoints" / "update-0002"
    old.mkdir(parents=True)
    (old / "checkpoint.json").write_text(PPO_COUNTERS)
    assert run_folder.read_counters(old) == json.loads(PPO_COUNTERS)
    assert run_folder.list_checkpoints(tmp_path / "old") == [old]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"step": 3, "tokens": ', "is not valid JSON"),
        ('{"update": 3, "tokens": 10}', "holds no checkpoint counters"),
        ("[1, 2]", "holds no checkpoint counters"),
        ('{"step": "3"}', "holds no checkpoint counters"),
    ],
)
def test_a_corrupt_or_unknown_checkpoint_json_is_an_error_naming_the_file(tmp_path, text, message):
    folder = tmp_path / "checkpoints" / "step-000003"
    folder.mkdir(parents=True)
    (folder / "checkpoint.json").write_text(text)
    path = str(folder / "checkpoint.json")
    with pytest.raises(ValueError, match=message) as error:
        run_folder.read_counters(folder)
    assert path in str(error.value)
    with pytest.raises(ValueError, match=message):
        run_folder.list_checkpoints(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        run_folder.read_counters(tmp_path)


def test_rows_after_the_resume_step_are_dropped_and_the_rest_kept_byte_for_byte(tmp_path):
    kept = [
        '{"method": "ppo", "update": 1, "step": 1, "loss": 1e-05, "note": "caf\\u00e9"}\n',
        '{"step": 2, "update": 2, "success_rate": 0.25000000000000006, "nested": {"a": [1, 2.0]}}\n',
    ]
    text = (
        "".join(kept[:1])
        + "\n"  # a blank line is not a row
        + kept[1]
        + '{"step": 3, "update": 3}\n'
        + '{"step": 10}\n'
        + '{"step": 1, "lo'
    )  # cut off mid-write
    (tmp_path / "metrics.jsonl").write_text(text)
    run_folder.drop_metrics_after(tmp_path, 2)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(kept)
    assert [r["step"] for r in run_folder.read_metrics(tmp_path)] == [1, 2]
    run_folder.drop_metrics_after(tmp_path / "nothing", 2)  # no metrics yet: nothing to do
    run_folder.append_metrics(tmp_path, {"step": 3, "loss": 0.5})
    assert (tmp_path / "metrics.jsonl").read_text().splitlines()[-1] == '{"step": 3, "loss": 0.5}'
    run_folder.drop_metrics_after(tmp_path, 0)
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_a_metrics_row_that_cannot_be_placed_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"update": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: a metrics row without an integer 'step'"):
        run_folder.drop_metrics_after(tmp_path, 1)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        run_folder.drop_metrics_after(tmp_path, 1)


def test_an_evaluation_is_complete_once_its_metrics_are_written_and_is_found_by_its_key(tmp_path):
    key = {"eval_set": "gp-id", "limit": 2, "max_attempts": 5}
    other = {**key, "max_attempts": 2}
    episodes = [Episode("gp-l", {}, {}, "p", [Turn("a", 1.0, "correct", "f")])]
    assert run_folder.read_evaluation(tmp_path, key) is None
    folder = run_folder.write_evaluation(tmp_path, {"key": key, "episodes": 1}, episodes)
    assert folder == tmp_path / "eval" / "gp-id" / run_folder.key_digest(key)
    assert run_folder.read_evaluation(tmp_path, key) == {"key": key, "episodes": 1, "folder": str(folder)}
    assert read_episodes(folder / run_folder.EVAL_EPISODES)[0].turns[0].outcome == "correct"
    interrupted = run_folder.evaluation_folder(tmp_path, other)  # episodes written, metrics not yet
    interrupted.mkdir(parents=True)
    (interrupted / run_folder.EVAL_EPISODES).write_text("")
    assert run_folder.read_evaluation(tmp_path, other) is None
    assert [m["folder"] for m in run_folder.read_evaluations(tmp_path)] == [str(folder)]
    copy = run_folder.copy_evaluation(run_folder.read_evaluation(tmp_path, key), tmp_path / "step-0", copied_from="x")
    assert json.loads((copy / "metrics.json").read_text()) == {"key": key, "episodes": 1, "copied_from": "x"}
    assert (copy / run_folder.EVAL_EPISODES).read_bytes() == (folder / run_folder.EVAL_EPISODES).read_bytes()


def test_an_evaluation_whose_folder_does_not_match_its_key_is_refused(tmp_path):
    key = {"eval_set": "gp-id", "limit": 2}
    folder = run_folder.write_evaluation(tmp_path, {"key": key}, [])
    (folder / "metrics.json").write_text(json.dumps({"key": {**key, "limit": 3}}))
    with pytest.raises(ValueError, match="does not hold the key its folder is named after"):
        run_folder.read_evaluations(tmp_path)


def test_trainer_state_reads_back_and_a_missing_one_says_which_checkpoint(tmp_path):
    import torch

    tensors = {"0.exp_avg": torch.arange(4.0), "0.exp_avg_sq": torch.ones(2, 2)}
    run_folder.write_trainer_state(tmp_path, tensors, {"param_groups": [{"lr": 1e-6}], "scalars": {"0.step": 3}})
    loaded, optimizer = run_folder.read_trainer_state(tmp_path)
    assert optimizer == {"param_groups": [{"lr": 1e-6}], "scalars": {"0.step": 3}}
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'}: unreadable trainer state"):
        run_folder.read_trainer_state(tmp_path / "empty")


def test_sft_resumes_from_trls_last_numbered_checkpoint(tmp_path):
    assert run_folder.last_trainer_step(tmp_path) is None
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-final"):
        (run_folder.trainer_dir(tmp_path) / name).mkdir(parents=True)
    (run_folder.trainer_dir(tmp_path) / "checkpoint-99").write_text("a file, not a checkpoint")
    assert run_folder.last_trainer_step(tmp_path) == 10


def test_new_run_folders_are_named_by_time_and_never_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTRL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(run_folder.time, "strftime", lambda pattern: "20260101-120000")  # both in one second
    first, second = run_folder.new_run_dir("eval"), run_folder.new_run_dir("eval")
    assert run_folder.runs_root() == tmp_path / "runs"
    assert (first, second) == (tmp_path / "runs" / "20260101-120000-eval", tmp_path / "runs" / "20260101-120000-eval-2")
    assert first.is_dir()
    assert second.is_dir()


def test_a_folder_with_a_run_but_no_settings_file_is_refused(tmp_path):
    """Its settings cannot be told, so nothing may train into it (nor be returned from it)."""
    checkpoint = run_folder.checkpoint_dir(tmp_path, "ppo", 0)
    checkpoint.mkdir(parents=True)
    run_folder.write_counters(checkpoint, {"step": 0, "tokens": 0})
    claim = dict(done=0, length_fields=("updates",), outside_result=("run_dir",))
    with pytest.raises(run_folder.RunSettingsError, match="holds a run but no ppo.yaml"):
        run_folder.claim_run_folder(tmp_path, "ppo", {"updates": 1}, **claim)
    assert run_folder.claim_run_folder(tmp_path / "new", "ppo", {"updates": 1}, **claim) == {}
    (tmp_path / "ppo.yaml").write_text("updates: 1\nlora: {r: 4}\nrun_dir: a\n")
    assert run_folder.claim_run_folder(tmp_path, "ppo", {"updates": 3, "lora": {"r": 4}, "run_dir": "b"}, **claim) == {
        "updates": (1, 3)
    }
    with pytest.raises(run_folder.RunSettingsError, match=r"lora: \{'r': 4\} in the folder, \{'r': 8\} given"):
        run_folder.claim_run_folder(tmp_path, "ppo", {"updates": 1, "lora": {"r": 8}}, **claim)
    with pytest.raises(run_folder.RunSettingsError, match=r"new_field: '\(absent\)' in the folder, 1 given"):
        run_folder.claim_run_folder(tmp_path, "ppo", {"updates": 1, "lora": {"r": 4}, "new_field": 1}, **claim)


def test_a_run_from_a_checkpoint_counts_its_tokens_as_d_init(tmp_path):
    from sftrl_kit.train.ppo import PPOSettings
    from sftrl_kit.train.sft import SFTSettings

    run_folder.write_counters(tmp_path, {"step": 24, "tokens": 51234})
    assert run_folder.start_tokens(tmp_path) == 51234
    assert PPOSettings(model=str(tmp_path)).init_tokens == 51234
    assert SFTSettings(model=str(tmp_path)).init_tokens == 51234
    assert PPOSettings(model="tiny").init_tokens == 0
    assert PPOSettings(model=str(tmp_path), init_tokens=7).init_tokens == 7  # given: kept


def test_a_study_folder_moved_whole_still_holds_its_runs(tmp_path):
    """Paths inside the study folder (the data file, the start checkpoint) are compared
    relative to it: a copied or moved study reuses its runs; a path elsewhere still counts."""
    old, new = tmp_path / "old" / "study", tmp_path / "new" / "study"
    (old / "sft").mkdir(parents=True)
    recorded = {"run_dir": str(old / "sft"), "dataset": str(old / "data" / "d.jsonl"), "max_steps": 4}
    (old / "sft" / "sft.yaml").write_text(json.dumps(recorded))  # YAML reads JSON
    (new / "sft").mkdir(parents=True)
    (new / "sft" / "sft.yaml").write_text(json.dumps(recorded))  # the folder, copied
    claim = dict(done=0, length_fields=("max_steps",), outside_result=("run_dir",))
    moved = {"run_dir": str(new / "sft"), "dataset": str(new / "data" / "d.jsonl"), "max_steps": 4}
    assert run_folder.claim_run_folder(new / "sft", "sft", moved, **claim) == {}
    elsewhere = {**moved, "dataset": str(tmp_path / "other" / "d.jsonl")}
    with pytest.raises(run_folder.RunSettingsError, match="dataset: "):
        run_folder.claim_run_folder(new / "sft", "sft", elsewhere, **claim)
    linked = tmp_path / "arm" / "study"  # an arm's run folder reusing the study through a link
    linked.parent.mkdir()
    linked.symlink_to(new)
    through = {"run_dir": str(linked / "sft"), "dataset": str(linked / "data" / "d.jsonl"), "max_steps": 4}
    assert run_folder.claim_run_folder(linked / "sft", "sft", through, **claim) == {}
