"""Per-GPU memory of a training run, planned from the model's config alone (no weights
load): what a PPO or SFT run holds on each device, whether it fits, and what would make
it fit. `sftrl plan` prints it; the trainers call `plan_for_settings` before the first
rollout, so that a run that cannot fit stops at once instead of at its first optimizer
step (where AdamW's state appears).

Parameter counts are exact: the model is built on PyTorch's meta device from its
config (LoRA's adapters added the way `load_policy` adds them) and its tensors counted.
The rest is arithmetic over those counts and the run's sizes, row by row:

    learner weights     fp32 masters (4 B/param); with LoRA the frozen base in `module_dtype`
                        (as `models.loading.weights_dtype` loads it: bf16 under bf16 autocast) and
                        fp32 adapters
    gradients           4 B per trainable parameter, zeroed to None after each step: beside a
                        micro-batch's activations when they accumulate over micro-batches,
                        else only as the backward pass frees the activations; DDP also keeps
                        its own gradient buckets (4 B/trainable)
    AdamW state         two fp32 moments: 8 B per trainable parameter, and the step's own
                        temporaries (torch's foreach AdamW on CUDA: sqrt(v) of every tensor)
    autocast copies     bf16 autocast caches the bf16 cast of every trainable weight a matmul
                        uses (2 B/param) for a whole forward pass or `generate`; with an fp32
                        frozen base, each frozen weight's cast is kept for the backward pass
    KL reference        a second, fp32 copy of the weights when kl_coef > 0 without LoRA (with
                        LoRA the reference is the base with adapters off: nothing)
    value head          hidden + 1 parameters with their gradient and AdamW state (PPO, GAE)
    activations         one micro-batch's saved tensors (`activation_bytes_per_token`), or
                        with gradient checkpointing each layer's input and one layer
    logits              the response window's logits and their log-softmax (PPO), or the
                        fused LM head's tile (TRL's SFT never builds the full logits)
    engine              vLLM's copy of the weights (bf16 on CUDA) and its KV cache, sized
                        for one rollout: episodes_per_update x (longest prompt + max_new_tokens)
                        tokens, in vLLM's 16-token blocks; or, for the HF engine, generate's
                        KV cache over rollout_batch_size conversations
    CUDA context        the driver's context and library workspaces

ZeRO-2 (DeepSpeed, PPO only) divides gradients and optimizer state (with DeepSpeed's own
fp32 master partition) by the GPUs; the module and autocast's bf16 casts of it stay whole
on every GPU. What trains is fp32 (the kit keeps fp32 masters in the module, or trains
fp32 adapters), so a trainable parameter takes 4 B + (4 + 4 + 8) B / N, where DeepSpeed's
estimator for its bf16 mode (`estimate_zero2_model_states_mem_needs`) counts 2 B + 18 B/N.
Only what the kit's trainers run is planned (train/distributed.check_launch): DeepSpeed's
bf16 mode (a bf16 module), ZeRO-3 and SFT under DeepSpeed are refused as requests, and
never advised.

A run's peak is what it holds throughout plus the largest transient memory of its three
phases: generating the rollout, the learner's forward and backward passes (`train`), and
the optimizer step. It is the peak of a run's steady state: at the first step AdamW's
state appears only in the step itself. vLLM's sleep mode (level 2) frees the engine's weights and KV
cache during the update; the plan chooses it when the run does not fit awake but fits
asleep, where vLLM has it (CUDA: its cumem allocator; vLLM's CPU build has none).

The package, bottom to top:

    shape.py        the model's shape from its config, built on the meta device
    prompt.py       the longest prompt of a rollout, measured on the environment
    request.py      PlanRequest: the run to plan
    activations.py  a micro-batch's saved activations and the loss's logits
    rows.py         the rows of a plan and its peak over the phases
    plan.py         MemoryPlan (the table) and the plan without its advice
    advice.py       what would make a run fit; memory_plan, the plan with its advice
    settings.py     the trainers' entry: plan_for_settings, request_for_settings
    command.py      `sftrl plan`'s request (plan_request), with the trainers' defaults; not
                    imported here, since the trainers import this face

This face re-exports what the kit, the benchmarks and the tests import.
"""

from .activations import activation_bytes, activation_bytes_per_token, logit_bytes
from .advice import memory_plan
from .plan import Advice, MemoryPlan, MemoryPlanError
from .prompt import RolloutPrompt, rollout_prompt
from .request import PlanRequest, loaded_dtype
from .rows import GIB, Row, peak_bytes, plan_rows
from .settings import _launched_zero_stage as _launched_zero_stage  # tests read accelerate's environment through it
from .settings import plan_for_settings, request_for_settings
from .shape import ModelShape, VisionTower, is_vision, model_config_dict, model_shape, shape_names

__all__ = [
    "GIB",
    "Advice",
    "MemoryPlan",
    "MemoryPlanError",
    "ModelShape",
    "PlanRequest",
    "RolloutPrompt",
    "Row",
    "VisionTower",
    "activation_bytes",
    "activation_bytes_per_token",
    "is_vision",
    "loaded_dtype",
    "logit_bytes",
    "memory_plan",
    "model_config_dict",
    "model_shape",
    "peak_bytes",
    "plan_for_settings",
    "plan_rows",
    "request_for_settings",
    "rollout_prompt",
    "shape_names",
]
