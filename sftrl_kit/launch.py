"""Launching `sftrl ppo` / `sftrl sft` under accelerate as a subprocess, with live output.

A notebook cannot host several training processes itself, so 04_ppo_launch writes the
settings to a YAML file, picks an accelerate config for the machine, and runs

    python -m accelerate.commands.launch --config_file <config> --num_processes N \\
        -m sftrl_kit.cli ppo --config <settings.yaml>

streaming its output (progress bars included) to the notebook and to run_dir/<name>.log
as it arrives.
"""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .config import save_yaml

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def pick_accelerate_config(num_processes: int | None = None, deepspeed: bool = False) -> tuple[Path, int]:
    """The kit's accelerate config for this machine, and the process count to use.

    GPUs: one process per GPU (DDP, or DeepSpeed ZeRO-2 when asked); one GPU: plain.
    No GPU: two CPU processes over gloo (num_processes=1 runs a single process), DDP or
    DeepSpeed ZeRO-2 through DeepSpeed's CPU accelerator (slow, for trying the path).
    """
    import torch

    gpus = torch.cuda.device_count()
    if gpus:
        count = num_processes or gpus
        if deepspeed:
            name = "deepspeed-zero2"
        else:
            name = "multi-gpu" if count > 1 else "one-gpu"
    else:
        count = num_processes or 2
        name = "cpu-2proc-zero2" if deepspeed else "cpu-2proc"
    return ACCELERATE_CONFIGS / f"{name}.yaml", count


def launch_training(
    method: str,
    settings: Any,
    run_dir: str | Path,
    *,
    num_processes: int | None = None,
    accelerate_config: str | Path | None = None,
    deepspeed: bool = False,
    echo: bool = True,
) -> Path:
    """Write `settings` (SFTSettings or PPOSettings) to YAML and run `sftrl <method>` under
    accelerate; returns the training run folder. Raises RuntimeError with the log's
    last lines if the command fails."""
    if method not in ("sft", "ppo"):
        raise ValueError(f"method must be 'sft' or 'ppo', got {method!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # A config given without a count runs as many processes as the config says.
    config_path, count = (
        (Path(accelerate_config), num_processes)
        if accelerate_config
        else pick_accelerate_config(num_processes, deepspeed)
    )
    settings_path = run_dir / f"{method}-launch.yaml"
    save_yaml(settings, settings_path)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_path),
        *(["--num_processes", str(count)] if count is not None else []),
        "-m",
        "sftrl_kit.cli",
        method,
        "--config",
        str(settings_path),
    ]
    stream(command, run_dir / f"{method}.log", echo=echo)
    return Path(settings.run_dir)


def stream(command: list[str], log_path: str | Path, echo: bool = True, tail: int = 40) -> None:
    """Run a command, copying its output to the log file (and stdout) as it comes.

    Output is copied in chunks, not lines, so a progress bar that redraws itself with
    carriage returns (tqdm) redraws in place instead of printing a line per refresh.
    """
    log_path = Path(log_path)
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    recent = ""  # the end of the output, for the error message
    with log_path.open("a") as log:
        log.write("$ " + " ".join(command) + "\n")
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )  # prints arrive as made
        assert process.stdout is not None
        while chunk := process.stdout.read1(1 << 16):
            text = decode(chunk)
            log.write(text)
            log.flush()
            recent = (recent + text)[-200 * tail :]
            if echo:
                print(text, end="", flush=True)
        code = process.wait()
    if code != 0:
        raise RuntimeError(
            f"{command[-4:]} exited with status {code}; last lines of {log_path}:\n"
            + "\n".join(_last_lines(recent, tail))
        )


def _last_lines(text: str, count: int) -> list[str]:
    """The last lines as a terminal shows them: of a line redrawn with \\r, its last state."""
    lines = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").rstrip("\n").split("\n")]
    return lines[-count:]
