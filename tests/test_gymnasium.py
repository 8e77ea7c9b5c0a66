"""The environments through gymnasium: registration, gymnasium's own environment
checker, and the kit's semantics kept (seeds, replayed tasks, rewards, spaces)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scripted import ScriptedResponder

from sftrl_kit.data import training_config
from sftrl_kit.envs import make
from sftrl_kit.integrations.gymnasium import ENVIRONMENTS, IMAGE_SIZE

IDS = sorted(ENVIRONMENTS)


@pytest.mark.parametrize("gym_id", IDS)
def test_gymnasiums_checker_passes_without_a_warning(gym_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(gym_id)  # wrapped in gymnasium's passive checker
        check_env(env.unwrapped)
        observation, info = env.reset(seed=3)
        assert env.observation_space.contains(observation)
        observation, reward, terminated, truncated, info = env.step("not an answer")
        assert env.observation_space.contains(observation)
        assert isinstance(reward, float)
        assert not terminated


@pytest.mark.parametrize("gym_id", IDS)
def test_a_seed_gives_the_kit_environments_own_task(gym_id):
    env_id = ENVIRONMENTS[gym_id]
    env = gym.make(gym_id)
    observation, info = env.reset(seed=11)
    kit = make(env_id, **training_config(env_id))
    kit_observation, kit_info = kit.reset(seed=11)
    text = observation["text"] if isinstance(observation, dict) else observation
    assert text == kit_observation.text
    assert info["task"] == kit_info["task"]
    replayed, _ = env.reset(options={"task": info["task"]})
    assert (replayed["text"] if isinstance(replayed, dict) else replayed) == text


def test_a_right_answer_solves_a_deal_and_rewards_as_the_verifier():
    env = gym.make("sftrl/GeneralPoints-v0", face_rule="ordinal")
    observation, _ = env.reset(seed=5)
    assert "J counts as 11" in observation  # the config field reached the kit env
    observation, reward, terminated, truncated, info = env.step(ScriptedResponder.answer(observation))
    assert terminated
    assert not truncated
    assert info["success"]
    assert reward == info["verdict"]["reward"] > 0


def test_the_budget_truncates_an_episode():
    env = gym.make("sftrl/GeneralPoints-v0", max_attempts=2)
    env.reset(seed=0)
    assert env.step("no")[3] is False
    _, _, terminated, truncated, _ = env.step("no")
    assert truncated
    assert not terminated


def test_vision_observations_carry_the_image_with_the_prompt_only():
    env = gym.make("sftrl/GeneralPointsVision-v0")
    observation, _ = env.reset(seed=0)
    assert len(observation["images"]) == 1
    image = observation["images"][0]
    assert image.shape == (*IMAGE_SIZE, 3)
    assert image.dtype == np.uint8
    assert image.std() > 0
    revision, *_ = env.step("no")
    assert revision["images"] == ()
    assert "Revise" in revision["text"]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="no_such_field"):
        gym.make("sftrl/GeneralPoints-v0", no_such_field=1)
    with pytest.warns(UserWarning, match="render_mode"), pytest.raises(ValueError, match="render_mode"):
        gym.make("sftrl/GeneralPoints-v0", render_mode="human")
    env = gym.make("sftrl/GeneralPoints-v0", disable_env_checker=True)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="str"):
        env.step(3)
