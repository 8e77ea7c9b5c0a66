"""Arithmetic across the processes of a run (accelerate): sums, maxima, mean and
standard deviation over every process's values, the episode statistics of an update,
and the check that every process holds the same weights after it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..episodes import Episode
from ..files import write_atomically
from ..run_folder import processes_file


def process_device() -> torch.device:
    """This process's device before accelerate has set one up: cuda:LOCAL_RANK on a GPU
    machine (accelerate and torchrun set LOCAL_RANK per process; 0 when run alone), the
    CPU elsewhere. Loading onto plain "cuda" would put every rank's copy on GPU 0."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def episode_stats(episodes: list[Episode], accelerator) -> dict[str, float]:
    local = torch.tensor(
        [
            len(episodes),
            sum(e.success for e in episodes),
            sum(e.total_reward for e in episodes),
            sum(len(e.turns) for e in episodes),
        ],
        dtype=torch.float64,
        device=accelerator.device,
    )
    count, successes, reward, turns = accelerator.reduce(local, reduction="sum").tolist()
    return {
        "episodes": int(count),
        "success_rate": successes / count,
        "mean_return": reward / count,
        "mean_episode_length": turns / count,
    }


def record_process_agreement(run_dir: Path, actor_critic, accelerator) -> None:
    """Every process's checksum of the trained weights, in run_dir/processes.json: after
    DDP they must be equal."""
    checksum = torch.tensor(
        [sum(float(p.detach().double().sum()) for p in accelerator.unwrap_model(actor_critic).parameters())],
        dtype=torch.float64,
        device=accelerator.device,
    )
    sums = accelerator.gather(checksum).tolist()
    if accelerator.is_main_process:
        write_atomically(processes_file(run_dir), json.dumps({"processes": len(sums), "weight_checksums": sums}) + "\n")


def global_sum(accelerator, value: float) -> float:
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="sum")[0])


def global_max(accelerator, value: int) -> int:
    tensor = torch.tensor([value], device=accelerator.device)
    return int(accelerator.gather(tensor).max())


def global_sums(accelerator, values: list[int]) -> list[int]:
    tensor = torch.tensor(values, dtype=torch.long, device=accelerator.device)
    return [int(v) for v in accelerator.reduce(tensor, reduction="sum").tolist()]


def global_mean_std(accelerator, values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation over every process's values."""
    local = torch.tensor(
        [len(values), float(values.sum()), float((values**2).sum())], dtype=torch.float64, device=accelerator.device
    )
    count, total, squares = accelerator.reduce(local, reduction="sum").tolist()
    mean = total / count
    return mean, math.sqrt(max(squares / count - mean * mean, 0.0))
