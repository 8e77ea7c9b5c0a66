"""The kit's verl agent loop, in verl's own environment (`make test-verl`), against a
scripted generation server: the episode's tokens against the chat template rendering
the whole conversation, the reward against the kit's verifier, and verl's own pieces
(the config template composed on verl's schema, RLHFDataset reading the kit's parquet,
AgentLoopOutput's reward tensor)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from scripted import ScriptedResponder
from verl.experimental.agent_loop.agent_loop import DictConfigWrap
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from sftrl_kit.envs import make
from sftrl_kit.integrations.verl_agent_loop import KitAgentLoop
from sftrl_kit.integrations.verl_data import write_training_set

REPO = Path(__file__).resolve().parents[2]
WRONG = "I am not sure."


@pytest.fixture(scope="module")
def config():
    """The kit's template, composed on verl's own ppo_trainer config."""
    with initialize_config_dir(config_dir=str(REPO / "configs" / "verl"), version_base=None):
        return compose(config_name="sftrl_ppo", overrides=["actor_rollout_ref.model.path=unused"])


class ScriptedServer:
    """verl's LLMServerClient.generate, answering each request from a script of texts."""

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers, self.calls = tokenizer, list(answers), []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **_):
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids), "sampling": dict(sampling_params)})
        ids = self.tokenizer(self.answers.pop(0), add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return TokenOutput(token_ids=ids, log_probs=[-0.25] * len(ids))


def _row(config, tokenizer, tmp_path, **options):
    path = write_training_set(tmp_path / "train.parquet", "gp-l", size=1, **options)
    dataset = RLHFDataset(data_files=[str(path)], tokenizer=tokenizer, config=config.data)
    item = dataset[0]
    return {key: value for key, value in item.items() if not hasattr(value, "shape")}


def _loop(config, tokenizer, server):
    return KitAgentLoop(
        trainer_config=DictConfigWrap(config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
    )


def test_the_template_composes_on_verls_schema(config):
    assert config.algorithm.adv_estimator == "gae"
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == "sftrl"
    assert config.actor_rollout_ref.actor.clip_ratio == 0.1
    assert config.critic.model.path == "unused"


def test_an_episode_through_verl_is_the_conversation_as_the_template_renders_it(config, smollm2_tokenizer, tmp_path):
    tokenizer = smollm2_tokenizer
    row = _row(config, tokenizer, tmp_path, max_turn_tokens=96)
    prompt = row["raw_prompt"][0]["content"]
    right = ScriptedResponder.answer(prompt)
    server = ScriptedServer(tokenizer, [WRONG, right])
    output = asyncio.run(_loop(config, tokenizer, server).run({"temperature": 1.0}, **row))

    env = make("gp-l", **json.loads(row["extra_info"]["env_config"]))
    env.reset(options={"task": json.loads(row["extra_info"]["task"])})
    feedback_text, first_reward, *_ = env.step(WRONG)
    feedback_text = feedback_text.text
    second_reward = env.step(right)[1]
    conversation = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": WRONG},
        {"role": "user", "content": feedback_text},
        {"role": "assistant", "content": right},
    ]
    whole = tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)[
        "input_ids"
    ]
    assert output.prompt_ids + output.response_ids == whole[:-1]  # the episode ends at the answer's stop token
    assert output.reward_score == pytest.approx(first_reward + second_reward)
    assert output.extra_fields["success"] is True
    assert output.num_turns == 4
    answers = [t for t, m in zip(output.response_ids, output.response_mask) if m]
    eos = tokenizer.eos_token_id
    expected = tokenizer(WRONG, add_special_tokens=False)["input_ids"] + [eos]
    expected += tokenizer(right, add_special_tokens=False)["input_ids"] + [eos]
    assert answers == expected
    # the server saw the episode's own tokens each turn, one request id, the per-turn cap
    second_context = server.calls[1]["prompt_ids"]
    assert second_context == (output.prompt_ids + output.response_ids)[: len(second_context)]
    assert len({c["request_id"] for c in server.calls}) == 1
    assert all(c["sampling"]["max_tokens"] == 96 for c in server.calls)
    # verl turns reward_score into its token-level reward: all of it on the last answer token
    scores = output.as_dict()["rm_scores"]
    assert float(scores.sum()) == pytest.approx(output.reward_score)
    assert float(scores[-1]) == pytest.approx(output.reward_score)
    assert output.response_logprobs is not None
    assert [lp for lp, m in zip(output.response_logprobs, output.response_mask) if m] == [-0.25] * len(expected)


def test_the_budget_ends_a_failing_episode(config, smollm2_tokenizer, tmp_path):
    tokenizer = smollm2_tokenizer
    row = _row(config, tokenizer, tmp_path, max_attempts=3)
    server = ScriptedServer(tokenizer, [WRONG] * 3)
    output = asyncio.run(_loop(config, tokenizer, server).run({}, **row))
    assert output.extra_fields["turns"] == 3
    assert output.extra_fields["success"] is False
    assert len(server.calls) == 3
    assert output.reward_score < 0
