"""Process-wide state: the environment variables that programs started later inherit,
and the memory a finished training stage leaves behind."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


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


def release_freed_memory() -> bool:
    """Hand the memory freed in this process back to the operating system (glibc's
    malloc_trim), after collecting unreachable objects. Returns whether any was handed
    back (False where the C library has no malloc_trim, i.e. is not glibc).

    `make` keeps freed memory in the process (MALLOC_TRIM_THRESHOLD_: a CPU training step
    is faster when its logits' memory is not returned and faulted in again). Between
    stages that memory is dead weight: a V-IRL-VL SFT step peaks at 18.7 GB on the CPU,
    and the process held it while vLLM and the PPO learner started beside it."""
    gc.collect()  # a trainer and its callbacks hold each other: only the collector frees them
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def releases_memory(stage: Callable[P, R]) -> Callable[P, R]:
    """A training stage that, once it returns or raises, releases what it freed
    (release_freed_memory), so the next stage in the same process starts lean."""

    @functools.wraps(stage)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return stage(*args, **kwargs)
        finally:
            release_freed_memory()

    return run
