"""Activations and logits: the bytes one micro-batch saves for the backward pass, counted
tensor by tensor (`activation_bytes_per_token`, `activation_bytes`, with a VLM's vision
tower and Mllama's cross-attention), and the loss's logits (`logit_bytes`)."""

from __future__ import annotations

from .request import PlanRequest
from .shape import ModelShape, model_config_dict


def activation_bytes_per_token(
    hidden: int,
    q_dim: int,
    kv_dim: int,
    intermediate: int,
    *,
    gated: bool,
    compute_bytes: int,
    residual_bytes: int,
    casts: bool,
) -> int:
    """Bytes one transformer layer saves for the backward pass, per token.

    Counted tensor by tensor from transformers' Llama/Qwen2 decoder layer (Mllama's text
    and vision layers have the same parts), with SDPA's memory-efficient attention (no
    seq x seq matrix; on CUDA and CPU alike):
      - each of the two RMSNorms: its fp32 input (4h) and its normalised output in the
        residual's dtype (r h);
      - the inputs of the projections: one shared tensor (c h), or under autocast over fp32
        weights one bf16 cast per projection (3 for q/k/v, 2 for gate/up, 1 for fc1);
      - attention: the rotated queries and keys, the values, SDPA's output and o_proj's
        contiguous input: c (3 q + 2 kv) (SDPA's log-sum-exp, 4 B per head, is left out);
      - the MLP: gate, up, SiLU(gate) and their product for SwiGLU (4 c I), or fc1's output
        and its activation (2 c I).
    h hidden, q/kv the query/key-value widths, I the MLP width, c the compute element size
    (2 under bf16, 4 in fp32), r the residual stream's (4 with fp32 weights).

    This is Korthikanti et al. (2022, "Reducing Activation Recomputation in Large
    Transformer Models", 34 s b h bytes per layer for a GPT with a 4h MLP and no flash
    attention) recounted for SwiGLU, grouped-query attention, an fp32 residual stream and
    autocast's per-op casts. For Qwen2.5-7B under bf16 autocast it is 32 h + 4 kv + 8 I =
    268 KB per token per layer.
    """
    norms = 2 * (4 + residual_bytes) * hidden
    projections_in = (3 if casts else 1) + ((2 if gated else 1) if casts else 1)
    attention = compute_bytes * (3 * q_dim + 2 * kv_dim)
    mlp = compute_bytes * (4 if gated else 2) * intermediate
    return norms + projections_in * compute_bytes * hidden + attention + mlp


def _dtypes(request: PlanRequest) -> tuple[int, int, bool]:
    """(compute bytes, residual bytes, per-op casts) of the learner's forward pass."""
    if request.lora is not None and request.module_dtype == "bfloat16":
        return 2, 2, False  # a bf16 base: the residual stream and the projections' inputs are bf16
    if request.autocast_bf16:
        return 2, 4, True
    return 4, 4, False


def activation_bytes(request: PlanRequest, shape: ModelShape, rows: int, tokens: int) -> int:
    """A micro-batch's saved activations: every decoder layer (and the vision tower when it
    trains), or with gradient checkpointing each layer's input and one layer recomputed."""
    compute, residual, casts = _dtypes(request)
    per_layer = activation_bytes_per_token(
        shape.hidden,
        shape.q_dim,
        shape.kv_dim,
        shape.intermediate,
        gated=True,
        compute_bytes=compute,
        residual_bytes=residual,
        casts=casts,
    )
    text_tokens = rows * tokens
    final_norm = (
        text_tokens * (4 + residual) * shape.hidden + text_tokens * (compute if casts else residual) * shape.hidden
    )
    vision_tokens, vision_layer = _vision_activation_terms(request, shape, rows, compute, residual, casts)
    mllama = _mllama_activation_bytes(request, shape, rows, compute, residual, request.gradient_checkpointing)
    if request.gradient_checkpointing:
        layer_inputs = text_tokens * shape.layers * residual * shape.hidden
        if vision_tokens:
            layer_inputs += vision_tokens * shape.vision.layers * residual * shape.vision.hidden
        one_layer = max(text_tokens * per_layer, vision_tokens * vision_layer)
        return layer_inputs + one_layer + final_norm + mllama
    vision_layers = shape.vision.layers if shape.vision else 0
    return text_tokens * shape.layers * per_layer + vision_tokens * vision_layers * vision_layer + final_norm + mllama


def _vision_activation_terms(
    request: PlanRequest, shape: ModelShape, rows: int, compute: int, residual: int, casts: bool
) -> tuple[int, int]:
    """(vision-tower tokens of a micro-batch, bytes per token per vision layer); (0, 0)
    when the tower does not train (nothing upstream of it needs a gradient)."""
    if shape.vision is None or not shape.vision.trainable or not request.images_per_prompt:
        return 0, 0
    vision = shape.vision
    tokens = rows * request.images_per_prompt * _vision_tokens_per_image(request, shape)
    per_layer = activation_bytes_per_token(
        vision.hidden,
        vision.hidden,
        vision.hidden,
        vision.intermediate,
        gated=vision.gated,
        compute_bytes=compute,
        residual_bytes=residual,
        casts=casts,
    )
    return tokens, per_layer


def _vision_tokens_per_image(request: PlanRequest, shape: ModelShape) -> int:
    tokens = shape.vision.tokens_per_image if shape.vision else None
    tokens = tokens or request.vision_tokens_per_image
    if not tokens:
        raise ValueError(
            f"{shape.name}: how many tokens its vision tower runs per image depends on the image; plan from the "
            "environment (rollout_prompt measures it with the processor) or give vision_tokens_per_image"
        )
    return tokens


def _mllama_activation_bytes(
    request: PlanRequest, shape: ModelShape, rows: int, compute: int, residual: int, checkpointed: bool
) -> int:
    """What Mllama adds around its layers, per micro-batch: the vision encoder's attention
    mask over each image's tiles (one (tiles x patches)^2 tensor in the weights' dtype,
    modeling_mllama._prepare_aspect_ratio_attention_mask), the concatenated intermediate
    and final vision states the projector reads (vision_output_dim wide, and their cast),
    and each cross-attention layer's input and keys and values over the image's tokens (with
    gradient checkpointing, one layer's and their shared input)."""
    if not shape.cross_attention_layers or not request.images_per_prompt:
        return 0
    images = rows * request.images_per_prompt
    tokens = _vision_tokens_per_image(request, shape)
    config = model_config_dict(shape.name)["vision_config"]
    mask = images * tokens * tokens * residual
    projector_input = images * tokens * config.get("vision_output_dim", 7680) * (residual + compute)
    cross_layer = images * tokens * compute * (shape.hidden + 2 * shape.kv_dim)
    if checkpointed:
        return mask + projector_input + cross_layer + images * tokens * compute * shape.hidden
    return mask + projector_input + shape.cross_attention_layers * cross_layer


def logit_bytes(request: PlanRequest, shape: ModelShape, rows: int, tokens: int) -> int:
    """The loss's logits.

    PPO (`models.response_token_logprobs`): the LM head runs on the response window only
    (max_new_tokens + 1 positions per row), giving logits in the compute dtype (c); each
    row's fp32 log-softmax, its exp and its clamp are saved for the entropy and log-prob
    gradients (12 B); the logits themselves live to the end of the forward pass, and in
    the backward pass their gradient is accumulated row by row, each row's through a
    full-size zero tensor (2 c at once): (12 + 2 c) B per logit.

    SFT (TRL 1.16's fused LM head, trl/kernels/chunked_logprob.py): no full logits; a
    tile of min(tokens, 4096) x min(vocab, 32768) in the compute dtype, and where Triton is
    missing (a CPU) the torch fallback's fp32 temporaries of the backward tile (y, z,
    log_p, p, the gradient and two more: 28 B); the tile's fp32 gradient accumulators for
    the LM head's weight and hidden states (4 B each)."""
    compute = _dtypes(request)[0]
    if request.method == "ppo":
        return rows * (request.max_new_tokens + 1) * shape.vocab * (12 + 2 * compute)
    tokens_total = rows * tokens
    tile = min(tokens_total, 4096) * min(shape.vocab, 32768)
    per_element = compute + (0 if request.device == "cuda" else 28)
    accumulators = 4 * shape.vocab * shape.hidden + 4 * tokens_total * shape.hidden
    return tile * per_element + accumulators


def _element_bytes(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else 4
