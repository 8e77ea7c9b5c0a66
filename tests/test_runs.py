"""Batch runs of notebooks: order, a shared run folder, failures reported, resume."""

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from sftrl_kit.runs import NotebookFailure, resolve_notebooks, run_batch

pytestmark = pytest.mark.slow  # each notebook starts a kernel


def notebook(path, *sources, parameters="run_dir = None\nflag = 'missing'"):
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
    notebook(folder / "02_read.ipynb",
             "from pathlib import Path\nassert (Path(run_dir) / 'one.txt').read_text() == 'from 01'",
             "import os\nif not os.path.exists(flag):\n    raise RuntimeError('flag file ' + flag + ' is missing')",
             "(Path(run_dir) / 'two.txt').write_text('from 02')")
    notebook(folder / "03_last.ipynb", "(__import__('pathlib').Path(run_dir) / 'three.txt').write_text('3')")
    return folder


def test_a_failed_batch_names_the_cell_and_resumes_from_that_notebook(notebooks, tmp_path):
    run_dir = tmp_path / "batch"
    with pytest.raises(NotebookFailure) as failure:
        run_batch(["01", "02_read", "03_last.ipynb"], {"flag": str(tmp_path / "flag")}, run_dir=run_dir,
                  notebooks_dir=notebooks, log_output=False)
    assert failure.value.notebook == "02_read" and failure.value.cell == 4  # In [4]: after the parameters and the injected cell
    assert "RuntimeError: flag file" in failure.value.error
    state = json.loads((run_dir / "batch.json").read_text())
    assert [e["status"] for e in state["notebooks"]] == ["ok", "failed", "pending"]
    assert (run_dir / "02_read.ipynb").is_file() and not (run_dir / "03_last.ipynb").exists()

    (tmp_path / "flag").write_text("")
    (run_dir / "one.txt").write_text("from 01")  # 01 must not run again: its output is kept
    assert run_batch([], resume=run_dir, notebooks_dir=notebooks, log_output=False) == run_dir.resolve()
    state = json.loads((run_dir / "batch.json").read_text())
    assert [e["status"] for e in state["notebooks"]] == ["ok", "ok", "ok"]
    assert (run_dir / "three.txt").read_text() == "3"
    executed = nbformat.read(run_dir / "02_read.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert f"run_dir = \"{run_dir.resolve()}\"" in injected[0].source


def test_presets_and_names_resolve_and_unknown_ones_are_errors(notebooks):
    assert resolve_notebooks(["smoke"], notebooks) == ["01_write", "02_read", "03_last"]
    assert resolve_notebooks(["quickstart"]) == ["00_quickstart"]
    with pytest.raises(ValueError, match="unknown notebook or preset 'nope'"):
        resolve_notebooks(["nope"], notebooks)
    with pytest.raises(FileNotFoundError, match="not a batch run folder"):
        run_batch([], resume=notebooks, notebooks_dir=notebooks)
