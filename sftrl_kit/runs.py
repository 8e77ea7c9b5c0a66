"""Run folders and batch runs of the ordered notebooks.

Every run's artefacts (executed notebooks, configs, checkpoints, episodes, tables,
figures) live in one folder, papermill_runs/<YYYYmmdd-HHMMSS>-<name>/ (the root can be
moved with $SFTRL_RUNS). A batch executes notebooks in order with papermill, passing
each the same `run_dir`, so a later notebook finds what an earlier one wrote there.
The batch's state is kept in run_dir/batch.json: a failed batch stops at the failing
notebook, reports the cell and error, and `run_batch(..., resume=run_dir)` starts again
from that notebook.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

KIT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = KIT_ROOT / "notebooks"
BATCH_FILE = "batch.json"

PRESETS: dict[str, list[str] | None] = {
    "quickstart": ["00_quickstart"],
    "smoke": None,  # every notebook in the folder, with smoke=True
    "study": ["02_data_generation", "03_sft", "04_ppo_launch", "05_evaluation", "07_failure_cases", "08_ablations"],
}
PRESET_PARAMETERS: dict[str, dict[str, Any]] = {"smoke": {"smoke": True}}


def runs_root() -> Path:
    return Path(os.environ.get("SFTRL_RUNS", "papermill_runs"))


def new_run_dir(name: str, root: str | Path | None = None) -> Path:
    """<root>/<YYYYmmdd-HHMMSS>-<name>/, made unique if two start in one second."""
    root = Path(root) if root is not None else runs_root()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = root / f"{stamp}-{name}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = root / f"{stamp}-{name}-{suffix}"
    folder.mkdir(parents=True)
    return folder


# --- inside a notebook ---------------------------------------------------------------

def notebook_start(name: str, run_dir: str | None, smoke: bool) -> tuple[Path, bool]:
    """The first call of every notebook: work from the kit's folder (so data/ and
    configs/ resolve as in the README), open the run folder, and settle smoke mode
    (the `smoke` parameter, or SFTRL_SMOKE=1 in the environment)."""
    if (KIT_ROOT / "pyproject.toml").is_file():
        os.chdir(KIT_ROOT)
    smoke = bool(smoke) or os.environ.get("SFTRL_SMOKE", "") not in ("", "0")
    folder = Path(run_dir) if run_dir else new_run_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve(), smoke


def settings_from(cls: type, namespace: Mapping[str, Any], smoke: bool = False, **overrides: Any):
    """A settings dataclass from the notebook's parameters, which share its field names.

    In smoke mode the class's SMOKE values replace the sizing fields (tiny model, a few
    steps); `overrides` are applied last.
    """
    values = {f.name: namespace[f.name] for f in fields(cls) if f.name in namespace}
    if smoke:
        values.update(getattr(cls, "SMOKE", {}))
    values.update(overrides)
    return cls(**values)


# --- batches --------------------------------------------------------------------------

@dataclass
class NotebookFailure(RuntimeError):
    notebook: str
    output: Path
    cell: int | None
    error: str

    def __str__(self) -> str:
        where = f"cell In [{self.cell}]" if self.cell is not None else "before any cell ran"
        return f"{self.notebook} failed at {where}: {self.error}\n  executed notebook: {self.output}"


def available_notebooks(notebooks_dir: str | Path = NOTEBOOKS) -> list[str]:
    return sorted(p.stem for p in Path(notebooks_dir).glob("[0-9]*.ipynb"))


def resolve_notebooks(names: Sequence[str], notebooks_dir: str | Path = NOTEBOOKS) -> list[str]:
    """Preset names and notebook names (with or without .ipynb, or a prefix like 03) ->
    notebook names, in the order given."""
    available = available_notebooks(notebooks_dir)
    out: list[str] = []
    for name in names:
        if name in PRESETS:
            out.extend(PRESETS[name] or available)
            continue
        stem = Path(name).stem
        matches = [n for n in available if n == stem or n.split("_")[0] == stem]
        if len(matches) != 1:
            raise ValueError(f"unknown notebook or preset {name!r}; presets: {', '.join(PRESETS)}; "
                             f"notebooks in {notebooks_dir}: {', '.join(available) or 'none'}")
        out.extend(matches)
    return out


def run_batch(
    names: Sequence[str],
    parameters: Mapping[str, Any] | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    notebooks_dir: str | Path = NOTEBOOKS,
    log_output: bool = True,
) -> Path:
    """Execute notebooks in order into one run folder; returns the folder.

    `names`: presets and/or notebooks. `parameters` go to every notebook (papermill
    ignores none: a notebook without a parameter of that name just gets a variable).
    `resume`: a batch folder whose batch.json says which notebooks already succeeded;
    the batch starts again at the first that did not, with the parameters it was
    started with, updated by `parameters`. Raises NotebookFailure at the first failed
    cell; the executed notebook (with the error in it) is in the folder.
    """
    if resume is not None:
        folder = Path(resume)
        state = _read_state(folder)
        resolve_notebooks([e["name"] for e in state["notebooks"]], notebooks_dir)
        state["parameters"].update(parameters or {})
    else:
        notebooks = resolve_notebooks(names, notebooks_dir)
        preset_parameters = {k: v for name in names for k, v in PRESET_PARAMETERS.get(name, {}).items()}
        folder = Path(run_dir) if run_dir else new_run_dir("-".join(Path(n).stem for n in names))
        folder.mkdir(parents=True, exist_ok=True)
        state = {"notebooks": [{"name": n, "status": "pending"} for n in notebooks],
                 "parameters": {**preset_parameters, **(parameters or {})}}
    folder = folder.resolve()
    _write_state(folder, state)
    for entry in state["notebooks"]:
        if entry["status"] == "ok":
            continue
        _execute(entry, folder, state, Path(notebooks_dir), log_output)
    return folder


def _execute(entry: dict, folder: Path, state: dict, notebooks_dir: Path, log_output: bool) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebooks_dir / f"{entry['name']}.ipynb"
    output = folder / f"{entry['name']}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"notebook not found: {source}")
    print(f"[sftrl run] {entry['name']} -> {output}", flush=True)
    started = time.perf_counter()
    entry.update(status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
    _write_state(folder, state)
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters={**state["parameters"], "run_dir": str(folder)},
            kernel_name="python3", cwd=str(KIT_ROOT), progress_bar=log_output, log_output=False,
            stdout_file=sys.stdout if log_output else None, stderr_file=sys.stderr if log_output else None,
        )
    except PapermillExecutionError as error:
        failure = NotebookFailure(entry["name"], output, error.exec_count, f"{error.ename}: {error.evalue}")
        entry.update(status="failed", cell=error.exec_count, error=failure.error)
    except Exception as error:  # the kernel died, or the notebook could not start
        failure = NotebookFailure(entry["name"], output, None, f"{type(error).__name__}: {error}")
        entry.update(status="failed", cell=None, error=failure.error)
    else:
        failure = None
        entry.update(status="ok")
        entry.pop("error", None)
        entry.pop("cell", None)
    entry["seconds"] = round(time.perf_counter() - started, 1)
    _write_state(folder, state)
    if failure is not None:
        raise failure
    print(f"[sftrl run] {entry['name']} done in {entry['seconds']:.0f} s", flush=True)


def _read_state(folder: Path) -> dict[str, Any]:
    path = folder / BATCH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a batch run folder")
    try:
        state = json.loads(path.read_text())
        names = [e["name"] for e in state["notebooks"]]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a valid batch state ({error})") from error
    state.setdefault("parameters", {})
    return state


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    path = folder / BATCH_FILE
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    temporary.replace(path)
