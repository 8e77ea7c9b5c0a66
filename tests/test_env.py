import dataclasses
import json
import re

import pytest

from sftrl_kit.config import ConfigError
from sftrl_kit.envs import make, registered
from sftrl_kit.envs.general_points import solve


def correct_answer(info):
    formula = solve(info["values"], info["target"])[0]
    cards = [code[:-1] for code in info["task"]["hand"]]
    return json.dumps({"cards": cards, "number": info["values"], "formula": formula})


def test_registry_and_clear_errors():
    assert {"gp-l", "gp-vl"} <= set(registered())
    with pytest.raises(ValueError, match="did you mean 'gp-l'"):
        make("gp-L")
    with pytest.raises(ConfigError, match="unknown field.*face_rules"):
        make("gp-l", face_rules="ten")
    with pytest.raises(ConfigError, match="face_rule must be one of"):
        make("gp-l", face_rule="eleven")
    with pytest.raises(ValueError, match="fixed by the environment id"):
        make("gp-l", modality="image")


def test_reset_gives_the_prompt_and_a_replayable_task():
    env = make("gp-l", face_rule="ordinal")
    obs, info = env.reset(seed=11)
    assert "J counts as 11, Q as 12 and K as 13" in obs.text
    assert not obs.images
    assert obs.text.count("J counts as 11") == 2  # task section and output schema only
    assert len(info["task"]["hand"]) == 4
    assert info["attempts_left"] == 5
    again, _ = make("gp-l", face_rule="ordinal").reset(options={"task": info["task"]})
    assert again.text == obs.text


def test_correct_answer_terminates_with_the_correct_reward():
    env = make("gp-l")
    _, info = env.reset(seed=3)
    obs, reward, terminated, truncated, info = env.step(correct_answer(info))
    assert (reward, terminated, truncated, info["success"]) == (5.0, True, False, True)
    assert obs.text.startswith("Correct")
    with pytest.raises(RuntimeError, match="reset"):
        env.step("anything")


def test_budget_runs_out_with_truncation_and_the_penalty_on_the_last_attempt():
    env = make("gp-l", max_attempts=3)
    env.reset(seed=4)
    rewards, flags = [], []
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step("no idea")
        rewards.append(reward)
        flags.append((terminated, truncated))
    assert rewards == [-3.0, -3.0, -4.0]
    assert flags == [(False, False), (False, False), (False, True)]
    assert "You failed because" in obs.text
    assert info["attempts_left"] == 0


def test_revision_after_failure_can_still_succeed():
    env = make("gp-l")
    _, info = env.reset(seed=9)
    _, reward, terminated, _, _ = env.step('{"formula": "1+1"}')
    assert reward == -2.0
    assert not terminated
    _, reward, terminated, _, step_info = env.step(correct_answer(info))
    assert reward == 5.0
    assert terminated
    assert step_info["attempt"] == 2


def test_seeding_follows_gymnasium():
    env = make("gp-l")
    first = [env.reset(seed=21)[1]["task"]] + [env.reset()[1]["task"] for _ in range(3)]
    second = [env.reset(seed=21)[1]["task"]] + [env.reset()[1]["task"] for _ in range(3)]
    assert first == second
    assert len({json.dumps(t) for t in first}) == 4


def test_gp_vl_observation_carries_the_rendered_hand():
    env = make("gp-vl", image_size=128)
    obs, info = env.reset(seed=2)
    assert len(obs.images) == 1
    assert obs.images[0].size == (128, 128)
    assert "image shows the cards" in obs.text
    assert "Cards:" not in obs.text  # GP-VL: the cards are only in the image
    same, _ = make("gp-vl", image_size=128).reset(options={"task": info["task"]})
    assert same.images[0].tobytes() == obs.images[0].tobytes()


def test_replayed_tasks_are_validated():
    with pytest.raises(ValueError, match="hand"):
        make("gp-l").reset(options={"task": {"hand": "QS"}})
    with pytest.raises(ValueError, match="rank"):
        make("gp-l").reset(options={"task": {"hand": ["ZZ"]}})


@pytest.mark.parametrize("env_id", ["gp-l", "gp-vl", "virl-l", "virl-vl"])
def test_every_env_writes_the_info_keys_rollouts_and_evaluation_read(env_id):
    env = make(env_id)
    obs, info = env.reset(seed=5)
    assert info["success"] is False
    replayed, _ = make(env_id).reset(options={"task": info["task"]})
    assert replayed.text == obs.text
    _, _, terminated, truncated, info = env.step("no answer here")
    assert (terminated, info["success"]) == (False, False)
    verdict = info["verdict"]
    assert {"reward", "outcome", "feedback", "recognition_correct", "other_rule_used"} <= set(verdict)
    assert verdict["outcome"] == "unparseable"
    assert verdict["other_rule_used"] is False
    assert info.get("new_prompt", False) is False  # a failed answer continues the conversation
    assert ("new_prompt" in info) == (not env.single_conversation)


@pytest.mark.parametrize("env_id", ["gp-l", "virl-l"])
def test_the_reward_tables_in_the_env_docstrings_are_the_configs_defaults(env_id):
    env = make(env_id)
    documented = {
        name: float(value)
        for name, value in re.findall(r"^ {8}([a-z_]+) +([+-][0-9.]+) ", type(env).__doc__, re.MULTILINE)
    }
    assert documented == dataclasses.asdict(type(env.config.rewards)())


def test_gp3_deals_three_cards_and_asks_for_three_numbers():
    """The easier variant: three cards and target 12, the same rules; its prompt counts
    three cards in every wording and its example equation has three letters."""
    for variant in range(4):
        env = make("gp3-l", face_rule="ordinal", sampling="with_face", prompt_variant=variant)
        obs, info = env.reset(seed=3)
        assert len(info["task"]["hand"]) == 3
        assert "3 cards" in obs.text or "three" in obs.text.lower()
        assert "(a+b)*c=12" in obs.text
        assert "c/d" not in obs.text
        assert any(code[:-1] in ("J", "Q", "K") for code in info["task"]["hand"])
        _, reward, terminated, _, _ = env.step(correct_answer(info))
        assert (reward, terminated) == (5.0, True)
    as_gp, _ = make("gp-l", num_cards=3, target=12).reset(seed=3)
    assert as_gp.text == make("gp3-l").reset(seed=3)[0].text  # gp3-l is gp-l with these two settings
    with pytest.raises(ConfigError, match="num_cards"):
        make("gp-l", num_cards=5)


def test_the_compact_prompt_states_the_rule_cards_and_format_in_a_third_of_the_words():
    full, _ = make("gp-l", face_rule="ordinal").reset(seed=4)
    env = make("gp-l", face_rule="ordinal", compact_prompt=True)
    compact, info = env.reset(seed=4)
    assert "J counts as 11, Q as 12 and K as 13" in compact.text
    assert "Cards: " + ", ".join(code[:-1] for code in info["task"]["hand"]) in compact.text
    assert '"formula": "(a+b)*c/d=24"' in compact.text
    assert len(compact.text.split()) < 0.5 * len(full.text.split())
    _, reward, terminated, _, _ = env.step(correct_answer(info))
    assert (reward, terminated) == (5.0, True)
