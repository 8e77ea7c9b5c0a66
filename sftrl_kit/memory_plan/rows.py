"""The plan's rows: what a run holds on each GPU, row by row (`plan_rows`: learner weights,
gradients, AdamW, autocast copies, KL reference, value head, engine, activations, logits, CUDA
context), when each is held, and the peak over the phases (`peak_bytes`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from .activations import _element_bytes, _vision_tokens_per_image, activation_bytes, logit_bytes
from .request import PlanRequest
from .shape import ModelShape

GIB = 2**30


CUDA_CONTEXT_BYTES = 1 * GIB
"""the CUDA context (about 0.4 GiB with lazy module loading, pytorch/pytorch#109888) and the cuBLAS/NCCL
workspaces and kernels loaded as they are used: the review's 1 GiB per GPU (../shared/reviews/gpu-path.md, section 2)"""
ENGINE_WORKING_BYTES = 2 * GIB
"""vLLM's activations and sampler while it generates: the 2 GiB the kit's engine reserves on a GPU besides its weights
and KV cache (engines/vllm_engine.py, _gpu_memory)"""
VLLM_BLOCK_TOKENS = 16
"""vLLM's KV cache block size (CacheConfig.block_size on CUDA): a sequence takes whole blocks"""


PHASES = ("rollout", "train", "step")
"""when transient memory lives: generating the rollout, the learner's forward and backward passes, the optimizer step"""


@dataclass(frozen=True)
class Row:
    """One line of the plan: bytes per GPU, and when they are held."""

    name: str
    bytes: int
    phase: str  # "held" throughout, or the PHASES it lives in, joined by "+" ("rollout+train")
    note: str = ""

    @property
    def gib(self) -> float:
        return self.bytes / GIB


def peak_bytes(rows: list[Row] | tuple[Row, ...]) -> int:
    """What the run holds throughout, plus the largest of its phases' transient memory."""
    held, transient = _phase_sums(rows)
    return held + max(transient.values())


def _phase_sums(rows) -> tuple[int, dict[str, int]]:
    """(bytes held throughout, bytes alive in each phase besides)."""
    held = sum(r.bytes for r in rows if r.phase == "held")
    transient = {phase: sum(r.bytes for r in rows if phase in r.phase.split("+")) for phase in PHASES}
    return held, transient


def plan_rows(request: PlanRequest, shape: ModelShape, sleep: bool = False) -> list[Row]:
    """Every row of a run's plan, per GPU (see the package's docstring for what each holds)."""
    rows = list(_learner_rows(request, shape))
    if request.method == "ppo":
        rows += _ppo_rows(request, shape, sleep)
    rows += _activation_rows(request, shape)
    if request.device == "cuda":
        rows.append(Row("CUDA context", CUDA_CONTEXT_BYTES, "held", "driver context, cuBLAS/NCCL workspaces"))
    return [row for row in rows if row.bytes > 0]


def _learner_rows(request: PlanRequest, shape: ModelShape) -> Iterator[Row]:
    """Weights, gradients and AdamW state: DDP (stage 0) or DeepSpeed ZeRO-2. What trains is
    fp32 (the module's masters, or LoRA's adapters) in both."""
    trainable, frozen, n = shape.trainable_params, shape.frozen_params, request.gpus
    frozen_bytes = _element_bytes(request.module_dtype)
    if request.zero_stage == 0:
        note = "fp32 masters" + (f"; frozen base {request.module_dtype}" if request.lora is not None else "")
        yield Row("learner weights", 4 * trainable + frozen_bytes * frozen, "held", note)
        if request.accumulates:
            yield Row("gradients", 4 * trainable, "train+step", "fp32, accumulated over micro-batches")
        else:
            yield Row("gradients", 4 * trainable, "step", "fp32, as the backward pass frees activations")
        if n > 1:
            yield Row("DDP gradient buckets", 4 * trainable, "held", "DDP's own copy for the all-reduce")
        yield Row("AdamW state", 8 * trainable, "held", "two fp32 moments")
        yield Row("AdamW step temporaries", 4 * _step_temporary_params(request, shape), "step", _step_note(request))
    else:
        note = f"{request.module_dtype} module"
        if request.lora is not None:
            note = f"fp32 adapters; frozen base {request.module_dtype}"
        yield Row("learner weights", 4 * trainable + frozen_bytes * frozen, "held", note)
        yield Row("fp32 master partition", 4 * trainable // n, "held", f"DeepSpeed's, 1/{n}")
        # fp32 parameters' gradient partition is the optimizer's fp32 gradient itself (no 16-bit partition to copy)
        yield Row("gradients", 4 * trainable // n, "held", f"partitioned, 1/{n}")
        yield Row("AdamW state", 8 * trainable // n, "held", f"two fp32 moments, 1/{n}")
    yield from _autocast_rows(request, shape)


def _step_temporary_params(request: PlanRequest, shape: ModelShape) -> int:
    """Parameters' worth of fp32 temporaries in torch's AdamW step: on CUDA its foreach
    implementation (the default there) builds sqrt(v) for every trainable tensor at once;
    on a CPU the single-tensor loop, one tensor's at a time."""
    if request.device == "cuda":
        return shape.trainable_params
    return shape.largest_trainable_tensor


def _step_note(request: PlanRequest) -> str:
    return "foreach sqrt(v) of every tensor" if request.device == "cuda" else "one tensor's sqrt(v) at a time"


def _autocast_rows(request: PlanRequest, shape: ModelShape) -> Iterator[Row]:
    """bf16 casts of fp32 weights: autocast caches a trainable weight's cast for the whole
    forward pass (and `generate`), and a frozen weight's per-op cast is saved for the backward
    pass (one layer's at a time under gradient checkpointing)."""
    if not request.autocast_bf16:
        return
    generates = request.method == "ppo" and request.engine == "hf"  # HF generate runs on the learner
    phase = "rollout+train" if generates else "train"
    yield Row("autocast copies (trainable)", 2 * shape.trainable_matmul_params, phase, "bf16 casts")
    if request.module_dtype == "float32" and shape.frozen_matmul_params:
        frozen = 2 * shape.frozen_matmul_params
        if request.gradient_checkpointing:
            frozen //= shape.layers
        yield Row("autocast copies (frozen base)", frozen, "train", "bf16 casts kept for backward")


def _ppo_rows(request: PlanRequest, shape: ModelShape, sleep: bool) -> Iterator[Row]:
    """The value head, the KL reference and the generation engine."""
    if request.critic:
        yield Row("value head", 16 * (shape.hidden + 1), "held", "weights, gradient, AdamW")
    if request.kl_coef > 0 and request.lora is None:
        yield Row("KL reference", 4 * shape.total_params, "held", "frozen fp32 copy (load_policy's dtype)")
    tokens_per_sequence = request.prompt_tokens + request.max_new_tokens
    if request.engine == "vllm":
        element = 2 if request.autocast_bf16 else 4  # the engine's dtype follows the learner's autocast
        blocks = math.ceil(tokens_per_sequence / VLLM_BLOCK_TOKENS) * VLLM_BLOCK_TOKENS
        kv = request.episodes_per_update * blocks * shape.kv_bytes_per_token(element)
        phase = "rollout" if sleep else "held"
        engine_params = shape.total_params - (shape.trainable_params if request.lora is not None else 0)
        dtype = "bf16" if element == 2 else "fp32"
        yield Row("vLLM weights", element * engine_params, phase, f"{dtype}, adapters merged")
        yield Row("vLLM KV cache", kv, phase, f"{request.episodes_per_update} x {tokens_per_sequence} tokens, {dtype}")
        if request.device == "cuda":
            yield Row("vLLM activations", ENGINE_WORKING_BYTES, "rollout", "the engine's reserve")
    else:
        element = 2 if request.autocast_bf16 else 4
        kv = request.rollout_batch_size * tokens_per_sequence * shape.kv_bytes_per_token(element)
        kv += request.rollout_batch_size * _cross_attention_kv_bytes(request, shape, element)
        yield Row(
            "generate KV cache", kv, "rollout", f"{request.rollout_batch_size} x {tokens_per_sequence} tokens (HF)"
        )


def _cross_attention_kv_bytes(request: PlanRequest, shape: ModelShape, element: int) -> int:
    """Mllama's cross-attention keys and values of one conversation's images."""
    if not shape.cross_attention_layers or not request.images_per_prompt:
        return 0
    vision_tokens = _vision_tokens_per_image(request, shape)
    return 2 * shape.cross_attention_layers * shape.kv_dim * element * vision_tokens * request.images_per_prompt


def _activation_rows(request: PlanRequest, shape: ModelShape) -> Iterator[Row]:
    """One micro-batch's activations and the logits of its loss."""
    if request.method == "ppo":
        rows, tokens = request.micro_batch_size, request.prompt_tokens + request.max_new_tokens
    else:
        rows, tokens = request.batch_size, request.max_length
    saved = activation_bytes(request, shape, rows, tokens)
    how = "checkpointed" if request.gradient_checkpointing else "no checkpointing"
    yield Row("activations", saved, "train", f"{rows} x {tokens} tokens, {how}")
    yield Row("logits", logit_bytes(request, shape, rows, tokens), "train", _logit_note(request))


def _logit_note(request: PlanRequest) -> str:
    if request.method == "ppo":
        return f"{request.micro_batch_size} x {request.max_new_tokens + 1} positions x vocab"
    return "TRL's fused LM head tile"
