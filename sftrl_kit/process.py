"""Process-wide state that programs started later inherit: the environment variables."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping


@contextlib.contextmanager
def environment_kept(names: Iterable[str], set_to: Mapping[str, str] | None = None) -> Iterator[None]:
    """Inside: the variables `names` (and those of `set_to`) as the body leaves them, after
    `set_to` is applied; after: each back to its value before, or unset if it had none.
    Child processes started inside inherit the inside values, those started after the old."""
    set_to = dict(set_to or {})
    before = {name: os.environ.get(name) for name in {*names, *set_to}}
    os.environ.update(set_to)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
