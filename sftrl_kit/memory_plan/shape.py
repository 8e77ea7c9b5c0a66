"""What a model is, from its config alone: exact parameter counts of the model (with LoRA's
adapters added as `load_policy` adds them) built on PyTorch's meta device, the sizes its
activations and KV cache scale with (`ModelShape`, `VisionTower`), and the backbone shapes
in configs/shapes/."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.loading import LoraSettings, model_config, resolve_model, with_lora

SHAPES = Path(__file__).resolve().parents[2] / "configs" / "shapes"
"""public config.json files of the backbones the study plans for (no weights): `--model qwen2.5-7b`"""


@dataclass(frozen=True)
class VisionTower:
    """The vision encoder's sizes (what its activations scale with) and how many tokens it
    runs per image."""

    layers: int
    hidden: int
    intermediate: int
    gated: bool  # a SwiGLU MLP (Qwen2.5-VL) rather than fc1 -> GELU -> fc2
    tokens_per_image: int | None  # None: set by the image processor (dynamic resolution)
    trainable: bool  # whether its parameters train (full fine-tuning, or LoRA adapters in it)


@dataclass(frozen=True)
class ModelShape:
    """Exact parameter counts of a model (with or without LoRA) and the sizes its
    activations and KV cache scale with, from its config built on the meta device."""

    name: str
    model_type: str
    total_params: int  # every parameter, shared ones once (adapters included with LoRA)
    trainable_params: int
    matmul_params: int  # weights of Linear/Conv layers: what autocast casts to bf16
    trainable_matmul_params: int
    largest_layer_params: int  # DeepSpeed's largest_layer_params (a module's own parameters)
    largest_trainable_tensor: int
    hidden: int
    layers: int  # decoder layers, cross-attention layers included
    self_attention_layers: int  # the layers that keep a KV cache per token
    cross_attention_layers: int  # Mllama's layers that attend to the image
    q_dim: int  # attention heads x head dim
    kv_dim: int  # KV heads x head dim
    heads: int
    intermediate: int
    vocab: int
    vision: VisionTower | None

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def frozen_matmul_params(self) -> int:
        return self.matmul_params - self.trainable_matmul_params

    def kv_bytes_per_token(self, element_bytes: int) -> int:
        """Keys and values of one token over every self-attention layer."""
        return 2 * self.self_attention_layers * self.kv_dim * element_bytes


def shape_names() -> list[str]:
    """The model shapes in configs/shapes/ (`sftrl plan --model qwen2.5-7b`)."""
    return sorted(path.stem for path in SHAPES.glob("*.json"))


def model_config_dict(name_or_path: str | Path) -> dict:
    """A model's config.json as a dict: a shape in configs/shapes/, a built-in name or a folder."""
    shape = SHAPES / f"{name_or_path}.json"
    if str(name_or_path) in shape_names():
        return json.loads(shape.read_text())
    try:
        return model_config(resolve_model(name_or_path))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; or a model shape from configs/shapes/: {', '.join(shape_names())}") from None


def model_shape(name_or_path: str | Path, lora: LoraSettings | None = None) -> ModelShape:
    """The shape of a model (a shape name, a built-in or a folder), with LoRA's adapters
    added as `load_policy` adds them; built on the meta device, so nothing is allocated."""
    lora_key = None if lora is None else json.dumps(dataclasses.asdict(lora), sort_keys=True)
    return _model_shape(str(name_or_path), lora_key)


@functools.lru_cache(maxsize=32)
def _model_shape(name: str, lora_key: str | None) -> ModelShape:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config_dict = model_config_dict(name)
    config = AutoConfig.for_model(**config_dict)
    vision = "vision_config" in config_dict
    model_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    with torch.device("meta"):
        model = model_class.from_config(config)
        if lora_key is not None:
            model = with_lora(model, LoraSettings(**json.loads(lora_key)))
    return _shape_of(name, model, config)


def _shape_of(name: str, model: torch.nn.Module, config) -> ModelShape:
    text = config.get_text_config()
    parameters = {id(p): p for p in model.parameters()}.values()  # tied weights once
    matmul = {id(m.weight): m.weight for m in model.modules() if _is_matmul(m)}.values()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    cross = len(getattr(text, "cross_attention_layers", None) or [])
    vision_trainable = any(p.requires_grad for n, p in model.named_parameters() if _in_vision_tower(n))
    return ModelShape(
        name=name,
        model_type=config.model_type,
        total_params=sum(p.numel() for p in parameters),
        trainable_params=sum(p.numel() for p in parameters if p.requires_grad),
        matmul_params=sum(w.numel() for w in matmul),
        trainable_matmul_params=sum(w.numel() for w in matmul if w.requires_grad),
        largest_layer_params=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        largest_trainable_tensor=max((p.numel() for p in parameters if p.requires_grad), default=0),
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        self_attention_layers=text.num_hidden_layers - cross,
        cross_attention_layers=cross,
        q_dim=text.num_attention_heads * head_dim,
        kv_dim=kv_heads * head_dim,
        heads=text.num_attention_heads,
        intermediate=text.intermediate_size,
        vocab=model.get_output_embeddings().weight.shape[0],
        vision=_vision_tower(config, vision_trainable) if hasattr(config, "vision_config") else None,
    )


def _is_matmul(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d))


def _in_vision_tower(parameter_name: str) -> bool:
    return any(part in parameter_name for part in ("vision_model", "vision_tower", "visual."))


def _vision_tower(config, trainable: bool) -> VisionTower:
    """The vision tower of a VLM config. Tokens per image: Mllama runs every image as
    max_num_tiles tiles of (image_size / patch)^2 + 1 patches, padded to a multiple of 8
    (its vision model pads them), whatever the image; LLaVA-style towers a fixed
    (image_size / patch)^2 (+1 class token for CLIP); Qwen-VL and Idefics3 depend on the
    image, and are measured with the processor (`rollout_prompt`)."""
    vision = config.vision_config
    layers = getattr(vision, "depth", None) or vision.num_hidden_layers
    layers += getattr(vision, "num_global_layers", 0) or 0
    hidden = getattr(vision, "hidden_size", None) or vision.embed_dim
    if config.model_type in ("qwen2_5_vl", "qwen2_vl"):
        hidden = getattr(vision, "embed_dim", None) or hidden
    intermediate = getattr(vision, "intermediate_size", None) or int(hidden * vision.mlp_ratio)
    tokens = None
    if config.model_type == "mllama":
        patches = (vision.image_size // vision.patch_size) ** 2 + 1
        tokens = vision.max_num_tiles * math.ceil(patches / 8) * 8
    elif config.model_type == "llava":
        tokens = (vision.image_size // vision.patch_size) ** 2 + (1 if vision.model_type == "clip_vision_model" else 0)
    return VisionTower(layers, hidden, intermediate, config.model_type == "qwen2_5_vl", tokens, trainable)


def is_vision(name_or_path: str | Path) -> bool:
    """Whether a shape, built-in or folder is a vision-language model (its config has a vision_config)."""
    return "vision_config" in model_config_dict(name_or_path)
