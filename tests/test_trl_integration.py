"""The kit's episodes as TRL GRPOTrainer samples (sftrl_kit.integrations.trl).

The token sequences are checked against the chat template rendering the whole
conversation at once (what the kit's own rollouts and SFT data feed the model), the
returns against the environment's verifier, and the example script end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import REPO
from scripted import ScriptedResponder

from sftrl_kit.data import training_config, training_deal_seed
from sftrl_kit.envs import make
from sftrl_kit.integrations.token_episodes import user_turn_ids
from sftrl_kit.integrations.trl import (
    TASK_FIELD,
    EpisodeRollout,
    episode_return,
    grpo_dataset,
    play_episodes,
    task_of,
    trainer_generator,
)

WRONG = "I am not sure."


def _scripted(tokenizer, answers_per_episode, stop=True):
    """A generate function that answers episode i's k-th turn with answers_per_episode[i][k]
    (text, tokenised canonically, ending with the stop token unless stop=False)."""
    turn = {}

    def generate(contexts):
        out = []
        for context in contexts:
            episode = next(i for i, first in enumerate(prompts) if context[: len(first)] == first)
            k = turn.get(episode, 0)
            turn[episode] = k + 1
            ids = tokenizer(answers_per_episode[episode][k], add_special_tokens=False)["input_ids"]
            out.append((ids + [tokenizer.eos_token_id] if stop else ids, None))
        return out

    prompts: list[list[int]] = []
    return generate, prompts


def _play(tokenizer, answers_per_episode, budget=5, stop=True):
    dataset = grpo_dataset("gp-l", len(answers_per_episode))
    tasks = [task_of(row["prompt"]) for row in dataset]
    envs = [make("gp-l", **training_config("gp-l"), max_attempts=budget) for _ in tasks]
    generate, prompts = _scripted(tokenizer, answers_per_episode, stop)
    for row in dataset:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"][0]["content"]}], add_generation_prompt=True, tokenize=False
        )
        prompts.append(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return dataset, play_episodes(envs, tasks, tokenizer, generate)


def test_an_episode_is_the_whole_conversation_as_the_chat_template_renders_it(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    dataset = grpo_dataset("gp-l", 1)
    prompt = dataset[0]["prompt"][0]["content"]
    right = ScriptedResponder.answer(prompt)
    _, out = _play(tokenizer, [[WRONG, right]])

    env = make("gp-l", **training_config("gp-l"))
    env.reset(options={"task": task_of(dataset[0]["prompt"])})
    feedback = env.step(WRONG)[0].text
    conversation = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": WRONG},
        {"role": "user", "content": feedback},
        {"role": "assistant", "content": right},
    ]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    whole = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    sequence = out["prompt_ids"][0] + out["completion_ids"][0]
    # The template closes the last answer with <|im_end|> and a newline; the episode ends
    # at the answer's own stop token.
    assert sequence == whole[:-1]
    assert tokenizer.decode(whole[-1:]) == "\n"

    mask = out["env_mask"][0]
    assert len(mask) == len(out["completion_ids"][0])
    model_tokens = [t for t, m in zip(out["completion_ids"][0], mask) if m]
    eos = tokenizer.eos_token_id
    expected = tokenizer(WRONG, add_special_tokens=False)["input_ids"] + [eos]
    expected += tokenizer(right, add_special_tokens=False)["input_ids"] + [eos]
    assert model_tokens == expected
    environment_tokens = [t for t, m in zip(out["completion_ids"][0], mask) if not m]
    assert feedback in tokenizer.decode(environment_tokens)
    assert out["logprobs"] is None  # the scripted generator reports none


def test_a_cut_off_answer_gets_the_templates_whole_close(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    _, out = _play(tokenizer, [[WRONG, WRONG]], budget=2, stop=False)
    completion, mask = out["completion_ids"][0], out["env_mask"][0]
    first_environment_token = completion[mask.index(0)]
    assert first_environment_token == tokenizer.eos_token_id  # the close <|im_end|>, written by the environment
    assert out["turns"] == [2]


def test_returns_and_success_are_the_verifiers(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    dataset = grpo_dataset("gp-l", 3)
    answers = [
        [ScriptedResponder.answer(dataset[0]["prompt"][0]["content"])],
        [WRONG, WRONG, ScriptedResponder.answer(dataset[1]["prompt"][0]["content"])],
        [WRONG] * 5,
    ]
    _, out = _play(tokenizer, answers)
    expected_returns = []
    for row, episode_answers in zip(dataset, answers):
        env = make("gp-l", **training_config("gp-l"))
        env.reset(options={"task": task_of(row["prompt"])})
        expected_returns.append(sum(env.step(answer)[1] for answer in episode_answers))
    assert out["episode_return"] == pytest.approx(expected_returns)
    assert out["success"] == [True, True, False]
    assert out["turns"] == [1, 3, 5]
    assert episode_return(completions=[None] * 3, episode_return=out["episode_return"]) == out["episode_return"]


def test_the_dataset_holds_the_kits_training_deals_in_order():
    dataset = grpo_dataset("gp-l", 3, seed=2)
    env = make("gp-l", **training_config("gp-l"))
    for index, row in enumerate(dataset):
        observation, info = env.reset(seed=training_deal_seed(2, index))
        assert row["prompt"][0]["content"] == observation.text
        assert json.loads(row["prompt"][0][TASK_FIELD]) == info["task"]


def test_bad_settings_are_refused_before_any_episode():
    with pytest.raises(ValueError, match="text only"):
        EpisodeRollout("gp-vl")
    with pytest.raises(ValueError, match="max_attempts"):
        EpisodeRollout("gp-l", max_attempts=0)
    with pytest.raises(ValueError, match="no_such_field"):
        EpisodeRollout("gp-l", env_config={"no_such_field": 1})
    with pytest.raises(ValueError, match="grpo_dataset"):
        task_of([{"role": "user", "content": "a prompt from elsewhere"}])
    trainer = SimpleNamespace(args=SimpleNamespace(top_k=50, min_p=None, repetition_penalty=1.0))
    with pytest.raises(ValueError, match="top_k"):
        trainer_generator(trainer, 16)


def test_user_turn_refuses_a_template_that_does_not_close_with_the_stop_token(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    ids = user_turn_ids(tokenizer, "try again", after_stop_token=True)
    assert tokenizer.decode(ids).startswith("\n<|im_start|>user\ntry again")

    class OtherStopToken:  # the template's close is <|im_end|>; this tokenizer stops on </s>
        eos_token = "</s>"
        apply_chat_template = staticmethod(tokenizer.apply_chat_template)
        __call__ = staticmethod(tokenizer.__call__)

    odd = OtherStopToken()
    with pytest.raises(ValueError, match="stop token"):
        user_turn_ids(odd, "try again", after_stop_token=True)


@pytest.mark.slow
def test_the_example_trains_with_trl_and_evaluates_with_the_kit(tmp_path):
    out = tmp_path / "trl-grpo"
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "trl_grpo.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["updates"] == 2
    assert [row["update"] for row in summary["rewards"]] == [1, 2]
    assert set(summary["evaluation"]) == {"gp-id", "gp-rule-ood"}
    for result in summary["evaluation"].values():
        assert result["trials"] == 8
        assert result["value"] == result["successes"] / 8
    assert (out / "final" / "model.safetensors").is_file()
    # X_RL from the trained sequences: TRL's own num_tokens counts prompts and the model's
    # tokens only, so the kit's count exceeds it by the verifier's turns (one per episode
    # at budget 2, every tiny-model answer being wrong).
    compute = summary["compute"]
    assert compute["rl_tokens"] > summary["rewards"][-1]["num_tokens"]
    n, d = compute["num_parameters"], compute["rl_tokens"]
    assert compute["init_tokens"] == 0
    assert compute["gflops"] == pytest.approx((6 * n * d + 2 * n * 6 * d) / 1e9)


def test_answering_token_ids_is_answering_the_conversation(tiny_policy):
    """Policy.continue_token_ids (the TRL rollout's generation) and Policy.respond (the
    kit's rollouts) give the same greedy answer to the same prompt."""
    from sftrl_kit.models import Conversation, SamplingConfig

    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    conversations = [Conversation([{"role": "user", "content": text}]) for text in ("Cards: 1, 2", "Make 24 now")]
    answered = tiny_policy.respond(conversations, greedy, with_logprobs=False)
    continued = tiny_policy.continue_token_ids([g.prompt_token_ids for g in answered], greedy)
    assert continued == [g.response_token_ids for g in answered]
    assert tiny_policy.continue_token_ids([], greedy) == []


def test_a_virl_episode_plays_to_its_budget_as_one_sequence(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    dataset = grpo_dataset("virl-l", 1)
    task = task_of(dataset[0]["prompt"])
    envs = [make("virl-l", **training_config("virl-l"), max_attempts=2)]
    answer = tokenizer(WRONG, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    out = play_episodes(envs, [task], tokenizer, lambda contexts: [(answer, None) for _ in contexts])
    replay = make("virl-l", **training_config("virl-l"), max_attempts=2)
    replay.reset(options={"task": task})
    rewards = []
    while True:
        _, reward, terminated, truncated, _ = replay.step(WRONG)
        rewards.append(reward)
        if terminated or truncated:
            break
    assert out["turns"] == [len(rewards)]
    assert out["episode_return"] == [pytest.approx(sum(rewards))]
    assert sum(out["env_mask"][0]) == len(answer) * len(rewards)
    assert tokenizer.decode(out["prompt_ids"][0]).count("<|im_start|>user") == 1
