"""What the run is: `PlanRequest`, a run to plan per GPU, its sizes as PPOSettings and
SFTSettings mean them, checked as it is made: a run the kit's trainers refuse (DeepSpeed's
bf16 mode, ZeRO-3, SFT under DeepSpeed: train/distributed.check_launch) or weights in a
dtype the kit does not load them in (`module_dtype`, from `models.loading.weights_dtype`) is
refused here, so that no plan offers it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..models.loading import LoraSettings, weights_dtype


@dataclass(frozen=True)
class PlanRequest:
    """A run to plan, per GPU. The PPO/SFT sizes mean what PPOSettings/SFTSettings mean."""

    model: str
    method: Literal["ppo", "sft"] = "ppo"
    gpus: int = 1
    """processes, one GPU each"""
    gpu_memory_gib: float | None = None
    """the memory one process may use; None: no limit is known (a CPU), so the plan only reports"""
    device: Literal["cuda", "cpu"] = "cuda"
    lora: LoraSettings | None = None
    zero_stage: Literal[0, 2] = 0
    """0: DDP (or one process); 2: DeepSpeed ZeRO-2 (PPO only; the trainers refuse ZeRO-3)"""
    autocast_bf16: bool = True
    """forward passes under bf16 autocast (the kit's default on CUDA); False: fp32 throughout (a CPU)"""
    module_dtype: Literal["float32", "bfloat16"] | None = None
    """the dtype the learner's weights load in, as the kit loads them (`loaded_dtype`: models.loading.weights_dtype):
    fp32 masters for whatever trains; with LoRA under bf16 autocast the frozen base in bf16. None: that dtype; any
    other is refused"""
    gradient_checkpointing: bool = False
    engine: Literal["vllm", "hf"] = "vllm"
    kl_coef: float = 0.0
    critic: bool = True
    """a value head (advantage 'gae')"""
    episodes_per_update: int = 16
    rollout_batch_size: int = 16
    minibatch_size: int = 8
    """turns per optimizer step: with more than micro_batch_size, gradients accumulate over micro-batches"""
    micro_batch_size: int = 4
    max_new_tokens: int = 128
    prompt_tokens: int = 0
    """the longest prompt of a rollout (`rollout_prompt`); PPO needs it"""
    images_per_prompt: int = 0
    vision_tokens_per_image: int | None = None
    """the vision tower's tokens per image where the config does not fix them (`rollout_prompt`)"""
    sleep_mode: bool | None = None
    """vLLM sleep mode between rollout and update: None lets the plan choose it where it is needed and available"""
    batch_size: int = 8
    """SFT: examples per device per forward pass"""
    max_length: int = 1024
    """SFT: the longest example in tokens"""
    gradient_accumulation_steps: int = 1
    """SFT: forward passes per optimizer step"""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in ("ppo", "sft"):
            raise ValueError(f"method must be 'ppo' or 'sft', got {self.method!r}")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {self.device!r}")
        if self.engine not in ("vllm", "hf"):
            raise ValueError(f"engine must be 'vllm' or 'hf' (resolve 'auto' first), got {self.engine!r}")
        if self.zero_stage == 3:
            raise ValueError(
                "the kit's trainers refuse DeepSpeed ZeRO-3 (train/distributed.check_launch: their weight sync, "
                "checkpoints and KL reference read whole tensors): plan DDP (zero_stage 0) or ZeRO-2 (zero_stage 2)"
            )
        if self.zero_stage not in (0, 2):
            raise ValueError(f"zero_stage must be 0 (DDP) or 2 (DeepSpeed ZeRO-2), got {self.zero_stage!r}")
        if self.zero_stage and self.device != "cuda":
            raise ValueError("DeepSpeed ZeRO runs on CUDA GPUs: plan it with device 'cuda'")
        if self.zero_stage and self.method == "sft":
            raise ValueError(
                "SFT does not run under DeepSpeed (train/distributed.check_launch refuses it): plan one process or DDP "
                "(zero_stage 0), with LoRA where full fine-tuning does not fit"
            )
        if self.module_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"module_dtype must be 'float32' or 'bfloat16', got {self.module_dtype!r}")
        loaded = loaded_dtype(self.lora, self.autocast_bf16)
        if self.module_dtype == "bfloat16" and self.lora is None:
            raise ValueError(
                "full fine-tuning keeps fp32 master weights in the module (models.loading.weights_dtype): a bf16 "
                "module is DeepSpeed's bf16 mode, which the kit's trainers refuse (accelerate's mixed_precision must "
                "be 'no', train/distributed.check_launch); plan module_dtype 'float32' (ZeRO-2 divides its gradients "
                "and AdamW state), or LoRA, whose frozen base loads in bf16 under bf16 autocast"
            )
        if self.module_dtype not in (None, loaded):
            autocast = "under bf16 autocast" if self.autocast_bf16 else "without autocast"
            raise ValueError(
                f"with LoRA {autocast} the kit loads the frozen base in {loaded} (models.loading.weights_dtype), "
                f"not in {self.module_dtype}"
            )
        object.__setattr__(self, "module_dtype", loaded)  # frozen: None becomes the dtype the kit loads
        names = ("gpus", "micro_batch_size", "minibatch_size", "episodes_per_update", "rollout_batch_size")
        for name in (*names, "batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.method == "ppo" and self.prompt_tokens < 1:
            raise ValueError(
                "a PPO plan needs the longest prompt in tokens (prompt_tokens; rollout_prompt measures it)"
            )
        if self.gpu_memory_gib is not None and self.gpu_memory_gib <= 0:
            raise ValueError(f"gpu_memory_gib must be > 0, got {self.gpu_memory_gib}")

    @property
    def accumulates(self) -> bool:
        """Whether gradients accumulate over several forward passes per optimizer step (then
        a micro-batch's activations live beside a whole set of gradients)."""
        if self.method == "ppo":
            return self.minibatch_size > self.micro_batch_size
        return self.gradient_accumulation_steps > 1

    @property
    def sleep_available(self) -> bool:
        """vLLM's sleep mode needs CUDA's cumem allocator (vllm/device_allocator/cumem.py); its
        CPU build has none (platforms: is_sleep_mode_available() is False, CPUWorker.sleep ignores it)."""
        return self.device == "cuda"


def loaded_dtype(lora: LoraSettings | None, autocast_bf16: bool) -> Literal["float32", "bfloat16"]:
    """The dtype the kit loads a model's weights in (`models.loading.weights_dtype`, which `load_policy`
    uses): "bfloat16" for LoRA's frozen base under bf16 autocast, else "float32"."""
    dtype = weights_dtype(lora, torch.bfloat16 if autocast_bf16 else None)
    return "bfloat16" if dtype == torch.bfloat16 else "float32"
