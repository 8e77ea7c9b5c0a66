"""From prompt + response tokens to per-token log-probabilities: packing a batch,
completing an architecture's forward inputs, and the one log-prob function.

`response_token_logprobs` is the one function that computes per-token log-probabilities
of responses (it runs the model it is given on a packed batch, then `response_logprobs`
on the logits): rollouts call it for the behaviour policy, PPO for the learner (with
entropies and the value head's input) and for the reference policy.

Precision: on a CUDA GPU with bf16 support the forward passes run under bf16 autocast
(`mixed_precision="auto"`), so that training updates fp32 master weights. A pure-bf16
AdamW step at lr 1e-6 rounds away almost every update (bf16 keeps 8 bits of mantissa).
The output head alone runs in fp32 when scoring (`fp32_output_head`): a bf16 logit
near 20 is rounded to a multiple of 0.125, and an action's log-prob sums such roundings
over ~100 tokens. The PPO ratio compares two such sums made in differently composed
batches (old log-probs in consecutive chunks, new ones in shuffled micro-batches), where
GPU kernels need not round alike, against a clip of 0.1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

MixedPrecision = Literal["auto", "fp32", "bf16"]
# Vision-language architectures (config model_type) whose packed prompt + response
# batches `forward_inputs` completes; load_policy refuses any other.
VISION_ARCHITECTURES = ("idefics3", "llava", "mllama", "qwen2_5_vl", "qwen2_vl")


def resolve_autocast(mixed_precision: MixedPrecision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of forward passes: bf16 for "bf16"; none for "fp32"; "auto" is
    bf16 on a CUDA GPU that supports it, none elsewhere (bf16 is several times slower
    than fp32 on CPUs without native bf16 units)."""
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp32":
        return None
    if mixed_precision == "auto":
        cuda = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda else None
    raise ValueError(f"mixed_precision must be 'auto', 'fp32' or 'bf16', got {mixed_precision!r}")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on the device's type, or nothing when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


HEAD_SLICE_ROWS = 16384
"""vocabulary rows of a 16-bit output head upcast to fp32 at a time when scoring"""


@contextlib.contextmanager
def fp32_output_head(model: nn.Module, autocast_dtype: torch.dtype | None):
    """Within the block, the model's output head (the LM head) computes its logits in fp32
    with autocast off, whatever the rest of the forward pass runs in. Nothing changes
    without autocast. The head's weights are used as they are when fp32 (the masters:
    no copy), upcast a slice of the vocabulary at a time when not (a frozen bf16 base
    under LoRA)."""
    head = model.get_output_embeddings() if autocast_dtype is not None else None
    if not isinstance(head, nn.Linear):
        yield
        return

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            hidden = hidden.float()
            if head.weight.dtype == torch.float32:
                bias = None if head.bias is None else head.bias.float()
                return nn.functional.linear(hidden, head.weight, bias)
            # A 16-bit head is upcast a slice of the vocabulary at a time (a whole fp32 copy
            # of Llama-3's 128k x 4096 head would be 2 GiB per pass).
            slices = torch.split(torch.arange(head.weight.shape[0], device=hidden.device), HEAD_SLICE_ROWS)
            return torch.cat(
                [
                    nn.functional.linear(
                        hidden, head.weight[rows].float(), None if head.bias is None else head.bias[rows].float()
                    )
                    for rows in slices
                ],
                dim=-1,
            )

    head.forward = forward  # an instance attribute: the module's own forward comes back below
    try:
        yield
    finally:
        del head.forward


def text_config(model):
    """The language model's config (a VLM's text_config; a text model's own)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hidden_size(model) -> int:
    return int(text_config(model).hidden_size)


def pack_prompt_responses(prompts, responses, pad_id: int, device) -> dict[str, torch.Tensor]:
    """Rows prompt + response, left-padded, so every response ends at the last column."""
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    # Positions count real tokens only, as generate() does under left padding.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "position_ids": position_ids.to(device),
    }


def forward_inputs(model, batch: dict[str, torch.Tensor], images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of `model`'s forward pass over a packed batch
    (`pack_prompt_responses`) and its image tensors.

    What an architecture aligns with the tokens is rebuilt from the packed input_ids,
    as its processor builds it for the prompts and generate() extends it over the
    response; a processor's own tensors fit the prompts alone (their width and left
    padding). Checked for each architecture against an unpadded forward pass on the
    processor's own encoding in tests/test_backbones.py.

    - M-RoPE models (Qwen2-VL, Qwen2.5-VL: `mrope_section` in the text config's rope
      parameters): `mm_token_type_ids` marks the image and video tokens, and with images
      the 1-D position_ids are left out, so that the model computes its 3-D (time,
      height, width) positions with its own get_rope_index, which skips left padding.
    - Mllama: `cross_attention_mask`: each image is seen, over its tiles, from its
      <|image|> token to the end of the row (the next image token, if any).
    """
    inputs = {**batch, **images}
    config = model.config
    if "mrope_section" in (getattr(text_config(model), "rope_parameters", None) or {}):
        input_ids = batch["input_ids"]
        token_types = torch.zeros_like(input_ids)
        token_types[input_ids == config.image_token_id] = 1
        token_types[input_ids == config.video_token_id] = 2
        inputs["mm_token_type_ids"] = token_types
        if "image_grid_thw" in images or "video_grid_thw" in images:
            del inputs["position_ids"]
    if config.model_type == "mllama" and "pixel_values" in images:
        inputs["cross_attention_mask"] = _mllama_cross_attention_mask(
            batch["input_ids"], config.image_token_index, images["aspect_ratio_mask"]
        )
    return inputs


def _mllama_cross_attention_mask(
    input_ids: torch.Tensor, image_token_id: int, aspect_ratio_mask: torch.Tensor
) -> torch.Tensor:
    """(batch, seq, images, tiles), by the Mllama processor's own functions; each image's
    tile count read from aspect_ratio_mask (1 over its tiles)."""
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    spans = [get_cross_attention_token_mask(row, image_token_id) for row in input_ids.tolist()]
    dense = convert_sparse_cross_attention_mask_to_dense(
        spans, aspect_ratio_mask.sum(-1).tolist(), aspect_ratio_mask.shape[-1], input_ids.shape[1]
    )
    return torch.from_numpy(dense).to(input_ids.device)


def response_window(responses: Sequence[Sequence[int]]) -> int:
    """How many final logits a packed batch needs: one per response token, plus one."""
    return max((len(r) for r in responses), default=0) + 1


@dataclass(frozen=True)
class ResponseScores:
    """What `response_token_logprobs` returns, one entry per row of the batch."""

    logprobs: list[torch.Tensor]  # log pi(token | context) of each response token
    entropies: list[torch.Tensor] | None  # entropy of each step's distribution, if asked
    last_hidden: torch.Tensor | None  # (batch, seq, hidden) final hidden states: the value head's input


def response_token_logprobs(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    responses: Sequence[Sequence[int]],
    images: dict[str, torch.Tensor] | None = None,
    logit_scale: float = 1.0,
    top_p: float = 1.0,
    *,
    autocast_dtype: torch.dtype | None = None,
    entropies: bool = False,
    last_hidden: bool = False,
) -> ResponseScores:
    """Per-token log-probs of each row's response under `model`, by one forward pass.

    model: any causal LM taking the packed batch (the policy, the frozen reference, or the
    policy with its adapters off); batch: `pack_prompt_responses(prompts, responses, ...)`;
    images: the batch's image tensors (pixel_values ...; `forward_inputs` adds what the
    architecture aligns with the tokens). The forward pass runs under
    autocast to `autocast_dtype`; the log-probs are computed in fp32 from the last
    `response_window` logits (see `response_logprobs` for logit_scale and top_p).
    Gradients flow when the caller has them enabled.
    """
    device = batch["input_ids"].device
    inputs = forward_inputs(model, batch, images or {})
    with autocast(device, autocast_dtype), fp32_output_head(model, autocast_dtype):
        out = model(**inputs, logits_to_keep=response_window(responses), output_hidden_states=last_hidden)
    terms = response_logprobs(out.logits, batch["input_ids"], responses, logit_scale, top_p)
    return ResponseScores(
        logprobs=[logprobs for logprobs, _ in terms],
        entropies=[entropy for _, entropy in terms] if entropies else None,
        last_hidden=out.hidden_states[-1] if last_hidden else None,
    )


def response_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    responses: Sequence[Sequence[int]],
    logit_scale: float = 1.0,
    top_p: float = 1.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(log-prob of each response token, entropy of each step's distribution) per row,
    under softmax(logits / logit_scale), renormalised over the top_p nucleus if top_p < 1
    (the tokens transformers' top-p sampling keeps).

    logits: the last `response_window(responses)` positions of a packed batch, so that
    logits[:, j] predicts input_ids[:, width - keep + j + 1].
    """
    keep = logits.shape[1]
    out = []
    for row, response in enumerate(responses):
        n = len(response)
        if n == 0:
            empty = logits.new_zeros(0)
            out.append((empty, empty))
            continue
        step_logits = logits[row, keep - 1 - n : keep - 1].float() / logit_scale
        if top_p < 1.0:
            step_logits = _nucleus(step_logits, top_p)
        log_probs = torch.log_softmax(step_logits, dim=-1)
        targets = input_ids[row, -n:]
        chosen = log_probs.gather(-1, targets[:, None]).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs.clamp(min=torch.finfo(log_probs.dtype).min)).sum(-1)
        out.append((chosen, entropy))
    return out


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits outside the smallest set of top tokens whose probability reaches top_p set
    to -inf (ties and the always-kept top token as in transformers' top-p warper)."""
    ordered, order = torch.sort(logits, descending=False, dim=-1)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
