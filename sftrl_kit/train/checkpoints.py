"""The trainers' checkpoints and resume, apart from the algorithms: where a run resumes
(PPO and SFT), and for PPO the optimizer's state as safetensors plus JSON (nothing is
unpickled), what it adds to, and the learner it resumes with. The run folder's names are
run_folder's; SFT's optimizer state is TRL's own (run_dir/trainer/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import run_folder
from ..models import VALUE_HEAD_FILE, Policy, load_policy


def optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state as flat tensors (safetensors) plus JSON metadata: no pickle."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer, folder: Path) -> None:
    tensors, meta = run_folder.read_trainer_state(folder)
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


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
