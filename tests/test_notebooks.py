"""The committed notebooks: clean, parameterised, and executed end to end in smoke mode."""

import json
import os
import subprocess
import sys

import nbformat
import pytest
from conftest import REPO
from papermill import inspect_notebook

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))


def test_the_ordered_notebooks_are_all_there():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_parseable_parameters(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} has outputs"
            assert cell.execution_count is None, f"{path.name} has an execution count"
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    parameters = inspect_notebook(str(path))
    assert {"preset", "run_dir", "overrides"} <= set(parameters)
    assert len(parameters) == tagged[0].source.count("\n") + 1, "a parameter line papermill cannot parse"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_sizes_come_from_the_preset_and_every_figure_or_table_is_followed_by_a_reading(path):
    """No notebook sets sizes by hand (smoke mode included): a parameter that names a
    preset field defaults to None, the preset's value. And every code cell that ends in
    a figure or a table is followed by a markdown cell saying how to read it."""
    from sftrl_kit.presets import override_fields

    book = nbformat.read(path, as_version=4)
    sizes = {name: value for name, value in inspect_notebook(str(path)).items() if name in override_fields()}
    assert {name: p["default"] for name, p in sizes.items()} == {name: "None" for name in sizes}
    assert "if smoke" not in "".join(c.source for c in book.cells if c.cell_type == "code")
    for cell, following in zip(book.cells, book.cells[1:] + [None]):
        last = cell.source.strip().splitlines()[-1] if cell.source.strip() else ""
        shows = cell.cell_type == "code" and (
            "save_figure(" in cell.source
            or "training_curves(" in cell.source
            or "EpisodeViewer(" in last
            or last.startswith(("pd.", "outcomes"))
        )
        if shows:
            assert following is not None, f"no reading after: {last}"
            assert following.cell_type == "markdown", f"no reading after: {last}"


@pytest.fixture(scope="module")
def smoke_batch(tmp_path_factory):
    """`sftrl run smoke`: every notebook headless through papermill on the tiny model,
    into one batch folder; the completed process and the folder."""
    root = tmp_path_factory.mktemp("smoke-batch")
    env = {**os.environ, "SFTRL_RUNS": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "sftrl_kit.cli", "run", "smoke", "--out", str(root / "smoke")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return done, root


@pytest.mark.slow
def test_sftrl_run_smoke_executes_every_notebook(smoke_batch):
    """The CI smoke run: every notebook headless through papermill on the tiny model."""
    done, tmp_path = smoke_batch
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((tmp_path / "smoke" / "batch.json").read_text())
    assert [e["status"] for e in state["notebooks"]] == ["ok"] * len(NOTEBOOKS)
    for name in (
        "quickstart-success_rate-vs-gflops.png",
        "quickstart-ood-change-from-start.png",
        "success_rate-vs-gflops.png",
        "budget-ablation-ood-change.png",
    ):
        assert (tmp_path / "smoke" / "figures" / name).stat().st_size > 1000
    moved = json.loads((tmp_path / "smoke" / "tables" / "quickstart-what-moved.json").read_text())
    assert {r["comparison"] for r in moved} >= {"ppo: end - start", "sft: end - start", "ppo end - sft end"}
    assert "EpisodeViewer" in (tmp_path / "smoke" / "01_environments.ipynb").read_text()
    assert (tmp_path / "smoke" / "ppo" / "processes.json").is_file()  # 04 launched processes under accelerate


@pytest.mark.slow
def test_nbval_lax_finds_no_failing_cell_in_the_committed_notebooks(smoke_batch, tmp_path):
    """nbval executes the notebooks as committed (smoke mode, via SFTRL_SMOKE), one after
    the other in one shared run folder as in JupyterLab under `sftrl lab`, and fails on
    any cell that raises; outputs are not compared (lax).

    The shared folder is the smoke batch's: every training run there is already done
    (and tested by the batch), so each notebook's cells read them back instead of
    training again, which takes the test from about 280 s to about 70 s on 2 cores."""
    batch_done, batch_root = smoke_batch
    assert batch_done.returncode == 0, "the smoke batch failed (test_sftrl_run_smoke_executes_every_notebook)"
    env = {
        **os.environ,
        "SFTRL_SMOKE": "1",
        "SFTRL_RUNS": str(tmp_path),
        "SFTRL_RUN_DIR": str(batch_root / "smoke"),  # one folder for every notebook, as `sftrl lab` gives them
        "PYTHONPATH": str(REPO / "tests"),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "nbval_patience",
            "--rootdir",
            str(REPO),
            str(REPO / "notebooks"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    code_cells = sum(1 for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code")
    assert f"{code_cells} passed" in done.stdout
