"""The trainers' checkpoints and resume, apart from the algorithms: where a run resumes
(PPO and SFT), and for PPO the checkpoint itself (weights, adapters, counters), the
optimizer's state as safetensors plus JSON (nothing is unpickled; under DeepSpeed one
part per process), what it adds to, and the learner it resumes with. The run folder's
names are run_folder's; SFT's optimizer state is TRL's own (run_dir/trainer/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import run_folder
from ..models import VALUE_HEAD_FILE, Policy, is_peft, load_policy
from . import distributed


def optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state as flat tensors (safetensors) plus JSON metadata: no pickle.

    Under DeepSpeed ZeRO-1/2 the optimizer is DeepSpeed's, and each process holds AdamW's
    state of its own partition of the flat fp32 groups ("base_optimizer_state"): that is
    what is written, one file per process, with DeepSpeed's version (its loader asks for
    it). Its fp32 partitions need not be written: the kit trains fp32 weights, from which
    DeepSpeed rebuilds them on load."""
    state = optimizer.state_dict()
    deepspeed_version = state.get("ds_version")
    if deepspeed_version is not None:
        state = state["base_optimizer_state"]
        if not isinstance(state, dict):
            raise ValueError("DeepSpeed's elastic_checkpoint is on; the kit saves the rigid layout: turn it off")
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    meta = {"param_groups": state["param_groups"], "scalars": scalars}
    if deepspeed_version is not None:
        meta["deepspeed"] = deepspeed_version
    return tensors, meta


def load_optimizer(optimizer, folder: Path, process_index: int = 0, processes: int = 1) -> None:
    """Restore what optimizer_tensors wrote (this process's own file under DeepSpeed)."""
    tensors, meta = run_folder.read_trainer_state(folder, process_index, processes)
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    torch_state = {"state": state, "param_groups": meta["param_groups"]}
    if "deepspeed" not in meta:
        optimizer.load_state_dict(torch_state)
        return
    # DeepSpeed's loader takes every process's state as a list and picks its own.
    states: list[dict | None] = [None] * processes
    states[process_index] = {"ds_version": meta["deepspeed"], "base_optimizer_state": torch_state}
    optimizer.load_state_dict(states)


def resume_point(run_dir: Path) -> tuple[int, Path | None]:
    """The step or update to continue after and its checkpoint: the run's last, or (0, None)."""
    checkpoints = run_folder.list_checkpoints(run_dir)
    if not checkpoints:
        return 0, None
    return run_folder.read_counters(checkpoints[-1])["step"], checkpoints[-1]


def running_totals(checkpoint: Path | None) -> dict[str, Any]:
    """The totals a run adds to: those of the checkpoint it resumes from, or zeros."""
    if checkpoint is None:
        return {"tokens": 0, "generated_tokens": 0, "seconds": 0.0}
    saved = run_folder.read_counters(checkpoint)
    return {k: saved[k] for k in ("tokens", "generated_tokens", "seconds")}


def load_learner(
    model: str, resume_folder: Path | None, device, *, lora: Any, value_head: bool, mixed_precision: str
) -> Policy:
    """The policy to train: the initial model, or the last checkpoint's weights. With
    LoRA a resumed run loads the initial base plus the checkpoint's adapters, so that
    adapters-off stays the initial policy (the KL reference) and the optimizer state
    still matches the trainable parameters."""
    load = dict(device=device, lora=lora, value_head=value_head, mixed_precision=mixed_precision)
    if resume_folder is None or lora is None:
        return load_policy(resume_folder or model, **load)
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = resume_folder / run_folder.ADAPTER / "adapter_model.safetensors"
    if not adapter.is_file():
        raise ValueError(
            f"{resume_folder} holds no LoRA adapters ({adapter}); it cannot resume a LoRA run. "
            "Start a new run folder, or resume with the settings it was trained with."
        )
    policy = load_policy(model, **load)
    outcome = set_peft_model_state_dict(policy.model, load_file(adapter))
    if getattr(outcome, "unexpected_keys", None):
        raise ValueError(f"{adapter} does not fit this LoRA configuration: {outcome.unexpected_keys[:3]} ...")
    if policy.value_head is not None:
        policy.value_head.load_state_dict(load_file(resume_folder / VALUE_HEAD_FILE))
    return policy


# The counters a checkpoint's checkpoint.json holds (of the update's metrics row).
PPO_COUNTERS = (
    "method",
    "update",
    "step",
    "tokens",
    "generated_tokens",
    "init_tokens",
    "num_parameters",
    "buffer_lambda",
    "flops",
    "gflops",
    "seconds",
)


def save_ppo_checkpoint(
    run_dir: Path, update: int, policy: Policy, optimizer, row: dict[str, Any], accelerator
) -> Path:
    """Weights (and adapters) by the main process, the optimizer's state by each process
    that holds a part of it (DeepSpeed), then the counters, last: the checkpoint is complete."""
    folder = run_folder.checkpoint_dir(run_dir, "ppo", update)
    process_index, processes = optimizer_shard(accelerator)
    if accelerator.is_main_process:
        policy.save(folder)
        if is_peft(policy.model):
            policy.model.save_pretrained(folder / run_folder.ADAPTER)
    if accelerator.is_main_process or processes > 1:
        folder.mkdir(parents=True, exist_ok=True)
        run_folder.write_trainer_state(folder, *optimizer_tensors(optimizer), process_index, processes)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run_folder.write_counters(folder, {k: row[k] for k in PPO_COUNTERS})
    return folder


def optimizer_shard(accelerator) -> tuple[int, int]:
    """(this process, processes) over which the optimizer's state is split: every process
    holds its own part under DeepSpeed ZeRO, all of it (0, 1) otherwise."""
    if distributed.is_deepspeed(accelerator):
        return accelerator.process_index, accelerator.num_processes
    return 0, 1
