"""Supervised fine-tuning on TRL's SFTTrainer, as a checkpoint series on a compute axis.

The kit's conversational datasets (text, or text + images) train on assistant tokens
only (TRL's assistant_only_loss), found through the chat template's generation marks:
the model's own when it has them (the built-in models'), TRL's marked copy of the
templates TRL knows (Qwen2.5-VL ...), the kit's of Llama-3.2-Vision's
(models.templates.training_chat_template); the text trained on is what the model's own
template renders. Every `save_steps` optimizer steps, a clean checkpoint lands
in run_dir/checkpoints/step-NNNNNN/: safetensors weights, tokenizer or processor, and a
checkpoint.json with the step, the tokens trained on and the paper's training FLOPs
X_SFT = 6 N (D_init + D_SFT). Step 0 is the starting model, so a series always starts
at the shared initialisation. Trainer state (optimizer, scheduler) lives in
run_dir/trainer/ for resuming; metrics stream to run_dir/metrics.jsonl (the layout:
run_folder).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .. import run_folder
from ..compute import gflops, sft_flops
from ..config import to_dict
from ..data import DATA_ROOT, load_sft_dataset
from ..engines import close_engines
from ..memory_plan import plan_for_settings
from ..models import LoraSettings, MixedPrecision, Policy, load_policy
from ..models.loading import load_processing_class
from ..models.templates import training_chat_template
from ..process import releases_memory
from . import checkpoints
from .distributed import check_launch, process_device


@dataclass
class SFTSettings:
    """Defaults are the paper's recipe (cosine schedule, one epoch), with a learning rate
    sized for the 135M default model rather than an 11B one (paper: 1e-6 L / 5e-7 VL)."""

    model: str = "default"
    """the model to fine-tune: 'default', 'default-vl', 'tiny', 'tiny-vl' or a checkpoint folder"""
    dataset: str = str(DATA_ROOT / "generated" / "gp-l-expert.jsonl")
    """a conversational JSONL (TRL's messages format, with images for VL); the default is the kit's own
    data/generated/gp-l-expert.jsonl (`sftrl data gp` writes it), whatever the working folder"""
    run_dir: str = "papermill_runs/sft"
    """the run folder: checkpoints/step-NNNNNN/, trainer/, metrics.jsonl; one run per folder (other settings are
    refused), which resumes from its trainer state. `sftrl sft` gives a new papermill_runs/<time>-sft unless
    --out names one"""
    learning_rate: float = 2e-5
    """peak learning rate (the paper's for 11B: 1e-6 L / 5e-7 VL)"""
    lr_scheduler_type: str = "cosine"
    """transformers' learning-rate schedule name"""
    warmup_steps: float = 0.03
    """warm-up: below 1 a fraction of the training steps, else a number of steps"""
    num_train_epochs: float = 1.0
    """passes over the dataset (unless max_steps > 0)"""
    max_steps: int = -1
    """optimizer steps; > 0 overrides num_train_epochs"""
    batch_size: int = 8
    """examples per device per forward pass"""
    gradient_accumulation_steps: int = 1
    """forward passes per optimizer step"""
    max_length: int = 1024
    """longest example in tokens (longer ones are truncated)"""
    max_records: int | None = None
    """train on the first N records only; None: all"""
    save_steps: int = 25
    """a checkpoint with its tokens and FLOPs every this many optimizer steps, and at the last"""
    logging_steps: int = 5
    """a metrics row every this many optimizer steps"""
    loss_on: Literal["assistant", "all"] = "assistant"
    """'assistant': loss on assistant tokens only (TRL's assistant_only_loss); 'all': every token"""
    lora: LoraSettings | None = None
    """train LoRA adapters instead of every weight (lora={r: 16, alpha: 32}); None: full fine-tuning"""
    mixed_precision: MixedPrecision = "auto"
    """'auto': bf16 autocast over fp32 weights on a CUDA GPU, fp32 elsewhere; or 'fp32' / 'bf16'"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory, more time; the weights come out the same (so a run
    may resume with it switched on or off)"""
    seed: int = 0
    """seeds the data order and any initialisation"""
    init_tokens: int | None = None
    """D_init: tokens of the shared SFT initialisation, counted in the FLOPs; None: the `model` checkpoint's own
    (its checkpoint.json), 0 for a base model"""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.init_tokens is None:
            self.init_tokens = run_folder.start_tokens(self.model)
        if self.loss_on not in ("assistant", "all"):
            raise ValueError(f"loss_on must be 'assistant' or 'all', got {self.loss_on!r}")
        if self.save_steps < 1 or self.batch_size < 1:
            raise ValueError("save_steps and batch_size must be >= 1")


LENGTH_FIELDS = ("max_steps", "num_train_epochs")
"""what a continuation of a run may raise (recorded in settings-history.jsonl)"""
OUTSIDE_RESULT = ("run_dir", "save_steps", "logging_steps", "gradient_checkpointing")
"""settings that change which checkpoints and metric rows are written, or memory and time, not the weights"""


@releases_memory
def train_sft(settings: SFTSettings) -> Path:
    """Run, resume or continue SFT in settings.run_dir; returns the run folder. A folder
    holding a run with other settings is refused (run_folder.claim_run_folder)."""
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    check_launch(method="sft")  # FSDP, DeepSpeed and accelerate's own mixed precision are refused before anything loads
    run_dir = Path(settings.run_dir)
    exported = _exported_step(run_dir)
    continued = run_folder.claim_run_folder(
        run_dir,
        "sft",
        to_dict(settings),
        done=max(exported, 0),
        length_fields=LENGTH_FIELDS,
        outside_result=OUTSIDE_RESULT,
    )
    resume_step = run_folder.last_trainer_step(run_dir)
    complete = settings.max_steps > 0 and exported >= settings.max_steps
    if _is_main_process() and (continued or not complete):
        run_folder.record_run_settings(run_dir, "sft", to_dict(settings), resume_step or 0, continued)
    if complete:
        return run_dir  # resuming would train one step past the end
    close_engines()  # SFT generates nothing: free a running vLLM engine's KV cache (up to 8 GiB) for the step
    dataset = load_sft_dataset(settings.dataset)
    dataset = dataset.select_columns([c for c in ("messages", "images") if c in dataset.column_names])
    if settings.max_records is not None:
        dataset = dataset.select(range(min(settings.max_records, len(dataset))))
    # The trainer's own processing class: the policy's keeps the model's template for the checkpoints.
    processing_class = load_processing_class(settings.model)
    if settings.loss_on == "assistant":  # before the weights load: a template that cannot mark stops the run here
        processing_class.chat_template = training_chat_template(processing_class, _conversations(dataset))
    # Before the weights load: a run its GPU cannot hold stops here, not at its first optimizer step.
    device = process_device()
    plan = plan_for_settings("sft", settings, int(os.environ.get("WORLD_SIZE", "1")), device)
    if _is_main_process():
        run_folder.write_memory_plan(run_dir, plan.format())
    policy = load_policy(settings.model, device=device, lora=settings.lora, mixed_precision=settings.mixed_precision)
    _check_fp32_masters(policy, settings.model)
    num_parameters = policy.num_parameters
    resume = resume_step is not None
    config = SFTConfig(
        output_dir=str(run_folder.trainer_dir(run_dir)),
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length,
        assistant_only_loss=settings.loss_on == "assistant",
        gradient_checkpointing=settings.gradient_checkpointing,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,
        save_only_model=False,
        logging_steps=settings.logging_steps,
        include_num_input_tokens_seen="non_padding",
        report_to=[],
        seed=settings.seed,
        bf16=policy.autocast_dtype == torch.bfloat16,  # autocast only: the weights stay fp32
        use_cpu=policy.device.type == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )

    class Series(TrainerCallback):
        """Exports the checkpoint series and streams metrics."""

        def __init__(self) -> None:
            self.started = time.perf_counter()

        def counters(self, state) -> dict[str, Any]:
            tokens = int(state.num_input_tokens_seen or 0)
            flops = sft_flops(num_parameters, settings.init_tokens, tokens)
            return {
                "method": "sft",
                "step": state.global_step,
                "tokens": tokens,
                "init_tokens": settings.init_tokens,
                "num_parameters": num_parameters,
                "flops": flops,
                "gflops": gflops(flops),
            }

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and not resume:
                _export(trainer.model, policy, run_dir, self.counters(state))

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                _export(trainer.model, policy, run_dir, self.counters(state))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                row = {**self.counters(state), "seconds": round(time.perf_counter() - self.started, 2), **logs}
                run_folder.append_metrics(run_dir, row)

    trainer = SFTTrainer(
        model=policy.model,
        args=config,
        train_dataset=dataset,
        processing_class=processing_class,
        callbacks=[Series()],
    )
    run_folder.drop_metrics_after(run_dir, resume_step or 0)  # rows logged after the point we start from
    trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.state.global_step % settings.save_steps != 0:  # the last, partial interval
        _export(trainer.model, policy, run_dir, Series().counters(trainer.state))
    return run_dir


def _check_fp32_masters(policy: Policy, model: str) -> None:
    """A ValueError unless every trainable parameter is fp32: the optimizer updates them in
    place (a frozen LoRA base may be bf16, `models.weights_dtype`)."""
    trained = {p.dtype for p in policy.model.parameters() if p.requires_grad}
    if trained != {torch.float32}:
        raise ValueError(
            f"SFT trains fp32 master weights; {model}'s trainable parameters loaded as {sorted(map(str, trained))}"
        )


def _conversations(dataset) -> Iterator[list[dict[str, Any]]]:
    """The dataset's conversations as TRL renders them for training: with images, each turn's
    content as parts and a placeholder per image (trl's prepare_multimodal_messages; the
    images themselves are not decoded)."""
    if "images" not in dataset.column_names:
        yield from dataset["messages"]
        return
    import pyarrow.compute
    from trl.data_utils import prepare_multimodal_messages

    counts = pyarrow.compute.list_value_length(dataset.with_format("arrow")[:]["images"]).to_pylist()
    for messages, count in zip(dataset["messages"], counts):
        yield prepare_multimodal_messages(messages, images=[None] * count)


def _is_main_process() -> bool:
    """Rank 0 of an `accelerate launch`, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def _exported_step(run_dir: Path) -> int:
    """The step of the run's last exported checkpoint (-1 when there is none)."""
    step, checkpoint = checkpoints.resume_point(run_dir)
    return step if checkpoint is not None else -1


def _export(model, policy, run_dir: Path, counters: dict[str, Any]) -> Path:
    """A self-contained checkpoint folder: (merged) weights, tokenizer/processor, counters."""
    folder = run_folder.checkpoint_dir(run_dir, "sft", counters["step"])
    trained = Policy(model, policy.tokenizer, policy.processor, name=policy.name)
    trained.save(folder)
    run_folder.write_counters(folder, counters)
    return folder
