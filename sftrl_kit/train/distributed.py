"""The processes of a run (accelerate): which parallel layouts the trainers run and the
DeepSpeed settings PPO needs, arithmetic across processes (sums, maxima, mean and
standard deviation over every process's values), the episode statistics of an update,
and the check that every process holds the same weights after it."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
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


WORKING_LAYOUTS = (
    "one process, DDP (configs/accelerate/multi-gpu.yaml) or DeepSpeed ZeRO-2 (configs/accelerate/deepspeed-zero2.yaml)"
)


class UnsupportedLayout(ValueError):
    """A parallel layout or precision setting the kit's trainers do not run."""


def check_launch(environ: Mapping[str, str] | None = None, gpus: int | None = None, method: str = "ppo") -> None:
    """Refuse, before any weight loads, the launch settings the trainers cannot honour
    (accelerate's launcher passes a config's choices to every process as ACCELERATE_*
    variables):
      - DeepSpeed other than ZeRO-2 (the stage the memory plan and the tests know), and
        FSDP and ZeRO-3 above all, which shard the weights themselves: the kit's weight sync,
        checkpoints, FLOPs count and KL reference read whole tensors, and PPO's rollouts
        call the model a different number of times on each process (a sharded forward
        is a collective, so the processes would hang);
      - accelerate's mixed precision: the kit autocasts itself (the `mixed_precision`
        setting: bf16 over fp32 master weights on CUDA). accelerate's would override it,
        and under DeepSpeed cast the weights themselves to bf16 (bf16 checkpoints, the
        fp32 masters only inside DeepSpeed's optimizer);
      - more processes on this machine than it has GPUs (a config's num_processes is
        fixed; two processes on one GPU make NCCL fail). `gpus`: this machine's count
        (torch.cuda.device_count(); 0 on a CPU, where processes share the cores);
      - SFT under DeepSpeed: TRL's trainer would run it in DeepSpeed's own bf16 mode
        (bf16 weights, the fp32 masters only in its optimizer, bf16 exports), which the
        kit's fp32-master checkpoints and exact resume do not allow; untested besides."""
    env = os.environ if environ is None else environ
    gpus = torch.cuda.device_count() if gpus is None else gpus
    local_processes = int(env.get("LOCAL_WORLD_SIZE", "1"))
    if gpus and local_processes > gpus:
        raise UnsupportedLayout(
            f"{local_processes} processes were launched on a machine with {gpus} GPUs: two would share a GPU; "
            f"launch at most {gpus} (accelerate launch --num_processes {gpus}, or the config's num_processes)"
        )
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise UnsupportedLayout(f"FSDP is not supported by the kit's trainers; use {WORKING_LAYOUTS}")
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    if uses_deepspeed(env) and stage != "2":
        raise UnsupportedLayout(
            f"DeepSpeed ZeRO-{stage} is not supported by the kit's trainers; use {WORKING_LAYOUTS} "
            "(`sftrl plan` says whether a model fits ZeRO-2 over N GPUs)"
        )
    if method == "sft" and uses_deepspeed(env):
        raise UnsupportedLayout(
            "SFT does not run under DeepSpeed; use one process or DDP (configs/accelerate/multi-gpu.yaml), with LoRA "
            "where full fine-tuning does not fit (`sftrl plan --method sft` says which fits)"
        )
    precision = env.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision != "no":
        raise UnsupportedLayout(
            f"the accelerate config sets mixed_precision: {precision}; set it to 'no' (as the kit's configs in "
            "configs/accelerate/ do): the kit autocasts itself through its own `mixed_precision` setting (bf16 "
            "autocast over fp32 master weights on CUDA), which accelerate's would override"
        )


def configure_deepspeed(accelerator, micro_batch_size: int, max_grad_norm: float) -> None:
    """Fill in what DeepSpeed needs from PPO before `accelerator.prepare` (no-op without
    DeepSpeed): PPO has no dataloader, so the micro-batch size is set from the settings
    (else prepare stops on "auto"); one accumulation step in DeepSpeed's eyes, because
    PPO scales each micro-batch's loss itself and accelerate marks the accumulation
    boundary (`sync_gradients`) at the last micro-batch of a minibatch; and gradient
    clipping at `max_grad_norm`, since DeepSpeed clips inside its step and a config's own
    value would silently win over the setting."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    if plugin.zero_stage != 2:
        raise UnsupportedLayout(f"DeepSpeed ZeRO-{plugin.zero_stage} is not supported; use {WORKING_LAYOUTS}")
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = micro_batch_size * accelerator.num_processes
    config["gradient_clipping"] = max_grad_norm
    accelerator.gradient_accumulation_steps = 1


def uses_deepspeed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether accelerate's launcher asked this process for DeepSpeed. An Accelerator made
    with cpu=True silently drops DeepSpeed, so a CPU process that was asked for it (a
    test of the DeepSpeed path, which DeepSpeed's CPU accelerator runs over gloo) must
    not be made with cpu=True."""
    env = os.environ if environ is None else environ
    return env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def make_accelerator():
    """This process's Accelerator. On a machine without CUDA it runs on the CPU (gloo
    between processes); a CPU process asked for DeepSpeed (which has a CPU accelerator
    over gloo, for testing its path) is given gloo by name, since accelerate drops
    DeepSpeed from a cpu=True Accelerator and finds no backend for it otherwise."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if torch.cuda.is_available():
        return Accelerator()
    if uses_deepspeed() and "LOCAL_RANK" in os.environ:
        return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    return Accelerator(cpu=True)


def is_deepspeed(accelerator) -> bool:
    return getattr(accelerator.state, "deepspeed_plugin", None) is not None


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
