"""What would make a run fit (each change re-planned: it fits), and `memory_plan`, the plan
with its advice. Only what the kit's trainers run is advised: ZeRO-2 for PPO (never ZeRO-3,
never SFT under DeepSpeed), the module in fp32."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import replace

from ..models.loading import LoraSettings
from .plan import Advice, MemoryPlan, _plan
from .request import PlanRequest

MAX_ADVISED_GPUS = 64
"""the most GPUs the advice considers for ZeRO"""


def memory_plan(request: PlanRequest) -> MemoryPlan:
    """The plan of a run; advice when it does not fit (each advised change re-planned)."""
    plan = _plan(request)
    if plan.fits:
        return plan
    return replace(plan, advice=tuple(_advice(request)))


def _advice(request: PlanRequest) -> list[Advice]:
    """Each single change that makes the run fit (checked by re-planning it); when none
    does alone, the first combination of them, in this order, that does."""
    candidates = list(_candidates(request))
    advice = [Advice(text, changed) for text, changed in candidates if _plan(changed).fits]
    if advice:
        return advice
    combined, texts = request, []
    for text, changed in candidates:
        if "ZeRO" in text:
            continue  # the GPU count is searched last, over the combination
        combined = _merge(combined, changed, request)
        texts.append(text)
        if _plan(combined).fits:
            return [Advice(" + ".join(texts), combined)]
    zero = _zero_advice(combined)
    if zero is not None:
        return [Advice(" + ".join([*texts, zero.text]), zero.request)]
    return []


def _merge(combined: PlanRequest, changed: PlanRequest, original: PlanRequest) -> PlanRequest:
    """`combined` with the fields `changed` alters relative to `original`."""
    updates = {
        f.name: getattr(changed, f.name)
        for f in dataclasses.fields(PlanRequest)
        if getattr(changed, f.name) != getattr(original, f.name)
    }
    return replace(combined, **updates)


def _candidates(request: PlanRequest) -> Iterator[tuple[str, PlanRequest]]:
    if request.method == "ppo" and request.engine == "vllm" and request.sleep_available and not request.sleep_mode:
        yield (
            "vLLM sleep mode (level 2: weights and KV cache freed during the update)",
            replace(request, sleep_mode=True),
        )
    if not request.gradient_checkpointing:
        yield "gradient checkpointing (gradient_checkpointing=true)", replace(request, gradient_checkpointing=True)
    smaller = _smaller_micro_batch(request)
    if smaller is not None:
        yield smaller
    if request.method == "ppo" and request.kl_coef > 0 and request.lora is None:
        yield "no KL reference (kl_coef=0)", replace(request, kl_coef=0.0)
    if request.lora is None:
        # module_dtype None: the dtype the kit loads LoRA's frozen base in (bf16 under bf16 autocast)
        with_lora = replace(request, lora=LoraSettings(), module_dtype=None)
        yield "LoRA (r=16 on every linear layer: lora={r: 16, alpha: 32})", with_lora
    zero = _zero_advice(request)
    if zero is not None:
        yield zero.text, zero.request
    if not request.gradient_checkpointing:  # fewer GPUs when the activations shrink too
        with_checkpointing = _zero_advice(replace(request, gradient_checkpointing=True))
        if with_checkpointing is not None and (zero is None or with_checkpointing.request.gpus < zero.request.gpus):
            yield f"gradient checkpointing + {with_checkpointing.text}", with_checkpointing.request


def _smaller_micro_batch(request: PlanRequest) -> tuple[str, PlanRequest] | None:
    """The largest smaller micro-batch (PPO micro_batch_size, SFT batch_size) that fits."""
    name = "micro_batch_size" if request.method == "ppo" else "batch_size"
    for size in range(getattr(request, name) - 1, 0, -1):
        if request.method == "ppo" and request.minibatch_size % size:
            continue  # PPOSettings: minibatch_size must be a multiple of micro_batch_size
        changed = replace(request, **{name: size})
        if _plan(changed).fits:
            return f"a smaller micro-batch ({name}={size})", changed
    return None


def _zero_advice(request: PlanRequest) -> Advice | None:
    """The fewest GPUs over which ZeRO-2 fits; PPO on CUDA only (the trainers refuse SFT under
    DeepSpeed, and ZeRO-3)."""
    if request.method != "ppo" or request.device != "cuda" or request.gpu_memory_gib is None:
        return None
    for gpus in range(max(2, request.gpus + (1 if request.zero_stage else 0)), MAX_ADVISED_GPUS + 1):
        changed = replace(request, zero_stage=2, gpus=gpus)
        if _plan(changed).fits:
            return Advice(f"ZeRO-2 over {gpus} GPUs (DeepSpeed, configs/accelerate/deepspeed-zero2.yaml)", changed)
    return None
