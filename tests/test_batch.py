"""Batch runs of notebooks: order, a shared run folder, failures reported, resume;
parameters checked before any kernel starts; what the notebooks print reaches the terminal."""

import json
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from sftrl_kit import tables
from sftrl_kit.batch import NotebookFailure, resolve_notebooks, run_batch, run_summary
from sftrl_kit.notebook_parameters import notebook_parameters, split_parameters


def notebook(path, *sources, parameters="run_dir = None"):
    cells = [new_code_cell(parameters)]
    cells[0].metadata["tags"] = ["parameters"]
    cells += [new_code_cell(source) for source in sources]
    book = new_notebook(cells=cells)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, path)


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebook(folder / "01_write.ipynb", "from pathlib import Path\n(Path(run_dir) / 'one.txt').write_text('from 01')")
    notebook(
        folder / "02_read.ipynb",
        "from pathlib import Path\nassert (Path(run_dir) / 'one.txt').read_text() == 'from 01'",
        "import os\nif not os.path.exists(flag):\n    raise RuntimeError('flag file ' + flag + ' is missing')",
        "(Path(run_dir) / 'two.txt').write_text('from 02')",
        parameters="run_dir = None\nflag = 'missing'",
    )  # only 02 has `flag`
    notebook(folder / "03_last.ipynb", "(__import__('pathlib').Path(run_dir) / 'three.txt').write_text('3')")
    return folder


@pytest.mark.slow  # starts a kernel per notebook
def test_a_failed_batch_names_the_cell_and_resumes_from_that_notebook(notebooks, tmp_path, caplog, capsys):
    run_dir = tmp_path / "batch"
    with pytest.raises(NotebookFailure) as failure:
        run_batch(
            ["01", "02_read", "03_last.ipynb"],
            {"flag": str(tmp_path / "flag")},
            run_dir=run_dir,
            notebooks_dir=notebooks,
            log_output=False,
        )
    assert failure.value.notebook == "02_read"
    assert failure.value.cell == 4
    assert "RuntimeError: flag file" in failure.value.error
    state = json.loads((run_dir / "batch.json").read_text())
    assert [e["status"] for e in state["notebooks"]] == ["ok", "failed", "pending"]
    assert (run_dir / "02_read.ipynb").is_file()
    assert not (run_dir / "03_last.ipynb").exists()

    (tmp_path / "flag").write_text("")
    (run_dir / "one.txt").write_text("from 01")  # 01 must not run again: its output is kept
    capsys.readouterr()
    assert run_batch([], resume=run_dir, notebooks_dir=notebooks, log_output=False) == run_dir.resolve()
    assert capsys.readouterr().out.startswith(f"[sftrl run] run folder {run_dir.resolve()}, resuming at 02_read\n")
    state = json.loads((run_dir / "batch.json").read_text())
    assert [e["status"] for e in state["notebooks"]] == ["ok", "ok", "ok"]
    assert (run_dir / "three.txt").read_text() == "3"
    injected = {name: _injected(run_dir / f"{name}.ipynb") for name in ("01_write", "02_read", "03_last")}
    assert f'run_dir = "{run_dir.resolve()}"' in injected["02_read"]
    assert "flag = " in injected["02_read"]
    assert "flag" not in injected["01_write"] + injected["03_last"]
    assert not [r for r in caplog.records if "unknown parameter" in r.getMessage()]  # papermill had nothing to warn


@pytest.mark.slow  # starts a kernel
def test_a_kernel_that_dies_is_reported_as_a_dead_kernel_not_as_a_cell(tmp_path):
    """A kernel killed mid-notebook (as the OOM killer does) leaves no cell error: the
    failure says the kernel died and where to look, and batch.json records it."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebook(folder / "01_dies.ipynb", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    run_dir = tmp_path / "batch"
    with pytest.raises(NotebookFailure) as failure:
        run_batch(["01"], run_dir=run_dir, notebooks_dir=folder, log_output=False)
    assert failure.value.cell is None
    assert "DeadKernelError" in failure.value.error
    assert "01_dies failed when its kernel died" in str(failure.value)
    assert json.loads((run_dir / "batch.json").read_text())["notebooks"][0]["status"] == "failed"


def _injected(path) -> str:
    executed = nbformat.read(path, as_version=4)
    return next(c.source for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))


def test_what_a_notebook_prints_reaches_the_terminal_progress_bars_included(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebook(
        folder / "01_talk.ipynb",
        "import sys\nfrom sftrl_kit.notebook import notebook_start\nrun_dir, smoke = notebook_start('talk', run_dir)\n"
        "print('hello from cell', 3)\nprint('a warning', file=sys.stderr)\n"
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(4), desc='steps'):\n    pass",
    )
    run_batch(["01"], run_dir=tmp_path / "run", notebooks_dir=folder)
    captured = capsys.readouterr()
    assert f"run folder {(tmp_path / 'run').resolve()}" in captured.out
    assert "hello from cell 3\n" in captured.out
    assert "a warning\n" in captured.err
    assert "steps: 100%" in captured.err
    assert "4/4" in captured.err
    assert "Executing" not in captured.err  # papermill's cell bar does not interleave


def test_text_progress_switches_tqdm_and_the_trainer_to_their_console_versions(monkeypatch):
    import tqdm.auto
    import tqdm.std
    import transformers.utils

    from sftrl_kit.notebook import text_progress

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.auto.tqdm)  # restored after the test
    monkeypatch.setattr(tqdm.auto, "trange", tqdm.auto.trange)
    monkeypatch.setattr(transformers.utils, "is_in_notebook", lambda: True)  # as in a kernel
    trainer = sys.modules.get("transformers.trainer")
    if trainer is not None:
        monkeypatch.setattr(trainer, "DEFAULT_PROGRESS_CALLBACK", None)
    text_progress()
    assert tqdm.auto.tqdm is tqdm.std.tqdm
    assert tqdm.auto.trange is tqdm.std.trange
    if trainer is None:
        assert transformers.utils.is_in_notebook() is False  # read by transformers.trainer when imported
    else:
        assert trainer.DEFAULT_PROGRESS_CALLBACK.__name__ == "ProgressCallback"


def test_parameters_are_read_from_the_cell_without_running_it(tmp_path):
    path = tmp_path / "01_p.ipynb"
    notebook(
        path,
        parameters="\n".join(
            [
                "run_dir = None  # the folder",
                "limit = 40  # None: all",
                "rate = 1e-5",
                "smoke = False",
                "name = 'x'",
                "sets = ['a', 'b']",
                "sizes = {}",
                "seed: int = 0",
                "budget: 'int | None' = 5",
                "scale: Optional[float] = None",
                "kind: Literal['gae', 'grpo'] = 'gae'",
                "folder: Path = Path('out')",
                "boom = open('/nonexistent/never-read')  # executing the cell would raise",
            ]
        ),
    )
    declared = notebook_parameters(path)
    assert list(declared) == [
        "run_dir",
        "limit",
        "rate",
        "smoke",
        "name",
        "sets",
        "sizes",
        "seed",
        "budget",
        "scale",
        "kind",
        "folder",
        "boom",
    ]
    accepted = {name: [v for v in (3, 2.5, True, "s", [1], {}, None) if p.admits(v)] for name, p in declared.items()}
    assert accepted == {
        "run_dir": [3, 2.5, True, "s", [1], {}, None],
        "limit": [3, None],
        "rate": [3, 2.5, None],
        "smoke": [True, None],
        "name": ["s", None],
        "sets": [[1], None],
        "sizes": [{}, None],
        "seed": [3],
        "budget": [3, None],
        "scale": [3, 2.5, None],
        "kind": ["s"],
        "folder": [3, 2.5, True, "s", [1], {}, None],
        "boom": [3, 2.5, True, "s", [1], {}, None],
    }
    assert declared["rate"].default == 1e-5
    assert declared["seed"].expected == "int"
    notebook(path, parameters="%matplotlib inline\nseed = 0")
    with pytest.raises(ValueError, match="parameters cell of .*01_p.ipynb is not plain Python"):
        notebook_parameters(path)


def test_each_notebook_gets_only_the_parameters_it_declares(tmp_path):
    notebook(tmp_path / "01_a.ipynb", parameters="run_dir = None\nseed = 0\neval_limit = 40")
    notebook(tmp_path / "02_b.ipynb", parameters="run_dir = None\nseed = 0\nepisodes = 6")
    declared = {name: notebook_parameters(tmp_path / f"{name}.ipynb") for name in ("01_a", "02_b")}
    shares = split_parameters(declared, {"seed": 3, "eval_limit": 5, "episodes": 2})
    assert shares == {"01_a": {"seed": 3, "eval_limit": 5}, "02_b": {"seed": 3, "episodes": 2}}
    with pytest.raises(
        ValueError,
        match=r"unknown parameter 'episode' \(did you mean 'episodes'\?\): "
        r"no notebook of this batch \(01_a, 02_b\) declares it",
    ):
        split_parameters(declared, {"episode": 2})
    with pytest.raises(ValueError, match=r"unknown parameter 'zzz': .* Their parameters: episodes, eval_limit, seed$"):
        split_parameters(declared, {"zzz": 2})
    with pytest.raises(ValueError, match=r"parameter seed expects int \(default in 01_a: 0\), got 1.5 \(float\)"):
        split_parameters(declared, {"seed": 1.5})


def test_a_bad_parameter_stops_the_batch_before_it_starts_or_resumes(notebooks, tmp_path, monkeypatch):
    from sftrl_kit import batch

    monkeypatch.setattr(batch, "_execute", lambda *args: pytest.fail("a notebook started"))
    with pytest.raises(ValueError, match="parameter flag expects str"):
        run_batch(["01", "02"], {"flag": 3}, run_dir=tmp_path / "new", notebooks_dir=notebooks)
    assert not (tmp_path / "new").exists()

    batch = tmp_path / "old"
    batch.mkdir()
    state = {
        "notebooks": [{"name": "01_write", "status": "ok"}, {"name": "02_read", "status": "failed"}],
        "parameters": {"flag": "abc"},
    }
    (batch / "batch.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"unknown parameter 'flg' \(did you mean 'flag'\?\)"):
        run_batch([], {"flg": "x"}, resume=batch, notebooks_dir=notebooks)
    assert json.loads((batch / "batch.json").read_text()) == state


def test_the_summary_says_where_notebooks_figures_tables_and_the_verdict_are(tmp_path):
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    for name in (
        "success_rate-vs-gflops.png",
        "success_rate-vs-gflops.svg",
        "ood-change.png",
        "ood-change.svg",
        "budgets.png",
    ):
        (run / "figures" / name).write_bytes(b"")
    (run / "sft" / "trainer").mkdir(parents=True)
    (run / "sft" / "trainer" / "README.md").write_text("a model card, not a table")
    (run / "batch.json").write_text(
        json.dumps({"notebooks": [{"name": "00_quickstart", "status": "ok", "seconds": 1830.0}], "parameters": {}})
    )
    tables.write_table([{"run": "ppo", "eval_set": "gp-id", "success": "3/4"}], run, "quickstart-evaluations")
    moved = [
        {
            "comparison": "ppo: end - start",
            "eval_set": "gp-rule-ood",
            "metric": "success_rate",
            "A": "9/40 = 22.5%",
            "B": "4/40 = 10.0%",
            "A - B (points)": "+12.5 [-3.6, +28.3]",
            "p": 0.1287,
            "significant": False,
        },
        {
            "comparison": "ppo end - sft end",
            "eval_set": "gp-rule-ood",
            "metric": "success_rate",
            "A": "9/40 = 22.5%",
            "B": "1/40 = 2.5%",
            "A - B (points)": "+20.0 [+6.3, +34.7]",
            "p": 0.0069,
            "significant": True,
            "test": "McNemar exact",
        },
    ]
    tables.write_table(moved, run, "quickstart-what-moved")

    (run / "views" / "route-7").mkdir(parents=True)
    for k in range(3):
        (run / "views" / "route-7" / f"{k:03d}.png").write_bytes(b"")

    lines = run_summary(run, most=2).splitlines()
    assert lines[:3] == [f"run folder: {run}", f"executed notebooks in {run}:", "  00_quickstart.ipynb  ok, 30.5 min"]
    assert lines[3:8] == [
        f"figures in {run / 'figures'}:",
        "  budgets.png",
        "  ood-change.png (.svg)",
        "  ... and 1 more",
        "other figures, files by folder: views/route-7 (3)",
    ]
    assert lines[8:11] == [
        f"tables in {run / 'tables'}:",
        "  quickstart-evaluations.csv",
        "  quickstart-what-moved.csv",
    ]
    assert lines[11] == "what moved (tables/quickstart-what-moved.csv):"
    assert lines[12].split() == [
        "comparison",
        "eval_set",
        "metric",
        "A",
        "-",
        "B",
        "(points)",
        "p",
        "significant",
        "test",
    ]
    assert lines[13].split() == [
        "ppo:",
        "end",
        "-",
        "start",
        "gp-rule-ood",
        "success_rate",
        "+12.5",
        "[-3.6,",
        "+28.3]",
        "0.1287",
        "False",
    ]
    assert lines[14].split()[-5:] == ["+34.7]", "0.0069", "True", "McNemar", "exact"]
    assert len(lines) == 15


def test_an_empty_run_folder_says_so(tmp_path):
    assert run_summary(tmp_path).splitlines() == [f"run folder: {tmp_path}", "figures: none", "tables: none"]


def test_presets_and_names_resolve_and_unknown_ones_are_errors(notebooks):
    assert resolve_notebooks(["smoke"], notebooks) == ["01_write", "02_read", "03_last"]
    assert resolve_notebooks(["quickstart"]) == ["00_quickstart"]
    assert resolve_notebooks(["quickstart"], vision=True) == ["00_quickstart", "06_recognition_probing"]
    with pytest.raises(ValueError, match="unknown notebook or preset 'nope'"):
        resolve_notebooks(["nope"], notebooks)
    with pytest.raises(FileNotFoundError, match="not a batch run folder"):
        run_batch([], resume=notebooks, notebooks_dir=notebooks)


def test_a_launched_job_streams_progress_bars_in_place_and_fails_with_what_the_terminal_showed(tmp_path, capsys):
    from sftrl_kit.launch import stream

    bar = "import sys\nfor i in range(3):\n    sys.stderr.write(f'\\rsteps {i + 1}/3')\nprint()\nprint('done')\n"
    stream([sys.executable, "-c", bar], tmp_path / "job.log")
    assert capsys.readouterr().out == "\rsteps 1/3\rsteps 2/3\rsteps 3/3\ndone\n"  # redrawn, not a line per refresh
    with pytest.raises(RuntimeError, match="exited with status 3") as failure:
        stream([sys.executable, "-c", bar + "sys.exit(3)"], tmp_path / "job.log", echo=False, tail=2)
    assert str(failure.value).splitlines()[-2:] == ["steps 3/3", "done"]


def test_a_preset_field_reaches_every_notebook_through_overrides(tmp_path):
    """-p start_steps 128 reaches every notebook that takes overrides, whether or not its
    cell lists start_steps; it is type-checked against the StudySettings field."""
    notebook(
        tmp_path / "00_a.ipynb", parameters="preset = 'quickstart'\nrun_dir = None\noverrides = {}\neval_limit = None"
    )
    notebook(tmp_path / "03_b.ipynb", parameters="preset = 'study'\nrun_dir = None\noverrides = {}")
    notebook(tmp_path / "09_c.ipynb", parameters="run_dir = None")
    declared = {name: notebook_parameters(tmp_path / f"{name}.ipynb") for name in ("00_a", "03_b", "09_c")}
    shares = split_parameters(
        declared, {"preset": "smoke", "start_steps": 128, "eval_limit": 5, "overrides": {"ppo_epochs": 2}}
    )
    assert shares == {
        "00_a": {
            "preset": "smoke",
            "eval_limit": 5,
            "overrides": {"ppo_epochs": 2, "start_steps": 128, "eval_limit": 5},
        },
        "03_b": {"preset": "smoke", "overrides": {"ppo_epochs": 2, "start_steps": 128, "eval_limit": 5}},
        "09_c": {},
    }
    with pytest.raises(ValueError, match=r"parameter eval_limit expects int \| None \(a preset field.*got 'abc'"):
        split_parameters(declared, {"eval_limit": "abc"})
    with pytest.raises(ValueError, match=r"parameter start_steps expects int .*got 1.5 \(float\)"):
        split_parameters(declared, {"start_steps": 1.5})
    with pytest.raises(ValueError, match="unknown preset 'huge'; presets: quickstart, study, smoke"):
        split_parameters(declared, {"preset": "huge"})
    with pytest.raises(ValueError, match=r"unknown parameter 'start_step' \(did you mean 'start_steps'\?\)"):
        split_parameters(declared, {"start_step": 3})


def test_sftrl_run_with_a_preset_passes_its_name_to_the_notebooks(tmp_path, monkeypatch):
    from sftrl_kit import batch

    started = []
    monkeypatch.setattr(
        batch,
        "_execute",
        lambda entry, folder, state, parameters, *rest: started.append((entry["name"], dict(parameters))),
    )
    run_batch(["quickstart"], {"ppo_updates": 3}, run_dir=tmp_path / "run")
    assert started == [("00_quickstart", {"preset": "quickstart", "ppo_updates": 3, "overrides": {"ppo_updates": 3}})]


def test_a_batch_on_an_image_task_brings_the_presets_vision_notebooks():
    """`sftrl run quickstart -p task gp-vl` runs 00 and then 06 (recognition probing)."""
    from sftrl_kit.batch import _studies_images

    assert _studies_images(["quickstart"], {"task": "gp-vl"})
    assert _studies_images(["quickstart"], {"overrides": {"task": "virl-vl"}})
    assert not _studies_images(["quickstart"], {})  # the preset's task: gp-l
    assert not _studies_images([], {"task": "gp-l"})
    with pytest.raises(ValueError, match="unknown study task 'gp-x'"):
        _studies_images(["quickstart"], {"task": "gp-x"})


def test_a_notebook_that_continues_a_study_chains_or_refuses(tmp_path, monkeypatch):
    """Opened by hand, 04, 05 and 07 never start a new folder or guess one: they take
    run_dir, else $SFTRL_RUN_DIR, and say which notebook to run when neither is there."""
    from sftrl_kit.notebook import RUN_DIR_VARIABLE, notebook_start

    monkeypatch.chdir(tmp_path)  # notebook_start moves to the kit's folder; this puts it back
    monkeypatch.setenv("SFTRL_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv(RUN_DIR_VARIABLE, raising=False)
    needs = "03_sft and 04_ppo_launch"
    with pytest.raises(ValueError, match=r"05_evaluation continues the study that 03_sft .* `sftrl lab`"):
        notebook_start("05_evaluation", None, "smoke", needs=needs)
    with pytest.raises(FileNotFoundError, match=r"run_dir .*typo does not exist: 03_sft and 04_ppo_launch"):
        notebook_start("05_evaluation", str(tmp_path / "typo"), "smoke", needs=needs)
    assert not (tmp_path / "runs").exists()  # nothing was made for the refused ones
    shared = tmp_path / "study"
    shared.mkdir()
    monkeypatch.setenv(RUN_DIR_VARIABLE, str(shared))
    assert notebook_start("05_evaluation", None, "smoke", needs=needs)[0] == shared.resolve()
    assert notebook_start("03_sft", None, "smoke")[0] == shared.resolve()  # every notebook shares it
    monkeypatch.delenv(RUN_DIR_VARIABLE)
    first = notebook_start("03_sft", None, "smoke")[0]  # a first stage alone gets a new folder
    assert first.parent == (tmp_path / "runs").resolve()
    assert first.name.endswith("-03_sft")


def test_a_new_batch_never_overwrites_an_earlier_batch_folder(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebook(folder / "01_a.ipynb", "raise AssertionError('no notebook may run')")
    run_dir = tmp_path / "batch"
    run_dir.mkdir()
    (run_dir / "batch.json").write_text(json.dumps({"notebooks": [{"name": "00_quickstart", "status": "ok"}]}))
    with pytest.raises(ValueError, match=r"holds a batch already \(00_quickstart\): `sftrl run --resume"):
        run_batch(["01"], run_dir=run_dir, notebooks_dir=folder, log_output=False)
    assert json.loads((run_dir / "batch.json").read_text())["notebooks"][0]["name"] == "00_quickstart"


def test_a_wrong_preset_value_stops_the_batch_before_any_kernel_or_folder(tmp_path):
    notebook(
        tmp_path / "00_a.ipynb",
        "raise AssertionError('no notebook may run')",
        parameters="preset = 'quickstart'\nrun_dir = None\noverrides = {}",
    )
    with pytest.raises(ValueError, match="advantage must be 'gae', 'grpo' or 'rloo', got 'ppo2'"):
        run_batch(["00"], {"advantage": "ppo2"}, run_dir=tmp_path / "new", notebooks_dir=tmp_path, log_output=False)
    with pytest.raises(ValueError, match="start_rules"):
        run_batch(["00"], {"overrides": {"start_rules": "all"}}, run_dir=tmp_path / "new", notebooks_dir=tmp_path)
    assert not (tmp_path / "new").exists()
