"""`sftrl plan`'s request: a PlanRequest for a machine that may not be this one, what is not
given being the trainers' defaults (PPOSettings, SFTSettings). Apart from the package's face,
since it imports the trainers, which import the face (`plan_for_settings`)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Literal

from ..models.loading import LoraSettings
from .prompt import _sft_images, rollout_prompt
from .request import PlanRequest, loaded_dtype
from .shape import is_vision


def plan_request(
    *,
    model: str,
    gpu_memory_gib: float | None,
    method: Literal["ppo", "sft"] = "ppo",
    gpus: int = 1,
    device: Literal["cuda", "cpu"] = "cuda",
    lora: bool = False,
    zero: int = 0,
    mixed_precision: str = "auto",
    gradient_checkpointing: bool = False,
    engine: str = "auto",
    sleep_mode: str = "auto",
    kl_coef: float | None = None,
    advantage: str | None = None,
    env: str | None = None,
    max_attempts: int | None = None,
    episodes: int | None = None,
    rollout_batch_size: int | None = None,
    minibatch_size: int | None = None,
    micro_batch_size: int | None = None,
    max_new_tokens: int | None = None,
    prompt_tokens: int | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    gradient_accumulation_steps: int | None = None,
) -> PlanRequest:
    """A PlanRequest for a machine that may not be this one (`sftrl plan`): what is not
    given is the trainers' default (PPOSettings, SFTSettings); mixed precision "auto" is
    bf16 autocast on CUDA (a bf16-capable GPU) and fp32 on a CPU; the weights' dtype is the
    one the kit loads them in (`loaded_dtype`: LoRA's frozen base in bf16 under bf16
    autocast, else fp32); engine "auto" is vLLM
    for a text model and HF for a VLM; the longest prompt is measured on the environment's
    training deals (gp-l, or gp-vl for a VLM) unless prompt_tokens is given."""
    from ..data import training_config
    from ..train.ppo import PPOSettings
    from ..train.sft import SFTSettings

    if mixed_precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"mixed_precision must be 'auto', 'fp32' or 'bf16', got {mixed_precision!r}")
    if sleep_mode not in ("auto", "on", "off"):
        raise ValueError(f"sleep_mode must be 'auto', 'on' or 'off', got {sleep_mode!r}")
    vision = is_vision(model)
    autocast_bf16 = mixed_precision == "bf16" or (mixed_precision == "auto" and device == "cuda")
    common = dict(
        model=str(model),
        method=method,
        gpus=gpus,
        gpu_memory_gib=gpu_memory_gib,
        device=device,
        lora=LoraSettings() if lora else None,
        zero_stage=zero,
        module_dtype=loaded_dtype(LoraSettings() if lora else None, autocast_bf16),
        autocast_bf16=autocast_bf16,
        gradient_checkpointing=gradient_checkpointing,
    )
    if method == "sft":
        prompt = _sft_images(model, vision)
        return PlanRequest(
            **common,
            batch_size=batch_size or default_of(SFTSettings, "batch_size"),
            max_length=max_length or default_of(SFTSettings, "max_length"),
            gradient_accumulation_steps=gradient_accumulation_steps
            or default_of(SFTSettings, "gradient_accumulation_steps"),
            **prompt.fields(),
            notes=prompt.notes(),
        )
    env_id = env or ("gp-vl" if vision else "gp-l")
    new_tokens = max_new_tokens or default_of(PPOSettings, "max_new_tokens")
    prompt = rollout_prompt(model, env_id, training_config(env_id), max_attempts, new_tokens)
    if prompt_tokens is not None:
        prompt = replace(prompt, longest_prompt_tokens=prompt_tokens, note="the longest prompt as given")
    return PlanRequest(
        **common,
        engine=("hf" if vision else "vllm") if engine == "auto" else engine,
        sleep_mode={"auto": None, "on": True, "off": False}[sleep_mode],
        kl_coef=default_of(PPOSettings, "kl_coef") if kl_coef is None else kl_coef,
        critic=(advantage or default_of(PPOSettings, "advantage")) == "gae",
        episodes_per_update=episodes or default_of(PPOSettings, "episodes_per_update"),
        rollout_batch_size=rollout_batch_size or default_of(PPOSettings, "rollout_batch_size"),
        minibatch_size=minibatch_size or default_of(PPOSettings, "minibatch_size"),
        micro_batch_size=micro_batch_size or default_of(PPOSettings, "micro_batch_size"),
        max_new_tokens=new_tokens,
        **prompt.fields(),
        notes=prompt.notes() + (f"prompts measured on {env_id}",),
    )


def default_of(settings_class, name: str):
    """A settings dataclass field's default (the CLI's defaults are the trainers')."""
    for f in dataclasses.fields(settings_class):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            return f.default_factory()  # type: ignore[misc]
    raise KeyError(f"{settings_class.__name__} has no field {name!r}")
