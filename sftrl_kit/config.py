"""Dataclass configs to and from plain dicts and YAML, with errors that name the field.

Every config in the kit is a dataclass whose defaults are the paper's values; a YAML
file or a notebook's papermill parameters map onto its fields one to one.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or dict does not fit its dataclass."""


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build `cls` from a dict, recursing into nested dataclass fields."""
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        field_type = hints.get(name)
        if dataclasses.is_dataclass(field_type) and isinstance(value, dict):
            value = from_dict(field_type, value, where=f"{where}.{name}")
        kwargs[name] = _coerce_number(value, field_type, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error


def _coerce_number(value: Any, field_type: Any, where: str) -> Any:
    """'5e-5' -> 5e-05 for a float field (YAML 1.1 reads exponents without a dot as
    text), '3' -> 3 for an int field; other values pass through unchanged."""
    if not isinstance(value, str):
        return value
    options = typing.get_args(field_type) or (field_type,)
    for number_type in (int, float):
        if number_type in options and str not in options:
            try:
                return number_type(value)
            except ValueError:
                if number_type is int and float in options:
                    continue
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file of settings as a dict ({} for an empty file); a ConfigError naming the
    file when it is missing, not YAML, or not a mapping of field names."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value, found {type(data).__name__}")
    return data


def load_yaml(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, read_yaml(path), where=str(path))


def save_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring: the string literal written right after it in the class
    body (CleanRL's Args style), whitespace collapsed; '' for a field without one."""
    import ast
    import inspect
    import itertools
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (built by its default_factory if it has one)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def settings_help(cls: type) -> str:
    """Every field of a settings dataclass with its type, default and docstring, and the
    fields of nested settings dataclasses under their field's name."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    lines, nested = [], []
    for f in dataclasses.fields(cls):
        lines.append(f"  {f.name} = {field_default(f)!r}  ({f.type})")
        lines.append(f"      {docs[f.name]}")
        inner = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if dataclasses.is_dataclass(t)]
        nested += [(f.name, t) for t in inner]
    for name, inner in nested:
        lines.append(f"\n{name}: {inner.__doc__.strip()} ({name}={{key: value, ...}})")
        inner_docs = field_docs(inner)
        for f in dataclasses.fields(inner):
            lines.append(f"  {name}.{f.name} = {field_default(f)!r}  ({f.type})")
            lines.append(f"      {inner_docs[f.name]}")
    return "\n".join(lines)
