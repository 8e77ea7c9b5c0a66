"""The generation engines: choosing one, and vLLM answering exactly as the learner would.

The vLLM tests run where vLLM is installed, and always in CI (CI=true), where a missing
vLLM is a failure, not a skip. They share the process's one engine (started once, about
15 s on the tiny model) and close it at the end of the module.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import weakref
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from conftest import ENVIRONMENT_AT_START, REPO

from sftrl_kit.engines import close_engines, open_engine, resolve_engine, vllm_engine, vllm_missing
from sftrl_kit.engines.vllm_engine import (
    FOLDER_PREFIX,
    VLLMEngine,
    VLLMOptions,
    engine_arguments,
    kv_cache_bytes,
    process_group,
    remove_orphaned_folders,
    running_engine,
)
from sftrl_kit.envs import make
from sftrl_kit.episodes import chat_messages
from sftrl_kit.models import (
    Conversation,
    LoraSettings,
    SamplingConfig,
    load_policy,
    pack_prompt_responses,
    response_token_logprobs,
)
from sftrl_kit.rollout import rollout

requires_vllm = pytest.mark.skipif(
    vllm_missing() is not None and not os.environ.get("CI"),
    reason=f"vLLM engine unavailable: {vllm_missing()}",
)
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=40)


def test_engine_names_resolve_or_fail_clearly(monkeypatch):
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve_engine("vlm")
    monkeypatch.setenv("SFTRL_ENGINE_HF_ONLY", "1")
    assert resolve_engine("auto") == "hf"
    assert resolve_engine("hf") == "hf"
    with pytest.raises(ValueError, match="SFTRL_ENGINE_HF_ONLY is set"):
        resolve_engine("vllm")


def test_runs_of_several_processes_get_vllm_as_a_single_process_does(monkeypatch):
    """Each process starts its own engine (test_colocate), so the process count changes nothing."""
    monkeypatch.delenv("SFTRL_ENGINE_HF_ONLY", raising=False)
    monkeypatch.setattr("sftrl_kit.engines.vllm_missing", lambda: None)  # as where vLLM is installed
    assert resolve_engine("auto", processes=1) == resolve_engine("auto", processes=2) == "vllm"
    assert resolve_engine("vllm", processes=8) == "vllm"
    assert resolve_engine("auto", vision=True, processes=2) == "hf"
    with pytest.raises(ValueError, match="at least one process, got processes=0"):
        resolve_engine("auto", processes=0)


def test_open_engine_takes_only_a_resolved_name(tiny_policy):
    with pytest.raises(ValueError, match="takes 'hf' or 'vllm'"):
        open_engine(tiny_policy, "auto")


def test_the_hf_engine_is_the_policy_itself(tiny_policy):
    assert open_engine(tiny_policy, "hf") is tiny_policy
    assert tiny_policy.engine == "hf"


def test_vision_language_models_get_the_hf_engine_under_auto(tiny_vl_policy):
    """'auto' gives a VLM the HF engine (vLLM only when asked for by name), and evaluation
    keys record it (wherever vLLM is installed)."""
    from sftrl_kit.models import is_vision_model

    assert is_vision_model("tiny-vl")
    assert not is_vision_model("tiny")
    assert open_engine(tiny_vl_policy, resolve_engine("auto", vision=True)) is tiny_vl_policy
    assert resolve_engine("auto", vision=True) == "hf"


@pytest.fixture(scope="module")
def engine(tiny_policy):
    """The tiny policy served by vLLM; closed when the module is done."""
    yield open_engine(tiny_policy, "vllm")
    close_engines()


@requires_vllm
def test_programs_started_after_the_engine_inherit_the_environment_from_before_it(engine):
    """vLLM's CPU start sets LD_PRELOAD (its OpenMP) and LOCAL_WORLD_SIZE process-wide;
    an `accelerate launch` or notebook kernel started afterwards must not inherit them.
    (LD_LIBRARY_PATH is restored after vLLM's calls too, but OpenCV sets it on import
    whoever imports it, e.g. transformers' image processors: not checked here.)"""
    engine.respond([Conversation([{"role": "user", "content": "Hello"}])], GREEDY)
    for name in ("LD_PRELOAD", "LOCAL_WORLD_SIZE"):
        assert os.environ.get(name) == ENVIRONMENT_AT_START.get(name), name


def _episodes(responder, env_id: str, sampling: SamplingConfig, count: int = 8, **config):
    envs = [make(env_id, **config) for _ in range(count)]
    return rollout(responder, envs, sampling, seeds=list(range(count)), progress=False)


def _ids(episodes) -> list[list[list[int]]]:
    return [[turn.response_token_ids for turn in episode.turns] for episode in episodes]


@requires_vllm
@pytest.mark.parametrize(("env_id", "config"), [("gp-l", {"max_attempts": 3}), ("virl-l", {})])
def test_greedy_vllm_writes_the_same_tokens_as_hf_over_every_turn(tiny_policy, engine, env_id, config):
    """fp32 on both sides: greedy token ids agree exactly over multi-turn episodes (the
    tiny model's logits are peaked, so no argmax is a near tie)."""
    hf = _episodes(tiny_policy, env_id, GREEDY, **config)
    served = _episodes(engine, env_id, GREEDY, **config)
    assert sum(len(e.turns) for e in hf) > len(hf)  # revision turns (or later points) were played
    assert _ids(served) == _ids(hf)
    assert [t.prompt_token_ids for e in served for t in e.turns] == [t.prompt_token_ids for e in hf for t in e.turns]
    assert [t.response for e in served for t in e.turns] == [t.response for e in hf for t in e.turns]
    assert {e.engine for e in served} == {"vllm"}
    assert {e.engine for e in hf} == {"hf"}


@requires_vllm
@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0.7, max_new_tokens=24, seed=5), GREEDY])
def test_vllm_logprobs_are_the_learners_logprobs_of_the_sampled_tokens(tiny_policy, engine, sampling):
    """The engine's log-probs against an independent forward pass of the HF model:
    log softmax(logits / temperature) of each sampled token (fp32; tolerance 1e-3 for
    the different kernels' summation order)."""
    episodes = _episodes(engine, "gp-l", sampling, count=6)
    turns = [t for e in episodes for t in e.turns]
    responses = [t.response_token_ids for t in turns]
    batch = pack_prompt_responses(
        [t.prompt_token_ids for t in turns], responses, tiny_policy.tokenizer.pad_token_id, tiny_policy.device
    )
    with torch.no_grad():
        learner = response_token_logprobs(tiny_policy.model, batch, responses, logit_scale=sampling.logit_scale)
    for turn, expected in zip(turns, learner.logprobs):
        assert torch.allclose(torch.tensor(turn.response_logprobs), expected, atol=1e-3)


@requires_vllm
def test_the_same_seed_samples_the_same_episodes_and_another_seed_others(engine):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=24, seed=3)
    first = _episodes(engine, "gp-l", sampling)
    assert _ids(_episodes(engine, "gp-l", sampling)) == _ids(first)
    other = SamplingConfig(temperature=1.0, max_new_tokens=24, seed=4)
    assert _ids(_episodes(engine, "gp-l", other)) != _ids(first)


def test_model_folders_of_engines_whose_process_died_are_removed_and_no_others(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{FOLDER_PREFIX}{finished.stdout.strip()}-abc"
    alive = tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-def"
    unknown = tmp_path / f"{FOLDER_PREFIX}xyz"  # an older kit's name: no owner to check
    for folder in (dead, alive, unknown):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    assert remove_orphaned_folders() == [dead]
    assert not dead.exists()
    assert alive.is_dir()
    assert unknown.is_dir()


@requires_vllm
def test_sampling_params_set_every_setting_explicitly():
    from sftrl_kit.engines.vllm_engine import sampling_params

    params = sampling_params(SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=33), [2, 7], True)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.7, 0.9, 0, 0.0)
    assert (params.repetition_penalty, params.presence_penalty, params.frequency_penalty) == (1.0, 0.0, 0.0)
    assert (params.max_tokens, params.min_tokens, params.stop_token_ids, params.logprobs) == (33, 0, [2, 7], 0)
    greedy = sampling_params(SamplingConfig(temperature=0.0, top_p=0.5), [2], False)
    assert (greedy.temperature, greedy.top_p, greedy.logprobs) == (0.0, 1.0, None)


@requires_vllm
def test_a_sync_gives_the_engine_the_new_weights_without_a_restart(tiny_policy, engine):
    changed = load_policy("tiny")
    with torch.no_grad():
        for parameter in changed.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    before = _ids(_episodes(engine, "gp-l", GREEDY, count=4))
    started = engine.start_seconds
    assert open_engine(changed, "vllm") is engine  # the running engine, with changed's weights
    assert engine.start_seconds == started
    after = _episodes(engine, "gp-l", GREEDY, count=4)
    assert _ids(after) != before
    assert _ids(after) == _ids(_episodes(changed, "gp-l", GREEDY, count=4))
    open_engine(tiny_policy, "vllm")
    assert _ids(_episodes(engine, "gp-l", GREEDY, count=4)) == before


@requires_vllm
def test_a_lora_policy_is_served_with_its_adapters_merged(tiny_policy, engine):
    policy = load_policy("tiny", lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters an effect
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    frozen = {name: p.detach().clone() for name, p in policy.model.named_parameters() if "lora_" not in name}
    engine.sync(policy)
    after = dict(policy.model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in frozen.items())  # the base is not touched
    assert _ids(_episodes(engine, "gp-l", GREEDY, count=4)) == _ids(_episodes(policy, "gp-l", GREEDY, count=4))
    assert _ids(_episodes(tiny_policy, "gp-l", GREEDY, count=4)) != _ids(_episodes(policy, "gp-l", GREEDY, count=4))
    engine.sync(tiny_policy)


@requires_vllm
def test_a_ppo_update_leaves_the_engine_with_the_learners_weights(tmp_path, engine):
    import json

    from sftrl_kit import run_folder
    from sftrl_kit.train.ppo import PPOSettings, train_ppo

    run = train_ppo(
        PPOSettings(
            model="tiny",
            run_dir=str(tmp_path / "ppo"),
            engine="vllm",
            episodes_per_update=4,
            minibatch_size=4,
            micro_batch_size=2,
            max_new_tokens=16,
            updates=1,
            learning_rate=1e-3,
            ppo_epochs=1,
        )
    )
    served = _ids(_episodes(running_engine(), "gp-l", GREEDY, count=4))  # the engine PPO trained with, as it left it
    learner = load_policy(run_folder.list_checkpoints(run)[-1])
    assert served == _ids(_episodes(learner, "gp-l", GREEDY, count=4))
    assert served != _ids(_episodes(load_policy("tiny"), "gp-l", GREEDY, count=4))
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["engine_logprob_gap"] < 1e-3
    assert row["ratio_deviation_first_minibatch"] < 1e-3
    assert {
        e["engine"] for e in map(json.loads, (run / "episodes" / "update-0001.jsonl").read_text().splitlines())
    } == {"vllm"}


@requires_vllm
def test_evaluating_a_checkpoint_with_vllm_keeps_no_model_alive_after_it(tmp_path, engine, monkeypatch):
    """The engine keeps a policy's tokenizer, not its model: once evaluate_model returns,
    the checkpoint's model is freed, not held until the next checkpoint has loaded
    beside it (GPU review, H1: two 7B models and the engine do not fit on 80 GB)."""
    from sftrl_kit import models
    from sftrl_kit.evaluation import evaluate_model

    checkpoint = load_policy("tiny").save(tmp_path / "checkpoint-a")
    loaded = []
    load = models.load_policy

    def load_and_watch(*args, **kwargs):
        policy = load(*args, **kwargs)
        loaded.append(weakref.ref(policy.model))
        return policy

    monkeypatch.setattr(models, "load_policy", load_and_watch)
    sets = {"gp-id": REPO / "data" / "eval" / "gp-id.jsonl"}
    evaluated = evaluate_model(
        checkpoint, tmp_path / "eval", sets, sampling=GREEDY, limit=2, progress=False, engine="vllm"
    )
    assert evaluated["gp-id"]["key"]["engine"] == "vllm"
    gc.collect()
    assert len(loaded) == 1
    assert loaded[0]() is None


@requires_vllm
def test_sleep_mode_is_refused_where_vllm_has_none_and_the_running_engine_is_left_alone(tiny_policy, engine):
    running = running_engine()
    with pytest.raises(NotImplementedError, match="no sleep mode on this device .cpu"):
        open_engine(tiny_policy, "vllm", sleep_mode=True)
    assert running_engine() is running is not None


@requires_vllm
def test_qwen2_5_vl_is_refused_naming_torchvision_where_it_is_missing(
    tmp_path, tiny_policy, tiny_vl_policy, engine, monkeypatch
):
    """vLLM 0.32 serves Qwen2.5-VL, but its model module imports transformers' Qwen2-VL image
    processing, which imports torchvision; without it vLLM's start fails with "Model
    architectures ['Qwen2_5_VLForConditionalGeneration'] failed to be inspected" (GPU review, M6)."""
    from test_backbones import BACKBONES

    BACKBONES["qwen2_5_vl"].build(tmp_path / "qwen2_5_vl")
    policy = load_policy(tmp_path / "qwen2_5_vl")
    monkeypatch.setattr(vllm_engine, "torchvision_missing", lambda: True)  # as in the kit's CPU install
    running = running_engine()
    with pytest.raises(NotImplementedError, match="'qwen2_5_vl'.*needs torchvision, which is not installed"):
        open_engine(policy, "vllm")
    assert running_engine() is running is not None  # the refusal left the running engine alone
    monkeypatch.setattr(vllm_engine, "torchvision_missing", lambda: False)  # as in a CUDA install
    vllm_engine.check_vllm_architecture(policy)  # served
    with pytest.raises(NotImplementedError, match="not 'llava'"):
        vllm_engine.check_vllm_architecture(tiny_vl_policy)  # torchvision or not


@requires_vllm
def test_a_kv_cache_sized_by_the_rollout_is_the_cache_vllm_allocates_and_serves_it(tiny_policy):
    """The rollout-sized cache's arithmetic (test_the_kv_cache_is_sized_by_the_rollout...) in
    vLLM's own block count, and a cache of the smallest size vLLM starts with still plays
    episodes as HF does. Restarts the engine: runs after the tests of the module's engine."""
    engine = open_engine(tiny_policy, "vllm", rollout=(1, 1))
    assert engine.llm.llm_engine.vllm_config.cache_config.num_gpu_blocks == 4096 // 128 + 1
    assert _ids(_episodes(engine, "gp-l", GREEDY, count=4)) == _ids(_episodes(tiny_policy, "gp-l", GREEDY, count=4))


@requires_vllm
def test_vllm_serves_an_idefics3_vlm_exactly_as_the_learner_reads_it(tmp_path, tiny_vl_policy):
    """GP-VL episodes through vLLM on a tiny random Idefics3 with image splitting (the
    architecture of default-vl and SmolVLM; 5 images of 4 tokens per picture): vLLM's
    processing expands the image tokens exactly as the kit's processor does, writes the
    same greedy tokens with the learner's log-probs, and a sync reaches the vision tower.
    Runs last: it replaces the module's text engine."""
    from test_backbones import _idefics3

    _idefics3(tmp_path / "idefics3")
    policy = load_policy(tmp_path / "idefics3")
    engine = open_engine(policy, "vllm")
    hf = _episodes(policy, "gp-vl", GREEDY, count=4)
    served = _episodes(engine, "gp-vl", GREEDY, count=4)
    image_token = policy.model.config.image_token_id
    prompts = [t.prompt_token_ids for e in served for t in e.turns]
    assert all(ids.count(image_token) == 5 * 4 for ids in prompts)
    assert prompts == [t.prompt_token_ids for e in hf for t in e.turns]
    assert _ids(served) == _ids(hf)
    for mine, theirs in zip([t for e in served for t in e.turns], [t for e in hf for t in e.turns]):
        assert torch.allclose(torch.tensor(mine.response_logprobs), torch.tensor(theirs.response_logprobs), atol=1e-3)

    changed = load_policy(tmp_path / "idefics3")
    with torch.no_grad():
        for name, parameter in changed.model.named_parameters():
            if "vision_model" in name or "connector" in name:
                parameter.add_(torch.randn_like(parameter) * 0.5)
    assert open_engine(changed, "vllm") is engine  # synced, not restarted
    after = [t.response_logprobs for e in _episodes(engine, "gp-vl", GREEDY, count=4) for t in e.turns]
    expected = [t.response_logprobs for e in _episodes(changed, "gp-vl", GREEDY, count=4) for t in e.turns]
    before = [t.response_logprobs for e in served for t in e.turns]
    assert all(torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-3) for a, b in zip(after, expected))
    assert after != before

    obs = make("gp-vl").reset(seed=0)[0]
    two_pictures = Conversation(chat_messages(replace(obs, images=obs.images * 2)), obs.images * 2)
    with pytest.raises(ValueError, match="max_images=1"):
        engine.respond([two_pictures], GREEDY)  # vLLM was started for one image per prompt

    with pytest.raises(NotImplementedError, match="not 'llava'"):
        open_engine(tiny_vl_policy, "vllm")  # vLLM's LLaVA processing needs torchvision
    assert open_engine(policy, "vllm") is engine  # the refusal left the running engine alone


def test_the_engines_gpu_share_is_of_the_learners_gpu(tiny_policy, monkeypatch):
    """In a run on several GPUs a rank's engine shares that rank's GPU with its learner:
    its memory share is of that GPU's size, not GPU 0's (M1 of the GPU review)."""
    asked = []

    def properties(device):
        asked.append(torch.device(device))
        return SimpleNamespace(total_memory=80 * 2**30)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    share = vllm_engine._gpu_memory(_learner_on(torch.device("cuda", 3), tiny_policy), VLLMOptions(kv_cache_gib=2.0))
    assert asked == [torch.device("cuda", 3)]
    weights = sum(p.numel() for p in tiny_policy.model.parameters()) * 2  # bf16
    assert share["gpu_memory_utilization"] == pytest.approx(max(0.05, (weights + 4 * 2**30) / (80 * 2**30)))


def test_the_kv_cache_is_sized_by_the_rollout_in_whole_blocks(tiny_policy):
    """With a rollout (conversations, longest prompt + max_new_tokens) the engine's KV cache
    holds it at once in vLLM's blocks of 128 tokens, not a fixed 8 GiB (GPU review, C4/M1)."""
    config = tiny_policy.model.config
    shape = (config.num_hidden_layers, config.num_key_value_heads, config.head_dim, config.max_position_embeddings)
    assert shape == (2, 1, 32, 4096)
    per_token = 2 * 2 * 1 * 32 * 4  # keys and values x layers x KV heads x head_dim x 4 bytes (fp32)
    # 16 sequences of 300 tokens: 3 blocks each; one block vLLM holds back
    assert kv_cache_bytes(tiny_policy, VLLMOptions(rollout=(16, 300))) == (16 * 3 + 1) * 128 * per_token
    # 4 of 100 tokens need 4 blocks, but vLLM starts only with room for one max_model_len sequence: 32 blocks
    assert kv_cache_bytes(tiny_policy, VLLMOptions(rollout=(4, 100))) == (32 + 1) * 128 * per_token
    assert kv_cache_bytes(tiny_policy, VLLMOptions(rollout=(4, 100), max_model_len=256)) == (4 + 1) * 128 * per_token
    # no more sequences hold KV at once than vLLM runs together
    many = VLLMOptions(rollout=(1000, 300), max_num_seqs=64)
    assert kv_cache_bytes(tiny_policy, many) == (64 * 3 + 1) * 128 * per_token
    assert kv_cache_bytes(tiny_policy, VLLMOptions(kv_cache_gib=0.5)) == 2**29
    with pytest.raises(ValueError, match="kv_cache_gib or rollout, not both"):
        VLLMOptions(kv_cache_gib=1.0, rollout=(16, 300))
    with pytest.raises(ValueError, match="sequences of 5000 tokens exceed the engine's max_model_len 4096"):
        kv_cache_bytes(tiny_policy, VLLMOptions(rollout=(16, 5000)))


def _learner_on(device: torch.device, tiny_policy) -> SimpleNamespace:
    """The tiny policy as engine_arguments sees it on `device` (bf16 autocast, as on a GPU)."""
    return SimpleNamespace(model=tiny_policy.model, device=device, autocast_dtype=torch.bfloat16, is_vision=False)


def test_each_process_of_a_run_starts_its_engine_in_the_launchers_group_on_its_learners_gpu(
    tiny_policy, monkeypatch, tmp_path
):
    """As TRL's colocate mode: vLLM's external launcher joins accelerate's group, tensor
    parallel 1, seeded by rank, on the learner's GPU (vLLM takes it from LOCAL_RANK); CUDA
    graphs on a GPU (GPU review, M1)."""
    monkeypatch.setattr(vllm_engine, "process_group", lambda: (3, 4))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * 2**30))
    arguments, environment = engine_arguments(
        _learner_on(torch.device("cuda", 1), tiny_policy), VLLMOptions(seed=7), tmp_path
    )
    assert (arguments["distributed_executor_backend"], arguments["tensor_parallel_size"]) == ("external_launcher", 1)
    assert arguments["seed"] == 7 + 3
    assert environment == {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}
    assert arguments["enforce_eager"] is False
    assert arguments["dtype"] == "bfloat16"
    assert "enable_sleep_mode" not in arguments


def test_a_single_process_engine_on_a_cpu_runs_eagerly_and_alone(tiny_policy, tmp_path):
    assert process_group() is None
    arguments, environment = engine_arguments(tiny_policy, VLLMOptions(), tmp_path)
    assert environment == {}
    assert "distributed_executor_backend" not in arguments
    assert (arguments["enforce_eager"], arguments["seed"], arguments["dtype"]) == (True, 0, "float32")


def test_a_process_of_several_without_their_process_group_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="create accelerate's Accelerator .or PartialState. before the engine"):
        process_group()


class _RecordingLLM:
    """Stands in for vllm.LLM: records, in order, what the engine asks of it."""

    def __init__(self, **arguments) -> None:
        self.arguments = arguments
        self.calls: list[str] = []

    def collective_rpc(self, method: str, kwargs: dict) -> None:
        self.calls.append(f"{method}({len(list(kwargs['weights_iterator']))} weights)")

    def sleep(self, level: int) -> None:
        self.calls.append(f"sleep(level={level})")

    def wake_up(self, tags: list[str]) -> None:
        self.calls.append(f"wake_up({tags})")

    def reset_prefix_cache(self) -> None:
        self.calls.append("reset_prefix_cache")


def test_sleep_mode_sleeps_after_a_rollout_and_wakes_at_the_sync_in_trls_order(tiny_policy, monkeypatch):
    """Level 2 (weights and KV cache freed) for the update; at the sync the weights' memory
    is woken, the learner's weights loaded, then the KV cache woken (TRL's order). vLLM's
    CPU build has no sleep mode, so a recording stand-in for vLLM's LLM takes the calls."""
    import vllm

    monkeypatch.setattr(vllm, "LLM", _RecordingLLM)
    monkeypatch.setattr(vllm_engine, "sleep_mode_missing", lambda: None)  # as on a GPU
    weights = len(tiny_policy.model.state_dict())
    engine = VLLMEngine(tiny_policy, VLLMOptions(sleep_mode=True))
    llm = engine.llm
    assert llm.arguments["enable_sleep_mode"] is True
    assert llm.calls == [f"reload_weights({weights} weights)", "reset_prefix_cache"]  # starts awake
    engine.sleep()
    engine.sleep()  # asleep already: nothing more
    with pytest.raises(RuntimeError, match="asleep .sleep_mode. since its last rollout: sync.policy. wakes it"):
        engine.respond([Conversation([{"role": "user", "content": "Hello"}])], GREEDY)
    engine.sync(tiny_policy)
    assert llm.calls[2:] == [
        "sleep(level=2)",
        "wake_up(['weights'])",
        f"reload_weights({weights} weights)",
        "wake_up(['kv_cache'])",
        "reset_prefix_cache",
    ]
    engine.sync(tiny_policy)  # awake: a plain sync
    assert llm.calls[7:] == [f"reload_weights({weights} weights)", "reset_prefix_cache"]
    engine.close()

    without = VLLMEngine(tiny_policy, VLLMOptions())
    without.sleep()  # what the trainer calls after every rollout: nothing without sleep_mode
    assert "enable_sleep_mode" not in without.llm.arguments
    assert without.llm.calls == [f"reload_weights({weights} weights)", "reset_prefix_cache"]
    without.close()
