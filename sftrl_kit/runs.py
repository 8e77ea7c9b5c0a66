"""Run folders: every run's artefacts (config, episodes, metrics, checkpoints) live in one."""

from __future__ import annotations

import time
from pathlib import Path

RUNS_ROOT = Path("papermill_runs")


def new_run_dir(name: str, root: str | Path = RUNS_ROOT) -> Path:
    """papermill_runs/<YYYYmmdd-HHMMSS>-<name>/, made unique if two start in one second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(root) / f"{stamp}-{name}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path(root) / f"{stamp}-{name}-{suffix}"
    folder.mkdir(parents=True)
    return folder
