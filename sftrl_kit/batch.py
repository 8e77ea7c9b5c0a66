"""Batch runs of the ordered notebooks with papermill (`sftrl run`).

Every run's artefacts (executed notebooks, configs, checkpoints, episodes, tables,
figures) live in one folder, papermill_runs/<YYYYmmdd-HHMMSS>-<name>/
(run_folder.new_run_dir; the root can be moved with $SFTRL_RUNS). A batch executes notebooks in order with papermill, passing
each the same `run_dir`, so a later notebook finds what an earlier one wrote there.
The batch's state is kept in run_dir/batch.json: a failed batch stops at the failing
notebook, reports the cell and error, and `run_batch(..., resume=run_dir)` starts again
from that notebook.

Before any kernel starts, every parameter is checked against the `parameters` cells of
the batch's notebooks (read with `ast`, never executed): a name no notebook declares, or
a value whose type differs from the declared one, is a ValueError. Each notebook gets
only the parameters it declares. What the notebooks print streams to the terminal.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import write_atomically
from .process import environment_kept
from .run_folder import new_run_dir

KIT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = KIT_ROOT / "notebooks"
BATCH_FILE = "batch.json"
TEXT_PROGRESS = "SFTRL_TEXT_PROGRESS"

# Deprecation notices of the libraries the kit calls, about their own APIs (transformers'
# gradient_checkpointing, say): nothing a user of the kit can act on, and printed in every
# notebook, so that the one warning that matters scrolls by unread.
QUIET_MODULES = r"(transformers|trl|accelerate|peft|datasets|torch|huggingface_hub|vllm)(\.|$)"


# --- inside a notebook ---------------------------------------------------------------


RUN_DIR_VARIABLE = "SFTRL_RUN_DIR"  # the run folder every notebook opened by hand shares (`sftrl lab` sets it)


def notebook_start(
    name: str,
    run_dir: str | None,
    preset: str = "study",
    overrides: Mapping[str, Any] | None = None,
    *,
    needs: str | None = None,
    **parameters: Any,
):
    """The first call of every notebook: work from the kit's folder (so data/ and
    configs/ resolve as in the README), quiet the libraries' deprecation notices, open
    the run folder, and settle the sizes: the preset named (`smoke` whenever
    SFTRL_SMOKE=1), then `overrides` (the parameters cell's dict of preset fields), then
    the notebook's own parameters that are not None (presets.choose). Returns the run
    folder and the chosen presets.Preset.

    The run folder: `run_dir`, else $SFTRL_RUN_DIR (one folder for every notebook of a
    JupyterLab session, as `sftrl lab` starts it), else a new one. A notebook that
    continues others' work (`needs`: the notebooks that make what it reads) never gets a
    new one: without a folder, or with one that does not exist, it stops here and says
    which notebooks to run first."""
    if (KIT_ROOT / "pyproject.toml").is_file():
        os.chdir(KIT_ROOT)
    quiet_warnings()
    if _flag(TEXT_PROGRESS):
        text_progress()
    # presets after text_progress: it imports the kit's training and evaluation modules
    from .presets import choose

    given = {key: value for key, value in parameters.items() if value is not None}  # None: not set here
    chosen = choose("smoke" if _flag("SFTRL_SMOKE") else preset, {**(overrides or {}), **given})
    folder = _run_folder(name, run_dir or os.environ.get(RUN_DIR_VARIABLE) or None, needs)
    print(f"run folder: {folder.resolve()} | preset: {chosen.name}", flush=True)
    return folder.resolve(), chosen


def _run_folder(name: str, run_dir: str | None, needs: str | None) -> Path:
    if run_dir is None and needs is None:
        return new_run_dir(name)
    if run_dir is None:
        raise ValueError(
            f"{name} continues the study that {needs} began: set run_dir in the parameters cell to that "
            f"study's folder (printed at the top of {needs.split()[0]}), or open every notebook under "
            f"`sftrl lab`, which gives them one folder (${RUN_DIR_VARIABLE})"
        )
    folder = Path(run_dir)
    if needs is not None and not folder.is_dir():
        raise FileNotFoundError(f"run_dir {folder} does not exist: {needs} make(s) it; run that first")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def quiet_warnings() -> None:
    """Ignore FutureWarning and DeprecationWarning raised inside the libraries the kit
    calls (QUIET_MODULES); every other warning, the kit's own included, still shows."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=QUIET_MODULES)


def text_progress() -> None:
    """Progress bars as text instead of widgets, for a notebook executed headless.

    In a kernel, tqdm.auto draws an ipywidget and transformers' Trainer an HTML table;
    papermill streams neither to the terminal, only text on stdout/stderr. `sftrl run`
    sets SFTRL_TEXT_PROGRESS=1 for its kernels and notebook_start calls this, before
    the kit's training and evaluation modules are imported.
    """
    import tqdm.auto
    import tqdm.std

    tqdm.auto.tqdm, tqdm.auto.trange = tqdm.std.tqdm, tqdm.std.trange
    trainer = sys.modules.get("transformers.trainer")
    if trainer is not None:  # imported already: its progress callback was chosen at import
        from transformers.trainer_callback import ProgressCallback

        trainer.DEFAULT_PROGRESS_CALLBACK = ProgressCallback
    else:
        import transformers.utils

        transformers.utils.is_in_notebook = lambda: False


def _flag(variable: str) -> bool:
    return os.environ.get(variable, "") not in ("", "0")


# --- notebook parameters --------------------------------------------------------------


@dataclass(frozen=True)
class NotebookParameter:
    """One assignment of a notebook's `parameters` cell.

    `accepts`: the types a value may have, from the annotation if the cell has one, else
    from the default's type (a float also takes an int; None is always allowed, as in
    `eval_limit = 40  # None: all`); None when anything goes (a None default, or a
    default that is not a literal).
    """

    name: str
    default: Any
    accepts: tuple[type, ...] | None
    expected: str

    def admits(self, value: Any) -> bool:
        if self.accepts is None:
            return True
        if isinstance(value, bool):  # a bool is an int to isinstance
            return bool in self.accepts
        return isinstance(value, self.accepts)


_NAMED_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "str": (str,),
    "list": (list,),
    "dict": (dict,),
    "tuple": (tuple, list),
    "None": (type(None),),
    "List": (list,),
    "Dict": (dict,),
    "Tuple": (tuple, list),
}


def notebook_parameters(path: str | Path) -> dict[str, NotebookParameter]:
    """The parameters a notebook declares: the assignments in its first cell tagged
    `parameters` (papermill's convention), read with ast and never executed."""
    import nbformat

    book = nbformat.read(str(path), as_version=4)
    cell = next((c for c in book.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return {}
    try:
        tree = ast.parse(cell.source)
    except SyntaxError as error:
        raise ValueError(
            f"the parameters cell of {path} is not plain Python: {error.msg} (line {error.lineno})"
        ) from error
    declared = {}
    for statement in tree.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            declared[statement.target.id] = _parameter(statement.target.id, statement.value, statement.annotation)
        elif isinstance(statement, ast.Assign):
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    declared[target.id] = _parameter(target.id, statement.value, None)
    return declared


def _parameter(name: str, value: ast.expr | None, annotation: ast.expr | None) -> NotebookParameter:
    try:
        default, literal = ast.literal_eval(value), True
    except (ValueError, TypeError, SyntaxError):  # no value, or not a literal (a call, a name)
        default, literal = None, False
    if annotation is not None:
        return NotebookParameter(name, default, _annotation_types(annotation), ast.unparse(annotation))
    if not literal or default is None:
        return NotebookParameter(name, default, None, "anything")
    kind = type(default).__name__
    return NotebookParameter(name, default, _NAMED_TYPES.get(kind, (type(default),)) + (type(None),), kind)


def _annotation_types(node: ast.expr) -> tuple[type, ...] | None:
    """The types an annotation admits (containers by their outer type only); None for a
    type this check does not know (Path, Any, a class of the notebook's)."""
    if isinstance(node, ast.Constant):
        if node.value is None:
            return (type(None),)
        if isinstance(node.value, str):  # a quoted annotation
            try:
                return _annotation_types(ast.parse(node.value, mode="eval").body)
            except SyntaxError:
                return None
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right])
    if isinstance(node, ast.Subscript):
        origin = _type_name(node.value)
        arguments = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if origin == "Optional":
            return _union(arguments + [ast.Constant(None)])
        if origin == "Union":
            return _union(arguments)
        if origin == "Literal":
            try:
                return tuple(dict.fromkeys(type(ast.literal_eval(a)) for a in arguments))
            except ValueError:
                return None
        return _NAMED_TYPES.get(origin)
    return _NAMED_TYPES.get(_type_name(node))


def _union(nodes: list[ast.expr]) -> tuple[type, ...] | None:
    parts = [_annotation_types(n) for n in nodes]
    if any(part is None for part in parts):
        return None
    return tuple(dict.fromkeys(t for part in parts for t in part))


def _type_name(node: ast.expr) -> str:
    """int -> 'int', typing.Optional -> 'Optional'."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def split_parameters(
    declared: Mapping[str, Mapping[str, NotebookParameter]], parameters: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each notebook's share of the batch's parameters: those its parameters cell declares,
    and, in its `overrides` dict if it declares one, every parameter that names a preset
    field (presets.override_fields: a StudySettings field or a preset's own size), so that
    `-p start_steps 128` reaches every notebook of the batch, whether or not its cell
    lists start_steps.

    `declared`: notebook name -> its parameters (notebook_parameters). Raises ValueError
    for a name that is neither declared nor a preset field (naming the closest one that
    exists), for run_dir (the batch sets it), for a preset that does not exist, and for a
    value of another type than the declared one or the preset field's.
    """
    sizes = _preset_fields() if any("overrides" in names for names in declared.values()) else {}
    routed = {}
    for name, value in parameters.items():
        if name == "run_dir":
            raise ValueError("run_dir is the batch's run folder: choose it with --out (run_dir= in run_batch)")
        owners = {notebook: names[name] for notebook, names in declared.items() if name in names}
        if not owners and name not in sizes:
            raise ValueError(_unknown_parameter(name, declared, sizes))
        for notebook, parameter in owners.items():
            if not parameter.admits(value):
                raise ValueError(
                    f"parameter {name} expects {parameter.expected} (default in {notebook}: "
                    f"{parameter.default!r}), got {value!r} ({type(value).__name__})"
                )
        if name in sizes:
            if not sizes[name].admits(value):
                raise ValueError(
                    f"parameter {name} expects {sizes[name].expected} (a preset field, see "
                    f"sftrl_kit/presets.py), got {value!r} ({type(value).__name__})"
                )
            routed[name] = value
        if name == "preset":
            _check_preset(value)
    shares = {notebook: {k: v for k, v in parameters.items() if k in names} for notebook, names in declared.items()}
    for notebook, names in declared.items():
        if routed and "overrides" in names:
            shares[notebook]["overrides"] = {**shares[notebook].get("overrides", {}), **routed}
    return shares


def _preset_fields() -> dict[str, NotebookParameter]:
    from .presets import override_fields

    return {
        name: NotebookParameter(name, None, _annotation_types(ast.parse(kind, mode="eval").body), kind)
        for name, kind in override_fields().items()
    }


def _check_preset(name: Any) -> None:
    from .presets import PRESETS

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")


def _unknown_parameter(
    name: str, declared: Mapping[str, Mapping[str, NotebookParameter]], sizes: Mapping[str, NotebookParameter]
) -> str:
    valid = sorted({n for names in declared.values() for n in names} - {"run_dir"})
    closest = difflib.get_close_matches(name, valid + sorted(sizes), n=1)
    hint = f" (did you mean {closest[0]!r}?)" if closest else ""
    fields = f"; and the preset fields: {', '.join(sorted(sizes))}" if sizes else ""
    return (
        f"unknown parameter {name!r}{hint}: no notebook of this batch ({', '.join(declared)}) declares it. "
        f"Their parameters: {', '.join(valid) or 'none'}{fields}"
    )


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

    preset = "smoke" if _flag("SFTRL_SMOKE") else parameters.get("preset", "quickstart")
    fields = set(override_fields())
    choose(preset, {**(parameters.get("overrides") or {}), **{k: v for k, v in parameters.items() if k in fields}})


def _studies_images(preset: Sequence[str], parameters: Mapping[str, Any]) -> bool:
    """Whether a batch's study task (its `task` parameter, an override's, or the preset's)
    shows images."""
    from .data import study_task
    from .presets import PRESETS

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
TABLES = ("tables/*.csv", "tables/*.md")  # study.write_table's folder; its .json twins hold exact values
VERDICT_COLUMNS = ("comparison", "eval_set", "metric", "A - B (points)", "p", "significant", "test")


def run_summary(folder: str | Path, most: int = 12) -> str:
    """What a batch left in its run folder, for the terminal: the executed notebooks, the
    figures and the tables (`most` names per folder), and the what-moved table
    (study.what_moved, saved by study.write_table as tables/*what*moved*) if a notebook
    wrote one."""
    folder = Path(folder)
    lines = [f"run folder: {folder}"]
    if (folder / BATCH_FILE).is_file():
        lines.append(f"executed notebooks in {folder}:")
        lines += [
            f"  {e['name']}.ipynb  {e['status']}" + (f", {e['seconds'] / 60:.1f} min" if "seconds" in e else "")
            for e in _read_state(folder)["notebooks"]
        ]
    lines += _listing("figures", folder, _files(folder, FIGURES), most)
    lines += _listing("tables", folder, _files(folder, TABLES), most)
    for table in _files(folder, ("tables/*.csv",)):
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
