"""The verl datasets the kit writes (integrations.verl_data): verl's columns, and a row
that replays its episode exactly. The agent loop itself is tested in verl's own
environment (tests/verl_loop/, `make test-verl`)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sftrl_kit.data import eval_set_path, load_eval_set, training_config, training_deal_seed
from sftrl_kit.envs import make
from sftrl_kit.integrations.verl_data import write_eval_set, write_training_set

VERL_COLUMNS = {"data_source", "prompt", "ability", "reward_model", "agent_name", "extra_info"}


def test_training_rows_are_the_kits_deals_in_order(tmp_path):
    path = write_training_set(tmp_path / "train.parquet", "gp-l", size=3, seed=1, max_attempts=2)
    table = pd.read_parquet(path)
    assert set(table.columns) == VERL_COLUMNS
    env = make("gp-l", **training_config("gp-l"))
    for index, row in table.iterrows():
        observation, info = env.reset(seed=training_deal_seed(1, index))
        extra = row["extra_info"]
        assert json.loads(extra["task"]) == info["task"]
        assert list(row["prompt"]) == [{"role": "user", "content": observation.text}]
        assert (extra["env_id"], extra["max_attempts"], extra["seed"]) == ("gp-l", 2, training_deal_seed(1, index))
        assert row["agent_name"] == "sftrl"


def test_an_eval_set_keeps_its_rule_and_tasks(tmp_path):
    table = pd.read_parquet(write_eval_set(tmp_path / "ood.parquet", "gp-rule-ood"))
    records = load_eval_set(eval_set_path("gp-rule-ood"))
    assert len(table) == len(records)
    first = table.iloc[0]["extra_info"]
    assert json.loads(first["env_config"]) == records[0]["env_config"]  # J, Q, K = 11, 12, 13
    env = make("gp-l", **json.loads(first["env_config"]))
    observation, _ = env.reset(options={"task": json.loads(first["task"])})
    assert table.iloc[0]["prompt"][0]["content"] == observation.text
    assert "J counts as 11" in observation.text


def test_bad_requests_are_refused_and_nothing_half_written(tmp_path):
    with pytest.raises(ValueError, match="text only"):
        write_training_set(tmp_path / "vl.parquet", "gp-vl", size=1)
    with pytest.raises(ValueError, match="max_attempts"):
        write_training_set(tmp_path / "bad.parquet", "gp-l", size=1, max_attempts=0)
    with pytest.raises(ValueError, match="environment of eval set"):
        write_eval_set(tmp_path / "x.parquet", "unknown-set.jsonl")
    assert list(tmp_path.iterdir()) == []
