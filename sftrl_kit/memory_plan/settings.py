"""The trainers' entry: a PlanRequest from PPOSettings / SFTSettings on this process's
device (`request_for_settings`, `plan_for_settings`), with the GPU's free memory and the
ZeRO stage accelerate launched. The trainers import this (the package's face), so nothing
here imports them: `sftrl plan`'s request, which reads their defaults, is in command.py."""

from __future__ import annotations

import os
from typing import Literal

import torch

from .advice import memory_plan
from .plan import MemoryPlan, MemoryPlanError
from .prompt import _sft_images, rollout_prompt
from .request import PlanRequest, loaded_dtype
from .rows import CUDA_CONTEXT_BYTES, GIB
from .shape import is_vision


def plan_for_settings(
    method: Literal["ppo", "sft"],
    settings,
    processes: int,
    device: torch.device | str,
    zero_stage: int | None = None,
) -> MemoryPlan:
    """The plan of a PPO or SFT run (PPOSettings / SFTSettings) on this process's device,
    before any weight loads or rollout runs. On a CUDA device whose free memory cannot
    hold it, a MemoryPlanError (a ValueError) with the table and the advice; on a CPU only
    the plan. zero_stage None: read from accelerate's launch (ACCELERATE_DEEPSPEED_ZERO_STAGE)."""
    device = torch.device(device)
    request = request_for_settings(method, settings, processes, device, zero_stage)
    plan = memory_plan(request)
    if device.type == "cuda" and not plan.fits:
        raise MemoryPlanError(
            f"this {method.upper()} run does not fit its GPU ({device}); nothing was loaded or rolled out.\n"
            f"{plan.format()}"
        )
    return plan


def request_for_settings(
    method: Literal["ppo", "sft"],
    settings,
    processes: int,
    device: torch.device,
    zero_stage: int | None = None,
) -> PlanRequest:
    """A PlanRequest from a trainer's settings, this process's device and the launch."""
    from ..models import resolve_autocast

    zero = _launched_zero_stage() if zero_stage is None else zero_stage
    capacity, notes = _device_capacity(device)
    vision = is_vision(settings.model)
    autocast_bf16 = resolve_autocast(settings.mixed_precision, device) == torch.bfloat16
    common = dict(
        model=str(settings.model),
        method=method,
        gpus=processes,
        gpu_memory_gib=capacity,
        device="cuda" if device.type == "cuda" else "cpu",
        lora=settings.lora,
        zero_stage=zero,
        autocast_bf16=autocast_bf16,
        module_dtype=loaded_dtype(
            settings.lora, autocast_bf16
        ),  # as load_policy loads it: models.loading.weights_dtype
        gradient_checkpointing=settings.gradient_checkpointing,
    )
    if method == "sft":
        prompt = _sft_images(settings.model, vision)
        return PlanRequest(
            **common,
            batch_size=settings.batch_size,
            max_length=settings.max_length,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            **prompt.fields(),
            notes=notes + prompt.notes(),
        )
    from ..engines import resolve_engine

    prompt = rollout_prompt(
        settings.model, settings.env_id, settings.env_config, settings.max_attempts, settings.max_new_tokens
    )
    return PlanRequest(
        **common,
        engine=resolve_engine(settings.engine, vision, processes),
        kl_coef=settings.kl_coef,
        critic=settings.uses_critic,
        episodes_per_update=settings.episodes_per_update,
        rollout_batch_size=settings.rollout_batch_size,
        minibatch_size=settings.minibatch_size,
        micro_batch_size=settings.micro_batch_size,
        max_new_tokens=settings.max_new_tokens,
        **prompt.fields(),
        notes=notes + prompt.notes(),
    )


def _launched_zero_stage(environ=None) -> int:
    """The ZeRO stage accelerate's launcher passes its processes (0 without DeepSpeed)."""
    from ..train.distributed import uses_deepspeed

    env = os.environ if environ is None else environ
    if not uses_deepspeed(env):
        return 0
    return int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))


def _device_capacity(device: torch.device) -> tuple[float | None, tuple[str, ...]]:
    """GiB this process may plan for on its GPU: the device's total memory less what is in
    use (other processes, or this one: mem_get_info), and a note; None on a CPU."""
    if device.type != "cuda":
        return None, ()
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    free, _ = torch.cuda.mem_get_info(index)
    note = f"GPU {index}: {total / GIB:.2f} GiB, {(total - free) / GIB:.2f} GiB already in use"
    # mem_get_info made this process's CUDA context, which is in use now and also the plan's own row
    return (free + CUDA_CONTEXT_BYTES) / GIB, (note,)
