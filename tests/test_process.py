"""process.environment_kept: what programs started inside and after inherit."""

import os
import subprocess
import sys

from sftrl_kit.process import environment_kept


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
