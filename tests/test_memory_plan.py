"""The memory plan (sftrl_kit.memory_plan, `sftrl plan`): exact parameter counts from
configs alone, the review's figures in kind, advice that really fits, only what the
trainers run (weights in the dtype the kit loads them in; no DeepSpeed bf16 mode, ZeRO-3
or SFT under DeepSpeed), the CLI's exit status, ZeRO-2 rows against DeepSpeed's published
estimator, and the trainers' refusal on a GPU that cannot hold the run (torch.cuda
monkeypatched)."""

from __future__ import annotations

import pytest
import torch

from sftrl_kit import memory_plan as mp
from sftrl_kit.cli import main
from sftrl_kit.data import training_config
from sftrl_kit.models import LoraSettings, load_policy
from sftrl_kit.train.ppo import PPOSettings
from sftrl_kit.train.sft import SFTSettings

GIB = 2**30
PUBLISHED_BILLIONS = {  # the model cards' sizes
    "qwen2.5-1.5b": 1.54,
    "qwen2.5-3b": 3.09,
    "qwen2.5-7b": 7.62,
    "llama-3.2-11b-vision": 10.67,
}


@pytest.fixture(scope="module")
def gp_prompt() -> int:
    """The longest GP-L prompt of a PPO rollout at the default 128 new tokens (budget 5)."""
    return mp.rollout_prompt("qwen2.5-7b", "gp-l", training_config("gp-l"), None, 128).longest_prompt_tokens


def ppo(model: str, prompt_tokens: int, **changes) -> mp.PlanRequest:
    return mp.PlanRequest(model, prompt_tokens=prompt_tokens, **{"gpu_memory_gib": 80, **changes})


# (a) parameter counts


@pytest.mark.parametrize("shape", sorted(PUBLISHED_BILLIONS))
def test_the_shapes_count_their_published_sizes(shape):
    assert round(mp.model_shape(shape).total_params / 1e9, 2) == PUBLISHED_BILLIONS[shape]


def test_the_tiny_models_counts_are_those_of_the_loaded_model():
    shape, lora_shape = mp.model_shape("tiny"), mp.model_shape("tiny", LoraSettings())
    model = load_policy("tiny").model
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert shape.trainable_params == shape.total_params
    adapted = load_policy("tiny", lora=LoraSettings()).model
    assert lora_shape.total_params == sum(p.numel() for p in adapted.parameters())
    assert lora_shape.trainable_params == sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert 0 < lora_shape.trainable_params < shape.total_params


# (b) the review's figures, in kind


def test_one_80_gib_gpu_holds_full_ppo_of_1_5b_but_not_of_7b_which_fits_with_lora(gp_prompt):
    assert mp.memory_plan(ppo("qwen2.5-1.5b", gp_prompt)).fits
    full_7b = mp.memory_plan(ppo("qwen2.5-7b", gp_prompt))
    assert not full_7b.fits
    assert full_7b.total_gib > 120
    lora_7b = mp.memory_plan(ppo("qwen2.5-7b", gp_prompt, lora=LoraSettings()))
    assert lora_7b.fits


def test_11b_mllama_on_8_gpus_fits_with_lora_and_checkpointing_not_full_fine_tuning_under_zero_2(gp_prompt):
    """The paper's setting: Llama-3.2-11B-Vision, HF engine, 8 x 80 GiB (its vision tower runs
    4 tiles x 1,608 patches per image). As the kit runs it, full fine-tuning keeps an fp32
    module: under ZeRO-2 the unpartitioned fp32 weights (39.75 GiB) and their bf16 casts
    (18.75 GiB) stay on every GPU, 91.8 GiB with gradient checkpointing; LoRA over the bf16
    base (20.1 GiB) fits once the activations are checkpointed (29.9 GiB)."""
    vl = mp.rollout_prompt("llama-3.2-11b-vision", "gp-vl", training_config("gp-vl"), None, 128)
    run = dict(engine="hf", gpus=8, **vl.fields())
    checkpointed = dict(run, gradient_checkpointing=True)

    zero_2 = mp.memory_plan(ppo("llama-3.2-11b-vision", **checkpointed, zero_stage=2))
    assert not zero_2.fits
    assert 90 < zero_2.total_gib < 93
    rows = {r.name: r for r in zero_2.rows}
    assert rows["learner weights"].note == "float32 module"
    assert round(rows["learner weights"].gib, 2) == 39.75
    assert round(rows["autocast copies (trainable)"].gib, 2) == 18.75
    advice = [a.text for a in zero_2.advice]
    assert advice[0].startswith("LoRA")
    assert advice[1].startswith("ZeRO-2 over 20 GPUs")  # 8 are not enough for the fp32 module
    assert not any("ZeRO-3" in text or "bf16" in text for text in advice)
    assert not mp.memory_plan(ppo("llama-3.2-11b-vision", **checkpointed)).fits  # DDP: 4 copies of the fp32 state
    assert not mp.memory_plan(ppo("llama-3.2-11b-vision", **run, zero_stage=2)).fits

    lora = mp.memory_plan(ppo("llama-3.2-11b-vision", **checkpointed, lora=LoraSettings()))
    assert lora.fits
    assert lora.request.module_dtype == "bfloat16"  # as load_policy loads it (models.loading.weights_dtype)
    assert {r.name: r.note for r in lora.rows}["learner weights"] == "fp32 masters; frozen base bfloat16"
    assert 29 < lora.total_gib < 31
    unchecked = mp.memory_plan(ppo("llama-3.2-11b-vision", **run, lora=LoraSettings()))
    assert not unchecked.fits  # the vision tower's activations: 88 GiB at 4 x 1,068 tokens
    assert "gradient checkpointing (gradient_checkpointing=true)" in [a.text for a in unchecked.advice]

    # DeepSpeed's bf16 mode (a bf16 module, the fp32 masters only in its optimizer) would fit, but the trainers
    # refuse it: the plan does too
    with pytest.raises(ValueError, match="DeepSpeed's bf16 mode, which the kit's trainers refuse"):
        ppo("llama-3.2-11b-vision", **checkpointed, zero_stage=2, module_dtype="bfloat16")


def test_the_weights_dtype_is_the_one_the_kit_loads(gp_prompt):
    """module_dtype follows models.loading.weights_dtype: fp32 for full fine-tuning, LoRA's frozen base
    in bf16 under bf16 autocast and fp32 without; any other dtype is refused."""
    assert ppo("qwen2.5-7b", gp_prompt).module_dtype == "float32"
    assert ppo("qwen2.5-7b", gp_prompt, lora=LoraSettings()).module_dtype == "bfloat16"
    cpu = ppo("tiny", gp_prompt, lora=LoraSettings(), device="cpu", autocast_bf16=False, gpu_memory_gib=None)
    assert cpu.module_dtype == "float32"
    with pytest.raises(ValueError, match="the kit loads the frozen base in bfloat16"):
        ppo("qwen2.5-7b", gp_prompt, lora=LoraSettings(), module_dtype="float32")
    with pytest.raises(ValueError, match="full fine-tuning keeps fp32 master weights"):
        ppo("qwen2.5-7b", gp_prompt, module_dtype="bfloat16")


def test_what_the_trainers_refuse_is_refused_and_never_advised(gp_prompt):
    with pytest.raises(ValueError, match="refuse DeepSpeed ZeRO-3"):
        ppo("qwen2.5-7b", gp_prompt, zero_stage=3, gpus=8)
    with pytest.raises(ValueError, match="SFT does not run under DeepSpeed.*DDP.*LoRA"):
        mp.PlanRequest("qwen2.5-7b", method="sft", zero_stage=2, gpus=8, gpu_memory_gib=80)
    sft = mp.memory_plan(mp.PlanRequest("qwen2.5-7b", method="sft", gpus=8, gpu_memory_gib=80))
    assert not sft.fits
    assert sft.advice
    assert not any("ZeRO" in a.text for a in sft.advice)
    assert all(a.request.zero_stage == 0 for a in sft.advice)


def test_sleep_mode_is_chosen_only_when_the_run_fits_asleep_but_not_awake(gp_prompt):
    full_3b = mp.memory_plan(ppo("qwen2.5-3b", gp_prompt))
    awake = mp.memory_plan(ppo("qwen2.5-3b", gp_prompt, sleep_mode=False))
    assert full_3b.sleep_mode
    assert full_3b.fits
    assert not awake.fits
    assert {r.name: r.phase for r in full_3b.rows}["vLLM weights"] == "rollout"
    assert not mp.memory_plan(ppo("qwen2.5-1.5b", gp_prompt)).sleep_mode  # fits awake
    assert not mp.memory_plan(ppo("qwen2.5-7b", gp_prompt, lora=LoraSettings())).sleep_mode  # a bf16 base fits awake


def test_a_cpu_plan_says_vllm_has_no_sleep_mode_there(gp_prompt):
    plan = mp.memory_plan(ppo("tiny", gp_prompt, device="cpu", autocast_bf16=False, gpu_memory_gib=None))
    assert plan.fits
    assert not plan.sleep_mode
    assert plan.capacity is None
    assert "vLLM's CPU build has no sleep mode" in plan.format()
    with pytest.raises(ValueError, match="sleep mode needs CUDA"):
        mp.memory_plan(ppo("tiny", gp_prompt, device="cpu", autocast_bf16=False, sleep_mode=True))


# (c) advice


@pytest.mark.parametrize(
    "changes",
    [
        dict(model="qwen2.5-7b"),
        dict(model="qwen2.5-3b", kl_coef=0.05, sleep_mode=False),
        dict(model="qwen2.5-7b", lora=LoraSettings(), sleep_mode=False, micro_batch_size=8),
        dict(model="qwen2.5-1.5b", method="sft", batch_size=16, max_length=2048, gpu_memory_gib=40),
    ],
)
def test_every_advised_change_fits_when_planned_again(gp_prompt, changes):
    request = mp.PlanRequest(**{"gpu_memory_gib": 80, "prompt_tokens": gp_prompt, **changes})
    plan = mp.memory_plan(request)
    assert not plan.fits
    assert plan.advice
    for advice in plan.advice:
        replanned = mp.memory_plan(advice.request)
        assert replanned.fits, advice.text
        assert replanned.total <= replanned.capacity


def test_the_kl_reference_is_a_weight_copy_without_lora_and_nothing_with_it(gp_prompt):
    def reference(**changes):
        rows = mp.memory_plan(ppo("qwen2.5-1.5b", gp_prompt, kl_coef=0.1, **changes)).rows
        return {r.name: r.bytes for r in rows}.get("KL reference", 0)

    assert reference() == 4 * mp.model_shape("qwen2.5-1.5b").total_params
    assert reference(lora=LoraSettings()) == 0


# (d) the command


def test_sftrl_plan_prints_the_table_and_exits_0_when_it_fits_and_1_when_not(capsys):
    assert main(["plan", "--model", "qwen2.5-1.5b", "--gpu-memory-gib", "80"]) == 0
    fits = capsys.readouterr().out
    assert "AdamW state" in fits
    assert "peak = held + max(rollout, train, step)" in fits
    assert ": fits" in fits
    assert main(["plan", "--model", "qwen2.5-7b", "--gpu-memory-gib", "80"]) == 1
    refused = capsys.readouterr().out
    assert "DOES NOT FIT" in refused
    assert "would fit with:" in refused
    assert "LoRA" in refused
    assert main(["plan", "--model", "qwen2.5-7b", "--gpu-memory-gib", "80", "--lora"]) == 0
    assert "frozen base bfloat16" in capsys.readouterr().out


def test_sftrl_plan_names_the_shapes_when_a_model_is_missing(capsys, tmp_path):
    assert main(["plan", "--model", str(tmp_path / "nothing"), "--gpu-memory-gib", "80"]) == 2
    assert "qwen2.5-7b" in capsys.readouterr().err


# (e) ZeRO-2 against DeepSpeed's estimator


def deepspeed_zero2_gpu_bytes(total_params: int, gpus: int) -> int:
    """deepspeed/runtime/zero/stage_1_and_2.py, estimate_zero2_model_states_mem_needs, no offload
    (since v0.14.3), for DeepSpeed's bf16 mode: 2 B of 16-bit weights + 18 B/N (16-bit and fp32
    gradients, fp32 weights, two moments)."""
    return 2 * total_params + int(18 * total_params / gpus)


def fp32_module(deepspeed_bytes: int, total_params: int, gpus: int) -> int:
    """DeepSpeed's estimate for the kit's fp32 module: the 16-bit weights (2 B) are fp32 (4 B),
    and there is no 16-bit gradient partition (2 B/N) besides the fp32 one."""
    return deepspeed_bytes + 2 * total_params - int(2 * total_params / gpus)


MODEL_STATES = ("learner weights", "fp32 master partition", "gradients", "AdamW state")


@pytest.mark.parametrize("gpus", [2, 8])
def test_zero_2_rows_are_deepspeeds_estimate_for_an_fp32_module(gp_prompt, gpus):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**mp.model_config_dict("qwen2.5-7b")))
    params = sum({id(p): p.numel() for p in model.parameters()}.values())
    request = ppo("qwen2.5-7b", gp_prompt, zero_stage=2, gpus=gpus)
    states = sum(r.bytes for r in mp.memory_plan(request).rows if r.name in MODEL_STATES)
    expected = fp32_module(deepspeed_zero2_gpu_bytes(params, gpus), params, gpus)
    assert abs(states - expected) <= 4 * gpus  # the rows divide by N one by one


def test_zero_2_rows_agree_with_installed_deepspeed(gp_prompt, capsys):
    """Where DeepSpeed is importable (PYTHONPATH with a --no-deps install will do), its own
    estimator gives the same per-GPU figures, for an fp32 module."""
    stage_2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
    shape = mp.model_shape("qwen2.5-7b")
    for gpus in (2, 8):
        _, theirs = stage_2.estimate_zero2_model_states_mem_needs(shape.total_params, gpus, cpu_offload=False)
        request = ppo("qwen2.5-7b", gp_prompt, zero_stage=2, gpus=gpus)
        ours = sum(r.bytes for r in mp.memory_plan(request).rows if r.name in MODEL_STATES)
        assert abs(ours - fp32_module(theirs, shape.total_params, gpus)) <= 4 * gpus


# (f) the trainers' check on a GPU


@pytest.fixture
def one_80_gib_gpu_at_index_1(monkeypatch):
    """torch.cuda as on a machine whose GPU 1 has 80 GiB, 2 GiB of it used by another process."""
    calls = []

    class Properties:
        total_memory = 80 * GIB

    def properties(index):
        calls.append(("properties", index))
        return Properties()

    def mem_get_info(index):
        calls.append(("mem_get_info", index))
        return 78 * GIB, 80 * GIB

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    return calls


def test_plan_for_settings_refuses_a_run_its_gpu_cannot_hold(one_80_gib_gpu_at_index_1):
    settings = PPOSettings(model="qwen2.5-7b", engine="vllm")
    with pytest.raises(mp.MemoryPlanError) as refused:
        mp.plan_for_settings("ppo", settings, processes=1, device="cuda:1")
    message = str(refused.value)
    assert isinstance(refused.value, ValueError)
    assert "DOES NOT FIT" in message
    assert "would fit with:" in message
    assert "LoRA" in message
    assert "GPU 1: 80.00 GiB, 2.00 GiB already in use" in message
    assert ("mem_get_info", 1) in one_80_gib_gpu_at_index_1
    assert ("properties", 1) in one_80_gib_gpu_at_index_1
    assert all(index == 1 for _, index in one_80_gib_gpu_at_index_1)


def test_plan_for_settings_returns_a_plan_that_fits(one_80_gib_gpu_at_index_1):
    plan = mp.plan_for_settings("sft", SFTSettings(model="qwen2.5-1.5b"), processes=1, device="cuda:1")
    assert plan.fits
    assert plan.request.autocast_bf16
    assert plan.request.method == "sft"
    assert plan.capacity == 79 * GIB  # free memory, with this process's CUDA context counted by its row


def test_plan_for_settings_counts_the_bf16_base_the_kit_loads_for_lora(one_80_gib_gpu_at_index_1):
    settings = PPOSettings(model="qwen2.5-7b", engine="vllm", lora=LoraSettings())
    plan = mp.plan_for_settings("ppo", settings, processes=1, device="cuda:1")
    assert plan.request.module_dtype == "bfloat16"  # models.loading.weights_dtype: LoRA under bf16 autocast
    assert plan.fits
    assert "autocast copies (frozen base)" not in {r.name for r in plan.rows}


def test_plan_for_settings_only_reports_on_a_cpu():
    plan = mp.plan_for_settings("ppo", PPOSettings(model="qwen2.5-7b", engine="hf"), processes=1, device="cpu")
    assert plan.capacity is None
    assert plan.fits
    assert not plan.request.autocast_bf16


def test_the_launched_zero_stage_is_read_from_accelerates_environment():
    assert mp._launched_zero_stage({}) == 0
    deepspeed = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
    assert mp._launched_zero_stage(deepspeed) == 2
