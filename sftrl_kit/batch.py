"""Batch runs of the ordered notebooks with papermill (`sftrl run`).

Every run's artefacts (executed notebooks, configs, checkpoints, episodes, tables,
figures) live in one folder, papermill_runs/<YYYYmmdd-HHMMSS>-<name>/
(run_folder.new_run_dir; the root can be moved with $SFTRL_RUNS). A batch executes notebooks in order with papermill, passing
each the same `run_dir`, so a later notebook finds what an earlier one wrote there.
The batch's state is kept in run_dir/batch.json: a failed batch stops at the failing
notebook, reports the cell and error, and `run_batch(..., resume=run_dir)` starts again
from that notebook.

Before any kernel starts, every parameter is checked against the `parameters` cells of
the batch's notebooks (read with `ast`, never executed: notebook_parameters.py): a name
no notebook declares, or a value whose type differs from the declared one, is a
ValueError. Each notebook gets only the parameters it declares. What the notebooks print
streams to the terminal.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import run_folder
from .files import write_atomically
from .notebook import KIT_ROOT, TEXT_PROGRESS, env_flag
from .notebook_parameters import notebook_parameters, split_parameters
from .process import environment_kept
from .run_folder import new_run_dir

NOTEBOOKS = KIT_ROOT / "notebooks"
BATCH_FILE = "batch.json"


# --- batches --------------------------------------------------------------------------


@dataclass
class NotebookFailure(RuntimeError):
    notebook: str
    output: Path
    cell: int | None
    error: str

    def __str__(self) -> str:
        if self.cell is not None:
            where = f"at cell In [{self.cell}]"
        elif "DeadKernel" in self.error:
            where = "when its kernel died (a killed kernel is most often out of memory: see `dmesg`)"
        else:
            where = "without a cell's error (the notebook could not start or its kernel was lost)"
        return f"{self.notebook} failed {where}: {self.error}\n  executed notebook: {self.output}"


def available_notebooks(notebooks_dir: str | Path = NOTEBOOKS) -> list[str]:
    return sorted(p.stem for p in Path(notebooks_dir).glob("[0-9]*.ipynb"))


def resolve_notebooks(names: Sequence[str], notebooks_dir: str | Path = NOTEBOOKS, vision: bool = False) -> list[str]:
    """Preset names and notebook names (with or without .ipynb, or a prefix like 03) ->
    notebook names, in the order given. `vision`: the batch studies an image task, so a
    preset also brings its vision_notebooks (the quickstart's recognition probing)."""
    from .presets import PRESETS

    available = available_notebooks(notebooks_dir)
    out: list[str] = []
    for name in names:
        if name in PRESETS:
            preset = PRESETS[name]
            out.extend(preset.notebooks or available)
            out.extend(n for n in preset.vision_notebooks if vision and n not in out)
            continue
        stem = Path(name).stem
        matches = [n for n in available if n == stem or n.split("_")[0] == stem]
        if len(matches) != 1:
            raise ValueError(
                f"unknown notebook or preset {name!r}; presets: {', '.join(PRESETS)}; "
                f"notebooks in {notebooks_dir}: {', '.join(available) or 'none'}"
            )
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

    `names`: presets and/or notebooks; a preset's name is passed on as the `preset`
    parameter (the last one named wins). `parameters`: checked against the notebooks'
    parameters cells and the preset fields before anything runs (split_parameters); each
    notebook gets those it declares, and every notebook gets `run_dir`. `resume`: a batch folder whose
    batch.json says which notebooks already succeeded; the batch starts again at the
    first that did not, with the parameters it was started with, updated by
    `parameters`. `log_output`: stream what the notebooks print to this process's
    stdout/stderr. Raises NotebookFailure at the first failed cell; the executed
    notebook (with the error in it) is in the folder.
    """
    if resume is not None:
        folder = Path(resume)
        state = _read_state(folder)
        resolve_notebooks([e["name"] for e in state["notebooks"]], notebooks_dir)
        state["parameters"].update(parameters or {})
    else:
        from .presets import PRESETS

        named = [name for name in names if name in PRESETS]
        notebooks = resolve_notebooks(names, notebooks_dir, vision=_studies_images(named[-1:], parameters or {}))
        state = {
            "notebooks": [{"name": n, "status": "pending"} for n in notebooks],
            "parameters": {**({"preset": named[-1]} if named else {}), **(parameters or {})},
        }
    declared = {e["name"]: notebook_parameters(Path(notebooks_dir) / f"{e['name']}.ipynb") for e in state["notebooks"]}
    shares = split_parameters(declared, state["parameters"])
    _check_preset_values(state["parameters"])
    if resume is None:
        folder = Path(run_dir) if run_dir else new_run_dir("-".join(Path(n).stem for n in names))
        if (folder / BATCH_FILE).is_file():  # its executed notebooks and state would be overwritten
            earlier = ", ".join(e["name"] for e in _read_state(folder)["notebooks"])
            raise ValueError(
                f"{folder} holds a batch already ({earlier}): `sftrl run --resume {folder}` continues it; "
                "a new batch goes to another --out"
            )
        folder.mkdir(parents=True, exist_ok=True)
    folder = folder.resolve()
    _write_state(folder, state)
    todo = [e for e in state["notebooks"] if e["status"] != "ok"]
    print(
        f"[sftrl run] run folder {folder}" + (f", resuming at {todo[0]['name']}" if resume and todo else ""), flush=True
    )
    with environment_kept((), {TEXT_PROGRESS: "1"}):
        for entry in todo:
            _execute(entry, folder, state, shares[entry["name"]], Path(notebooks_dir), log_output)
    return folder


def _check_preset_values(parameters: Mapping[str, Any]) -> None:
    """The batch's preset fields (`-p advantage grpo`, an `overrides` dict) must make a
    valid preset before any kernel starts: a wrong value (advantage, start_rules) is a
    ValueError here, not a failure in the first notebook after its folder was made."""
    from .presets import choose, override_fields

    preset = "smoke" if env_flag("SFTRL_SMOKE") else parameters.get("preset", "quickstart")
    fields = set(override_fields())
    choose(preset, {**(parameters.get("overrides") or {}), **{k: v for k, v in parameters.items() if k in fields}})


def _studies_images(preset: Sequence[str], parameters: Mapping[str, Any]) -> bool:
    """Whether a batch's study task (its `task` parameter, an override's, or the preset's)
    shows images."""
    from .presets import PRESETS
    from .tasks import study_task

    task = parameters.get("task") or (parameters.get("overrides") or {}).get("task")
    if task is None and preset:
        task = PRESETS[preset[0]].study.task
    return task is not None and study_task(task).vision


def _execute(
    entry: dict, folder: Path, state: dict, parameters: Mapping[str, Any], notebooks_dir: Path, log_output: bool
) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    source = notebooks_dir / f"{entry['name']}.ipynb"
    output = folder / f"{entry['name']}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"notebook not found: {source}")
    print(f"[sftrl run] {entry['name']} -> {output}", flush=True)
    started = time.perf_counter()
    entry.update(status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
    _write_state(folder, state)
    try:
        # Cells' stdout and stderr go to ours as they arrive (papermill's own progress bar
        # would interleave with them); coalesce_streams keeps only the last state of a
        # progress bar in the executed notebook. The kernel talks to us over local IPC
        # sockets, not TCP, over which ipykernel warns in every notebook that the traffic
        # is unencrypted.
        papermill.execute_notebook(
            str(source),
            str(output),
            parameters={**parameters, "run_dir": str(folder)},
            kernel_name="python3",
            cwd=str(KIT_ROOT),
            progress_bar=False,
            log_output=False,
            stdout_file=sys.stdout if log_output else None,
            stderr_file=sys.stderr if log_output else None,
            coalesce_streams=True,
            config=Config({"KernelManager": {"transport": "ipc"}}),
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


# --- what a run left ------------------------------------------------------------------

FIGURES = ("*.png", "*.svg")
TABLES = (f"{run_folder.TABLES}/*.csv", f"{run_folder.TABLES}/*.md")  # tables.write_table's; .json twins: exact values
VERDICT_COLUMNS = ("comparison", "eval_set", "metric", "A - B (points)", "p", "significant", "test")


def run_summary(folder: str | Path, most: int = 12) -> str:
    """What a batch left in its run folder, for the terminal: the executed notebooks, the
    figures and the tables (`most` names per folder), and the what-moved table
    (tables.what_moved, saved by tables.write_table as tables/*what*moved*) if a notebook
    wrote one."""
    folder = Path(folder)
    lines = [f"run folder: {folder}"]
    if (folder / BATCH_FILE).is_file():
        lines.append(f"executed notebooks in {folder}:")
        lines += [
            f"  {e['name']}.ipynb  {e['status']}" + (f", {e['seconds'] / 60:.1f} min" if "seconds" in e else "")
            for e in _read_state(folder)["notebooks"]
        ]
    lines += _listing(run_folder.FIGURES, folder, _files(folder, FIGURES), most)
    lines += _listing(run_folder.TABLES, folder, _files(folder, TABLES), most)
    for table in _files(folder, TABLES[:1]):
        if table.stem.replace("_", "-").endswith("what-moved"):
            lines.append(f"what moved ({table.relative_to(folder)}):")
            lines += ["  " + line for line in _text_table(_read_rows(table), VERDICT_COLUMNS)]
    return "\n".join(lines)


def _files(folder: Path, patterns: Sequence[str]) -> list[Path]:
    return sorted({path for pattern in patterns for path in folder.rglob(pattern) if path.is_file()})


def _listing(kind: str, folder: Path, paths: list[Path], most: int) -> list[str]:
    """The files of each folder named `kind` (figures/, tables/), one line per name with
    its formats together (a.png (.svg)); then one line counting the others by folder
    (images a notebook saved as data, say)."""
    if not paths:
        return [f"{kind}: none"]
    by_folder: dict[Path, dict[str, list[str]]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, {}).setdefault(path.stem, []).append(path.suffix)
    lines, others = [], []
    for parent, names in by_folder.items():
        if parent.name != kind:
            others.append(f"{parent.relative_to(folder)} ({sum(map(len, names.values()))})")
            continue
        shown = [
            stem + suffixes[0] + (f" ({' '.join(suffixes[1:])})" if len(suffixes) > 1 else "")
            for stem, suffixes in names.items()
        ]
        lines.append(f"{kind} in {parent}:")
        lines += [f"  {name}" for name in shown[:most]]
        lines += [f"  ... and {len(shown) - most} more"] if len(shown) > most else []
    if others:
        more = f", and {len(others) - most} more folders" if len(others) > most else ""
        lines.append(f"other {kind}, files by folder: {', '.join(others[:most])}{more}")
    return lines


def _read_rows(table: Path) -> list[dict[str, Any]]:
    """A study table's rows: its .json twin (exact values) if there is one, else the CSV."""
    import csv

    if table.with_suffix(".json").is_file():
        return json.loads(table.with_suffix(".json").read_text())
    with table.open(newline="") as rows:
        return list(csv.DictReader(rows))


def _text_table(rows: list[dict[str, Any]], preferred: Sequence[str]) -> list[str]:
    """Rows as aligned text: the preferred columns that exist, else every column."""
    if not rows:
        return ["(no rows)"]
    from .stats import format_p_value

    present = list(dict.fromkeys(key for row in rows for key in row))
    columns = [c for c in preferred if c in present] or present

    def cell(row: dict[str, Any], column: str) -> str:
        value = row.get(column, "")
        if column == "p" and value not in ("", None):
            return format_p_value(float(value))
        return str(value)

    cells = [columns] + [[cell(row, c) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]


def _read_state(folder: Path) -> dict[str, Any]:
    path = folder / BATCH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a batch run folder")
    try:
        state = json.loads(path.read_text())
        if not all(isinstance(entry["name"], str) for entry in state["notebooks"]):
            raise TypeError("a notebook entry's name is not text")
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a valid batch state ({error})") from error
    state.setdefault("parameters", {})
    return state


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    write_atomically(folder / BATCH_FILE, json.dumps(state, indent=2) + "\n")
