"""Process-wide state: the environment variables that programs started later inherit,
the memory a finished training stage leaves behind, and native libraries' notices on the
process's stderr."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import sys
import threading
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
    malloc_trim), after collecting unreachable objects, and the GPU blocks torch's
    allocator keeps cached back to the device. Returns whether any host memory was
    handed back (False where the C library has no malloc_trim, i.e. is not glibc).

    `make` keeps freed memory in the process (MALLOC_TRIM_THRESHOLD_: a CPU training step
    is faster when its logits' memory is not returned and faulted in again). Between
    stages that memory is dead weight: a V-IRL-VL SFT step peaks at 18.7 GB on the CPU,
    and the process held it while vLLM and the PPO learner started beside it."""
    gc.collect()  # a trainer and its callbacks hold each other: only the collector frees them
    torch = sys.modules.get("torch")  # imported by whoever used a GPU; never imported here for this
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # the cached blocks of a finished stage, for the next stage or process
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


@contextlib.contextmanager
def stderr_without(*fragments: str) -> Iterator[None]:
    """Inside: what is written to this process's stderr descriptor, less the lines that
    hold one of `fragments`. For notices native code prints at every start, which
    Python's warning filters never see (a C++ TORCH_WARN writes to the descriptor, as
    vLLM's CPU worker does for its NUMA memory binding: "not the user's business")."""
    sys.stderr.flush()
    kept = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    needles = [fragment.encode() for fragment in fragments]

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not any(needle in line for needle in needles):
                    os.write(kept, line)

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(kept, 2)  # the pipe's last write end closes: the forwarder reads to its end
        forwarder.join(timeout=10)
        os.close(kept)
