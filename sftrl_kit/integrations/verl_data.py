"""The kit's tasks as verl datasets (parquet), for `verl.trainer.main_ppo` with the kit's
agent loop (`integrations.verl_agent_loop`, agent name "sftrl").

    from sftrl_kit.integrations.verl_data import write_training_set, write_eval_set
    write_training_set("data/generated/verl/gp-l-train.parquet", "gp-l", size=4096)
    write_eval_set("data/generated/verl/gp-rule-ood.parquet", "gp-rule-ood")

A row has verl's RLHFDataset columns: `data_source` ("sftrl/<env id>"), `prompt` (the
task's first prompt as chat messages: RLHFDataset tokenises it to filter lengths and
hands it to the loop as `raw_prompt`), `ability`, `reward_model` (style "env": the
reward is the environment's return, which the agent loop sets itself), `agent_name`
("sftrl") and `extra_info`, which carries what the loop replays the episode from:
env_id, env_config and task as JSON strings (parquet keeps their nesting and types
exactly as the kit's eval sets do), max_attempts (0: the environment's own budget),
max_turn_tokens (the longest answer of one turn), split, seed and index. Writing needs pandas and pyarrow (datasets brings both); verl
itself is not imported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import eval_set_path, load_eval_set, training_config, training_deal_seed
from ..envs import make

AGENT_NAME = "sftrl"


def training_rows(
    env_id: str,
    size: int,
    seed: int = 0,
    env_config: dict[str, Any] | None = None,
    max_attempts: int | None = None,
    max_turn_tokens: int = 128,
) -> list[dict[str, Any]]:
    """`size` training deals of run `seed` (the kit's PPO deals, in order)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    config = training_config(env_id) if env_config is None else dict(env_config)
    env = make(env_id, **config)
    records = []
    for index in range(size):
        deal_seed = training_deal_seed(seed, index)
        _, info = env.reset(seed=deal_seed)
        records.append({"env_config": config, "task": info["task"], "split": "train", "seed": deal_seed})
    return rows(env_id, records, max_attempts, max_turn_tokens)


def rows(
    env_id: str, records: Sequence[dict[str, Any]], max_attempts: int | None = None, max_turn_tokens: int = 128
) -> list[dict[str, Any]]:
    """verl rows from records in the eval-set format ({env_config, task, split, seed})."""
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if max_turn_tokens < 1:
        raise ValueError(f"max_turn_tokens must be >= 1, got {max_turn_tokens}")
    out = []
    for index, record in enumerate(records):
        env = make(env_id, **record["env_config"])
        observation, _ = env.reset(options={"task": record["task"]})
        if observation.images:
            raise ValueError(f"{env_id} observes images; the kit's verl agent loop carries text only")
        out.append(
            {
                "data_source": f"sftrl/{env_id}",
                "prompt": [{"role": "user", "content": observation.text}],
                "ability": "sftrl",
                "reward_model": {"style": "env", "ground_truth": ""},
                "agent_name": AGENT_NAME,
                "extra_info": {
                    "env_id": env_id,
                    "env_config": json.dumps(record["env_config"], sort_keys=True),
                    "task": json.dumps(record["task"], sort_keys=True),
                    "max_attempts": max_attempts or 0,
                    "max_turn_tokens": max_turn_tokens,
                    "split": str(record.get("split", "")),
                    "seed": int(record.get("seed", -1)),
                    "index": index,
                },
            }
        )
    return out


def write_training_set(path: str | Path, env_id: str, size: int, seed: int = 0, **options: Any) -> Path:
    """Write `training_rows` as parquet; returns the path."""
    return _write(path, training_rows(env_id, size, seed, **options))


def write_eval_set(path: str | Path, eval_set: str, env_id: str | None = None, **options: Any) -> Path:
    """Write a frozen eval set (a name such as "gp-rule-ood", or a JSONL path) as parquet,
    for verl's validation (data.val_files); options as `rows` takes them."""
    env_id = env_id or _env_of(eval_set)
    return _write(path, rows(env_id, load_eval_set(eval_set_path(eval_set)), **options))


def _env_of(eval_set: str) -> str:
    prefix = Path(eval_set).stem.split("-")[0]
    known = {"gp": "gp-l", "gp3": "gp3-l", "virl": "virl-l"}
    if prefix not in known:
        raise ValueError(f"cannot tell the environment of eval set {eval_set!r}: pass env_id")
    return known[prefix]


def _write(path: str | Path, table: list[dict[str, Any]]) -> Path:
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pd.DataFrame(table).to_parquet(partial, index=False)
    partial.replace(path)  # whole or not at all
    return path
