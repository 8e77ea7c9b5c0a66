"""process: what programs started inside and after environment_kept inherit, and the
memory a finished training stage hands back."""

import os
import subprocess
import sys

import pytest

from sftrl_kit.process import environment_kept, releases_memory


def _child_sees(name: str) -> str | None:
    code = f"import os; print(os.environ.get({name!r}, '<unset>'))"
    seen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    return None if seen == "<unset>" else seen


def test_children_inherit_the_inside_values_and_later_ones_the_values_from_before(monkeypatch):
    monkeypatch.setenv("SFTRL_TEST_KEPT", "before")
    monkeypatch.delenv("SFTRL_TEST_UNSET", raising=False)
    monkeypatch.delenv("SFTRL_TEST_SET", raising=False)
    with environment_kept(["SFTRL_TEST_KEPT", "SFTRL_TEST_UNSET"], {"SFTRL_TEST_SET": "inside"}):
        os.environ["SFTRL_TEST_KEPT"] = "changed by a library"
        os.environ["SFTRL_TEST_UNSET"] = "set by a library"
        assert _child_sees("SFTRL_TEST_SET") == "inside"
        assert _child_sees("SFTRL_TEST_KEPT") == "changed by a library"
    assert _child_sees("SFTRL_TEST_KEPT") == "before"
    assert _child_sees("SFTRL_TEST_UNSET") is None
    assert _child_sees("SFTRL_TEST_SET") is None


def test_the_environment_is_restored_when_the_body_raises(monkeypatch):
    monkeypatch.setenv("SFTRL_TEST_KEPT", "before")
    try:
        with environment_kept(["SFTRL_TEST_KEPT"]):
            os.environ["SFTRL_TEST_KEPT"] = "changed"
            raise RuntimeError("the engine failed to start")
    except RuntimeError:
        pass
    assert os.environ["SFTRL_TEST_KEPT"] == "before"


RSS_PROBE = """
import os
from sftrl_kit.process import release_freed_memory

def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

blocks = [bytearray(2**20) for _ in range(400)]  # 400 MB in 1 MB blocks: on the heap, under the mmap threshold
held = rss_mb()
del blocks
kept = rss_mb()
released = release_freed_memory()
print(held, kept, rss_mb(), released)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_a_finished_stage_hands_the_memory_it_freed_back_to_the_system():
    """Under make's malloc settings freed memory stays in the process (kept ~ held);
    release_freed_memory returns it, so the next stage does not start beside it."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000"}
    result = subprocess.run([sys.executable, "-c", RSS_PROBE], env=env, capture_output=True, text=True, check=True)
    held, kept, after, released = result.stdout.split()
    assert float(kept) > float(held) - 50  # the settings keep the 400 MB in the process
    assert released == "True"
    assert float(after) < float(kept) - 300  # the release hands it back


def test_releases_memory_keeps_the_stage_result_and_its_errors():
    calls = []
    stage = releases_memory(lambda value: calls.append(value) or value * 2)
    assert stage(21) == 42
    assert calls == [21]

    @releases_memory
    def failing() -> None:
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        failing()


def test_stderr_without_drops_only_the_named_native_lines(capfd):
    """Native code writes to the descriptor itself (no Python warning filter sees it):
    the named notice goes, every other line stays, in order, and stderr is whole after."""
    from sftrl_kit.process import stderr_without

    with stderr_without("NUMA binding: Using MEMBIND"):
        os.write(2, b"first\n[W utils.cpp:68] Warning: NUMA binding: Using MEMBIND policy (0)\nsecond\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "first\nsecond\nafter\n"


def test_releasing_memory_empties_torchs_gpu_cache_where_cuda_ran(monkeypatch):
    """A finished stage's cached GPU blocks go back to the device (a notebook kernel that
    trained kept them while it launched the next stage's processes)."""
    from types import SimpleNamespace

    from sftrl_kit.process import release_freed_memory

    emptied = []
    cuda = SimpleNamespace(is_initialized=lambda: True, empty_cache=lambda: emptied.append(True))
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    release_freed_memory()
    assert emptied == [True]
    monkeypatch.setattr(cuda, "is_initialized", lambda: False)  # CUDA never used: nothing to touch
    release_freed_memory()
    assert emptied == [True]
