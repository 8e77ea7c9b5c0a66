"""The generation engines: choosing one, and vLLM answering exactly as the learner would.

The vLLM tests run where vLLM is installed, and always in CI (CI=true), where a missing
vLLM is a failure, not a skip. They share the process's one engine (started once, about
15 s on the tiny model) and close it at the end of the module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import replace

import pytest
import torch
from conftest import ENVIRONMENT_AT_START

from sftrl_kit.engines import close_engines, open_engine, resolve_engine, vllm_missing
from sftrl_kit.engines.vllm_engine import FOLDER_PREFIX, remove_orphaned_folders
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


def test_several_processes_get_hf_under_auto_and_refuse_vllm_by_name(monkeypatch):
    monkeypatch.delenv("SFTRL_ENGINE_HF_ONLY", raising=False)
    monkeypatch.setattr("sftrl_kit.engines.vllm_missing", lambda: None)  # as where vLLM is installed
    assert resolve_engine("auto", processes=1) == "vllm"
    assert resolve_engine("auto", processes=2) == "hf"
    with pytest.raises(ValueError, match="runs in a single process; this run has 2"):
        resolve_engine("vllm", processes=2)


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
    served = _ids(_episodes(engine, "gp-l", GREEDY, count=4))  # the engine PPO trained with, as PPO left it
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
    from types import SimpleNamespace

    from sftrl_kit.engines import vllm_engine

    asked = []

    def properties(device):
        asked.append(torch.device(device))
        return SimpleNamespace(total_memory=80 * 2**30)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    learner = SimpleNamespace(model=tiny_policy.model, device=torch.device("cuda", 3), autocast_dtype=torch.bfloat16)
    share = vllm_engine._gpu_memory(learner, vllm_engine.VLLMOptions(kv_cache_gib=2.0))
    assert asked == [torch.device("cuda", 3)]
    weights = sum(p.numel() for p in tiny_policy.model.parameters()) * 2  # bf16
    assert share["gpu_memory_utilization"] == pytest.approx(max(0.05, (weights + 4 * 2**30) / (80 * 2**30)))
