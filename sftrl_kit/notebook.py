"""What runs inside a notebook's kernel: `notebook_start`, the first call of every
notebook (the kit's folder, the libraries' deprecation notices quieted, the run folder
and the preset), and the text progress bars that `sftrl run` asks of its headless
kernels ($SFTRL_TEXT_PROGRESS). Running the kernels is batch.py's job.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .run_folder import new_run_dir

KIT_ROOT = Path(__file__).resolve().parents[1]
TEXT_PROGRESS = "SFTRL_TEXT_PROGRESS"
RUN_DIR_VARIABLE = "SFTRL_RUN_DIR"  # the run folder every notebook opened by hand shares (`sftrl lab` sets it)

# Deprecation notices of the libraries the kit calls, about their own APIs (transformers'
# gradient_checkpointing, say): nothing a user of the kit can act on, and printed in every
# notebook, so that the one warning that matters scrolls by unread.
QUIET_MODULES = r"(transformers|trl|accelerate|peft|datasets|torch|huggingface_hub|vllm)(\.|$)"


def notebook_start(
    name: str,
    run_dir: str | None,
    preset: str = "study",
    overrides: Mapping[str, Any] | None = None,
    *,
    needs: str | None = None,
    **parameters: Any,
):
    """The first call of every notebook: work from the kit's folder (so data/ and
    configs/ resolve as in the README), quiet the libraries' deprecation notices, open
    the run folder, and settle the sizes: the preset named (`smoke` whenever
    SFTRL_SMOKE=1), then `overrides` (the parameters cell's dict of preset fields), then
    the notebook's own parameters that are not None (presets.choose). Returns the run
    folder and the chosen presets.Preset.

    The run folder: `run_dir`, else $SFTRL_RUN_DIR (one folder for every notebook of a
    JupyterLab session, as `sftrl lab` starts it), else a new one. A notebook that
    continues others' work (`needs`: the notebooks that make what it reads) never gets a
    new one: without a folder, or with one that does not exist, it stops here and says
    which notebooks to run first."""
    if (KIT_ROOT / "pyproject.toml").is_file():
        os.chdir(KIT_ROOT)
    quiet_warnings()
    if env_flag(TEXT_PROGRESS):
        text_progress()
    # presets after text_progress: it imports the kit's training and evaluation modules
    from .presets import choose

    given = {key: value for key, value in parameters.items() if value is not None}  # None: not set here
    chosen = choose("smoke" if env_flag("SFTRL_SMOKE") else preset, {**(overrides or {}), **given})
    folder = _run_folder(name, run_dir or os.environ.get(RUN_DIR_VARIABLE) or None, needs)
    print(f"run folder: {folder.resolve()} | preset: {chosen.name}", flush=True)
    return folder.resolve(), chosen


def _run_folder(name: str, run_dir: str | None, needs: str | None) -> Path:
    if run_dir is None and needs is None:
        return new_run_dir(name)
    if run_dir is None:
        raise ValueError(
            f"{name} continues the study that {needs} began: set run_dir in the parameters cell to that "
            f"study's folder (printed at the top of {needs.split()[0]}), or open every notebook under "
            f"`sftrl lab`, which gives them one folder (${RUN_DIR_VARIABLE})"
        )
    folder = Path(run_dir)
    if needs is not None and not folder.is_dir():
        raise FileNotFoundError(f"run_dir {folder} does not exist: {needs} make(s) it; run that first")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def quiet_warnings() -> None:
    """Ignore FutureWarning and DeprecationWarning raised inside the libraries the kit
    calls (QUIET_MODULES); every other warning, the kit's own included, still shows."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=QUIET_MODULES)


def text_progress() -> None:
    """Progress bars as text instead of widgets, for a notebook executed headless.

    In a kernel, tqdm.auto draws an ipywidget and transformers' Trainer an HTML table;
    papermill streams neither to the terminal, only text on stdout/stderr. `sftrl run`
    sets SFTRL_TEXT_PROGRESS=1 for its kernels and notebook_start calls this, before
    the kit's training and evaluation modules are imported.
    """
    import tqdm.auto
    import tqdm.std

    tqdm.auto.tqdm, tqdm.auto.trange = tqdm.std.tqdm, tqdm.std.trange
    trainer = sys.modules.get("transformers.trainer")
    if trainer is not None:  # imported already: its progress callback was chosen at import
        from transformers.trainer_callback import ProgressCallback

        trainer.DEFAULT_PROGRESS_CALLBACK = ProgressCallback
    else:
        import transformers.utils

        transformers.utils.is_in_notebook = lambda: False


def env_flag(variable: str) -> bool:
    """Whether an environment variable is set to something other than "" or "0"."""
    return os.environ.get(variable, "") not in ("", "0")
