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
        if number_type in options and not (str in options):
            try:
                return number_type(value)
            except ValueError:
                if number_type is int and float in options:
                    continue
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def load_yaml(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    return from_dict(cls, data, where=str(path))


def save_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
