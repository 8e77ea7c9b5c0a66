"""Notebooks' `parameters` cells (papermill's convention), read with `ast` and never
executed, and the check of a batch's parameters against them: which notebook gets
which, and a ValueError for a name no notebook declares or a value of another type than
the declared one, before any kernel starts (batch.run_batch).
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
