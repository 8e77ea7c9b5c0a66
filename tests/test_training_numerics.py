"""Training that really trains: fp32 master weights under bf16 autocast, every PPO turn
trained and counted, sampling that is exactly the recorded distribution, LoRA resumes
against the initial policy, training deals disjoint from evaluation deals."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO  # noqa: E402
from safetensors.torch import load_file
from transformers.generation.logits_process import TopPLogitsWarper

from sftrl_kit.data import (
    EVAL_SEED_LIMIT,
    GP_EVAL_SPLITS,
    MAX_EVAL_SET_SIZE,
    VIRL_EVAL_SPLITS,
    EvalSplit,
    expert_records,
    make_eval_set,
    training_deal_seed,
)
from sftrl_kit.episodes import read_jsonl, write_jsonl
from sftrl_kit.models import (
    Conversation,
    SamplingConfig,
    load_policy,
    resolve_autocast,
    response_logprobs,
)
from sftrl_kit.train.ppo import PPOSettings, _split_evenly, train_ppo

TINY_PPO = dict(
    model="tiny",
    episodes_per_update=4,
    max_new_tokens=8,
    max_attempts=2,
    minibatch_size=4,
    micro_batch_size=2,
    ppo_epochs=1,
    save_every=1,
)


def _weights(folder):
    return load_file(folder / "model.safetensors")


def _fraction_changed(before: dict, after: dict, skip: str = "embed_tokens") -> float:
    """Share of the weights an update changed, the embedding matrix left out: with tied
    embeddings the rows of tokens that never occur get gradients near 1e-7, which AdamW's
    eps (1e-5) turns into steps below fp32 resolution in any precision."""
    changed = total = 0
    for name, tensor in before.items():
        if skip in name:
            continue
        changed += int((tensor != after[name]).sum())
        total += tensor.numel()
    return changed / total


# --- precision -------------------------------------------------------------------------


def _tiny_at_smollm2_scale(folder):
    """The tiny model with its matrices rescaled to SmolLM2-135M's weight scale (std
    about 0.02 rather than 0.3): where a weight sits decides which updates fp32 or bf16
    can represent."""
    policy = load_policy("tiny")
    with torch.no_grad():
        for parameter in policy.model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(0.02 / 0.3)
    return policy.save(folder)


def test_cuda_resolves_to_bf16_autocast_over_fp32_weights():
    assert resolve_autocast("auto", torch.device("cpu")) is None
    assert resolve_autocast("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_autocast("fp32", torch.device("cuda")) is None
    policy = load_policy("tiny", mixed_precision="bf16")
    assert {p.dtype for p in policy.model.parameters()} == {torch.float32}
    assert policy.autocast_dtype is torch.bfloat16
    with pytest.raises(ValueError, match="mixed_precision"):
        resolve_autocast("fp16", torch.device("cpu"))


@pytest.mark.slow
def test_one_ppo_update_under_bf16_autocast_moves_every_weight(tmp_path):
    """The CUDA configuration (bf16 autocast), forced on the CPU: at the paper's learning
    rate one update changes >= 99% of the weights (pure-bf16 weights changed 0.1%), and
    the first minibatch's ratio is 1 because the learner recomputes the old log-probs."""
    start = _tiny_at_smollm2_scale(tmp_path / "start")
    run = train_ppo(
        PPOSettings(
            **{**TINY_PPO, "model": str(start)},
            run_dir=str(tmp_path / "run"),
            updates=1,
            learning_rate=1e-6,
            mixed_precision="bf16",
        )
    )
    before = _weights(run / "checkpoints" / "update-0000")
    after = _weights(run / "checkpoints" / "update-0001")
    assert {t.dtype for t in after.values()} == {torch.float32}
    assert _fraction_changed(before, after) >= 0.99
    row = read_jsonl(run / "metrics.jsonl")[-1]
    assert row["ratio_deviation_first_minibatch"] < 1e-2


@pytest.mark.slow
def test_sft_under_bf16_autocast_moves_every_weight(tmp_path):
    from sftrl_kit.train.sft import SFTSettings, train_sft

    records = [
        {
            "messages": [
                {"role": "user", "content": f"{i} + {i}?"},
                {"role": "assistant", "content": json.dumps({"formula": f"{i}+{i}"})},
            ]
        }
        for i in range(8)
    ]
    write_jsonl(tmp_path / "d.jsonl", records)
    start = _tiny_at_smollm2_scale(tmp_path / "start")
    run = train_sft(
        SFTSettings(
            model=str(start),
            dataset=str(tmp_path / "d.jsonl"),
            run_dir=str(tmp_path / "run"),
            max_steps=2,
            batch_size=4,
            learning_rate=2e-5,
            warmup_steps=0,
            save_steps=2,
            mixed_precision="bf16",
        )
    )
    before = _weights(run / "checkpoints" / "step-000000")
    after = _weights(run / "checkpoints" / "step-000002")
    assert {t.dtype for t in after.values()} == {torch.float32}
    assert _fraction_changed(before, after) >= 0.99


# --- every turn trained and counted ----------------------------------------------------


def test_turns_split_into_near_equal_minibatches_without_dropping_any():
    items = list(range(12))
    parts = _split_evenly(items, math.ceil(12 / 8))
    assert [len(p) for p in parts] == [6, 6]
    assert sorted(sum(parts, [])) == items
    assert [len(p) for p in _split_evenly(list(range(5)), 3)] == [2, 2, 1]
    assert [len(p) for p in _split_evenly([1], 3)] == [1, 0, 0]


@pytest.mark.slow
def test_ppo_trains_every_turn_and_counts_exactly_what_it_trained(tmp_path):
    """Multi-turn episodes give a turn count that minibatches do not divide: before the
    fix, the remainder was dropped yet its tokens counted in D_RL."""
    settings = PPOSettings(
        **{
            **TINY_PPO,
            "max_attempts": 3,
            "minibatch_size": 8,
            "micro_batch_size": 4,
            "ppo_epochs": 2,
            "episodes_per_update": 5,
        },
        run_dir=str(tmp_path),
        updates=1,
    )
    run = train_ppo(settings)
    turns = [t for e in read_jsonl(run / "episodes" / "update-0001.jsonl") for t in e["turns"]]
    assert len(turns) % settings.minibatch_size  # the case that used to drop turns
    row = read_jsonl(run / "metrics.jsonl")[-1]
    tokens = sum(len(t["prompt_token_ids"]) + len(t["response_token_ids"]) for t in turns)
    assert row["trained_turns"] == settings.ppo_epochs * len(turns)
    assert row["tokens"] == row["trained_tokens"] == settings.ppo_epochs * tokens


def test_micro_batches_accumulate_to_the_minibatch_mean_gradient():
    """Gradient accumulation over micro-batches gives the same step as one pass over the
    whole minibatch (plain SGD, so the step is the gradient itself)."""
    from accelerate import Accelerator

    from sftrl_kit.train.ppo import ActorCritic, RolloutBatch, _optimise, _Turn

    def step(micro_batch_size):
        torch.manual_seed(0)
        policy = load_policy("tiny", value_head=True)
        generator = torch.Generator().manual_seed(1)
        turns = [
            _Turn(
                torch.randint(5, 900, (6 + i,), generator=generator).tolist(),
                torch.randint(5, 900, (3 + i % 2,), generator=generator).tolist(),
                images=[],
                weights=[1.0] * (3 + i % 2),
            )
            for i in range(4)
        ]
        batch = RolloutBatch(
            logprobs=torch.full((4,), -20.0),
            advantages=torch.tensor([(-1.0) ** i for i in range(4)], dtype=torch.float64),
            values=torch.tensor([0.1 * i for i in range(4)]),
            returns=torch.full((4,), 0.5),
        )
        actor_critic = ActorCritic(policy.model, policy.value_head)
        before = [p.detach().clone() for p in actor_critic.parameters()]
        optimizer = torch.optim.SGD(actor_critic.parameters(), lr=1.0)
        settings = PPOSettings(
            model="tiny", ppo_epochs=1, minibatch_size=4, micro_batch_size=micro_batch_size, max_grad_norm=1e9
        )
        stats = _optimise(actor_critic, optimizer, policy, turns, batch, settings, Accelerator(cpu=True), update=1)
        assert stats["trained_turns"] == 4
        return [b - p.detach() for b, p in zip(before, actor_critic.parameters())]

    whole, accumulated = step(4), step(1)
    for a, b in zip(whole, accumulated):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


# --- sampling is exactly the recorded distribution --------------------------------------


def _checkpoint_with_own_sampling(tmp_path):
    """A checkpoint whose generation_config asks for top_k=2, top_p=0.5 and a repetition
    penalty: none of it may reach the kit's sampling."""
    policy = load_policy("tiny")
    config = policy.model.generation_config
    config.do_sample, config.top_k, config.top_p, config.repetition_penalty = True, 2, 0.5, 1.5
    policy.save(tmp_path / "opinionated")
    return load_policy(tmp_path / "opinionated")


def test_a_checkpoints_generation_config_does_not_leak_into_greedy_decoding(tmp_path):
    policy = _checkpoint_with_own_sampling(tmp_path)
    conversation = Conversation([{"role": "user", "content": "Say something long."}])
    generated = policy.respond([conversation], SamplingConfig(temperature=0, max_new_tokens=12))[0]
    ids = list(generated.prompt_token_ids)
    with torch.no_grad():  # plain argmax, token by token
        for _ in range(len(generated.response_token_ids)):
            ids.append(int(policy.model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert generated.response_token_ids == ids[len(generated.prompt_token_ids) :]


def test_sampling_uses_the_full_distribution_and_records_its_logprobs(tmp_path):
    """top_k=2 from the checkpoint (or transformers' default top_k=50) would keep every
    sampled token among the top ranks; the recorded log-probs are of the sampled
    distribution, recomputed here independently."""
    policy = _checkpoint_with_own_sampling(tmp_path)
    conversations = [Conversation([{"role": "user", "content": f"Tell me about {i}."}]) for i in range(16)]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=3)
    torch.manual_seed(sampling.seed)
    generations = policy.respond(conversations, sampling)
    ranks = []
    for generation in generations:
        ids = generation.prompt_token_ids + generation.response_token_ids
        with torch.no_grad():
            logits = policy.model(torch.tensor([ids])).logits[0, len(generation.prompt_token_ids) - 1 : -1]
        log_probs = logits.log_softmax(-1)
        chosen = torch.tensor(generation.response_token_ids)
        expected = log_probs.gather(-1, chosen[:, None]).squeeze(-1)
        assert generation.response_logprobs == pytest.approx(expected.tolist(), abs=1e-4)
        ranks += (logits > logits.gather(-1, chosen[:, None])).sum(-1).tolist()
    assert max(ranks) >= 50


def test_top_p_logprobs_are_those_of_the_nucleus_transformers_samples_from():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 40) * 3
    responses = [[3, 7, 1, 0, 9], [5, 5]]
    input_ids = torch.randint(0, 40, (2, 10))
    input_ids[0, -5:] = torch.tensor(responses[0])
    input_ids[1, -2:] = torch.tensor(responses[1])
    for temperature, top_p in ((1.0, 0.8), (0.7, 0.5)):
        got = response_logprobs(logits, input_ids, responses, temperature, top_p)
        for row, response in enumerate(responses):
            n = len(response)
            warped = TopPLogitsWarper(top_p)(None, logits[row, 5 - n : 5] / temperature)
            expected = warped.log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
            assert torch.allclose(got[row][0], expected)
            assert torch.isfinite(got[row][1]).all()


# --- LoRA resume ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_resumed_lora_run_keeps_the_initial_policy_as_reference_and_its_optimizer(tmp_path):
    def settings(run_dir, updates):
        return PPOSettings(
            **TINY_PPO,
            run_dir=str(run_dir),
            updates=updates,
            learning_rate=1e-3,
            lora={"r": 4, "alpha": 8},
            kl_coef=0.5,
        )

    straight = read_jsonl(train_ppo(settings(tmp_path / "straight", 2)) / "metrics.jsonl")
    train_ppo(settings(tmp_path / "resumed", 1))
    resumed = read_jsonl(train_ppo(settings(tmp_path / "resumed", 2)) / "metrics.jsonl")
    assert [r["update"] for r in resumed] == [1, 2]
    assert resumed[1]["kl_to_initial"] > 0  # the merged update-1 weights are not the reference
    for key in ("kl_to_initial", "policy_loss", "value_loss", "mean_return"):
        assert resumed[1][key] == pytest.approx(straight[1][key], rel=1e-4, abs=1e-6), key


# --- training deals never reach evaluation ----------------------------------------------


def test_training_and_evaluation_seeds_are_disjoint_by_construction():
    # virl-id and virl-rule-ood deal the same routes on purpose (a paired design)
    ranges = sorted(
        {(s.base_seed, s.base_seed + MAX_EVAL_SET_SIZE) for s in [*GP_EVAL_SPLITS.values(), *VIRL_EVAL_SPLITS.values()]}
    )
    assert all(end <= EVAL_SEED_LIMIT for _, end in ranges)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ranges, ranges[1:]))
    assert training_deal_seed(0, 0) >= EVAL_SEED_LIMIT
    assert training_deal_seed(0, 10_000) >= EVAL_SEED_LIMIT  # where the old stream met gp-id
    with pytest.raises(ValueError, match="records"):
        make_eval_set(EvalSplit("big", {}, 10_000, "too big"), MAX_EVAL_SET_SIZE + 1)
    with pytest.raises(ValueError, match="training data seeds"):
        next(expert_records("gp-l", 1, seed=10_000))


def test_ppo_refuses_to_train_on_a_frozen_eval_set(tmp_path):
    with pytest.raises(ValueError, match="evaluation deals"):
        train_ppo(
            PPOSettings(**TINY_PPO, run_dir=str(tmp_path), updates=1, tasks=str(REPO / "data" / "eval" / "gp-id.jsonl"))
        )


@pytest.mark.slow
def test_ppo_deals_come_from_the_training_seed_range(tmp_path):
    run = train_ppo(
        PPOSettings(**{**TINY_PPO, "max_attempts": 1, "max_new_tokens": 4}, run_dir=str(tmp_path), updates=1)
    )
    seeds = [e["seed"] for e in read_jsonl(run / "episodes" / "update-0001.jsonl")]
    assert seeds
    assert min(seeds) >= EVAL_SEED_LIMIT


def test_each_process_loads_its_model_on_its_own_gpu(monkeypatch, tmp_path):
    """train_sft loads the model before the Trainer exists: onto cuda:LOCAL_RANK, not the
    plain "cuda" that puts every rank's copy on GPU 0 (8 fp32 copies of a 3B model)."""
    import torch

    from sftrl_kit.train import sft
    from sftrl_kit.train.distributed import process_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert process_device() == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert process_device() == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "5")
    asked = []

    def stop(model, **options):
        asked.append(options["device"])
        raise RuntimeError("loaded")

    def plan(method, settings, processes, device):  # the memory plan reads the GPU this process plans for
        asked.append(device)
        return SimpleNamespace(format=lambda: "a plan")

    monkeypatch.setattr(sft, "load_policy", stop)
    monkeypatch.setattr(sft, "plan_for_settings", plan)
    dataset = tmp_path / "sft.jsonl"
    messages = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]
    dataset.write_text(json.dumps({"messages": messages}) + "\n")
    with pytest.raises(RuntimeError, match="loaded"):
        sft.train_sft(sft.SFTSettings(model="tiny", dataset=str(dataset), run_dir=str(tmp_path / "sft"), max_steps=1))
    assert asked == [torch.device("cuda", 5)] * 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device() == torch.device("cpu")
