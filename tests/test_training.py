"""SFT and PPO end to end on the tiny model: learning, multi-process agreement, resume."""

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO  # noqa: E402

from sftrl_kit.data import GP_TRAIN_CONFIG, load_eval_set, training_deal_seed
from sftrl_kit.envs import Observation, make, register, registered
from sftrl_kit.envs.general_points import solve
from sftrl_kit.episodes import chat_messages, read_jsonl, write_jsonl
from sftrl_kit.evaluation import evaluate
from sftrl_kit.models import SamplingConfig
from sftrl_kit.run_folder import RunSettingsError, last_checkpoint, read_counters
from sftrl_kit.stats import compare_rates
from sftrl_kit.train.ppo import PPOSettings, train_ppo
from sftrl_kit.train.sft import SFTSettings, train_sft

pytestmark = pytest.mark.slow
SAMPLED = SamplingConfig(temperature=1.0, max_new_tokens=14, seed=123)


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory):
    """One fixed deal; the tiny model is taught, by SFT, to answer it with a correct
    formula half the time and a wrong one the other half. (With two deals the tiny model
    cannot tell them apart well enough to learn a different answer for each.)"""
    root = tmp_path_factory.mktemp("warm")
    seed = training_deal_seed(0, 0)
    _, info = make("gp-l", **GP_TRAIN_CONFIG).reset(seed=seed)
    tasks = [{"split": "train", "index": 0, "seed": seed, "env_config": GP_TRAIN_CONFIG, "task": info["task"]}]
    write_jsonl(root / "tasks.jsonl", tasks)
    records = []
    for task in tasks:
        env = make("gp-l", **task["env_config"])
        prompt, info = env.reset(options={"task": task["task"]})
        good = json.dumps({"formula": solve(info["values"])[0]})
        bad = json.dumps({"formula": "+".join(map(str, info["values"]))})
        records += [{"messages": chat_messages(prompt, [], answer)} for answer in (good, bad)] * 16
    write_jsonl(root / "sft.jsonl", records)
    run = train_sft(
        SFTSettings(
            model="tiny",
            dataset=str(root / "sft.jsonl"),
            run_dir=str(root / "sft"),
            max_steps=30,
            batch_size=8,
            learning_rate=5e-3,
            warmup_steps=0,
            save_steps=30,
            logging_steps=10,
        )
    )
    return root, run


def test_sft_lowers_the_loss_and_writes_a_compute_series(warm_start):
    _, run = warm_start
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps == ["step-000000", "step-000030"]
    counters = json.loads((run / "checkpoints" / "step-000030" / "checkpoint.json").read_text())
    assert counters["tokens"] > 0
    assert counters["flops"] == 6 * counters["num_parameters"] * counters["tokens"]


def test_ppo_raises_success_well_beyond_noise(warm_start):
    root, sft_run = warm_start
    start = sft_run / "checkpoints" / "step-000030"
    run = train_ppo(
        PPOSettings(
            model=str(start),
            run_dir=str(root / "ppo"),
            tasks=str(root / "tasks.jsonl"),
            max_attempts=1,
            episodes_per_update=16,
            max_new_tokens=14,
            updates=20,
            learning_rate=3e-4,
            ppo_epochs=2,
            minibatch_size=8,
            micro_batch_size=8,
            save_every=20,
        )
    )
    tasks = load_eval_set(root / "tasks.jsonl") * 48  # 48 sampled episodes per checkpoint
    from sftrl_kit.models import load_policy

    before = evaluate(load_policy(start), tasks, sampling=SAMPLED, max_attempts=1, progress=False)
    after = evaluate(
        load_policy(run / "checkpoints" / "update-0020"), tasks, sampling=SAMPLED, max_attempts=1, progress=False
    )
    gain = compare_rates(after["success_rate"], before["success_rate"])
    print(f"success before PPO {before['success_rate']}, after {after['success_rate']}")
    assert gain["difference"] > 0.25, (before["success_rate"], after["success_rate"])
    assert gain["p_value"] < 0.01, (before["success_rate"], after["success_rate"])
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["update"] for r in rows] == list(range(1, 21))
    assert rows[-1]["flops"] > rows[0]["flops"] > 0
    assert rows[-1]["tokens"] > rows[0]["tokens"]
    for key in (
        "success_rate",
        "mean_return",
        "mean_episode_length",
        "policy_loss",
        "value_loss",
        "entropy",
        "clip_fraction",
        "explained_variance",
        "approx_kl",
        "seconds",
    ):
        assert key in rows[-1]


TINY_PPO = [
    "model=tiny",
    "updates=2",
    "episodes_per_update=4",
    "max_new_tokens=10",
    "max_attempts=2",
    "save_every=1",
    "minibatch_size=4",
    "micro_batch_size=2",
    "ppo_epochs=2",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch_two_processes(config: str, run_dir: Path, *settings: str) -> None:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / config),
        "--main_process_port",
        str(_free_port()),  # the config's fixed port may be taken on a shared machine
        "-m",
        "sftrl_kit.cli",
        "ppo",
        f"run_dir={run_dir}",
        *TINY_PPO,
        *settings,
    ]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, f"accelerate launch exited {finished.returncode}:\n{finished.stderr[-6000:]}"


@pytest.fixture(scope="module")
def two_process_ddp(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp")
    _launch_two_processes("cpu-2proc.yaml", run_dir)
    return run_dir


def test_two_processes_under_accelerate_launch_agree_on_the_weights(two_process_ddp):
    processes = json.loads((two_process_ddp / "processes.json").read_text())
    assert processes["processes"] == 2
    assert processes["weight_checksums"][0] == processes["weight_checksums"][1]
    rows = read_jsonl(two_process_ddp / "metrics.jsonl")
    assert [r["update"] for r in rows] == [1, 2]
    assert rows[0]["episodes"] == 8


def test_deepspeed_zero2_trains_as_ddp_does_and_resumes_exactly(two_process_ddp, tmp_path):
    """PPO under real DeepSpeed ZeRO-2 (its CPU accelerator, two gloo processes): the
    same episodes and, up to summation order, the same losses and weights as DDP; each
    process writes its own optimizer partition, and a run stopped after update 1 and
    resumed from it ends exactly where the straight run ends."""
    pytest.importorskip("deepspeed")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _launch_two_processes("cpu-2proc-zero2.yaml", straight)
    ddp, zero2 = (read_jsonl(run / "metrics.jsonl") for run in (two_process_ddp, straight))
    for a, b in zip(ddp, zero2):
        assert a["mean_return"] == b["mean_return"]
        assert a["tokens"] == b["tokens"]
        assert a["policy_loss"] == pytest.approx(b["policy_loss"], rel=1e-3)
    checksums = [
        json.loads((run / "processes.json").read_text())["weight_checksums"] for run in (two_process_ddp, straight)
    ]
    assert checksums[1][0] == checksums[1][1] == pytest.approx(checksums[0][0], rel=1e-6)
    shards = sorted(p.name for p in last_checkpoint(straight).glob("optimizer*"))
    assert shards == ["optimizer-0-of-2.safetensors", "optimizer-1-of-2.safetensors"]

    _launch_two_processes("cpu-2proc-zero2.yaml", resumed, "updates=1")
    _launch_two_processes("cpu-2proc-zero2.yaml", resumed)
    assert [r["policy_loss"] for r in read_jsonl(resumed / "metrics.jsonl")] == [r["policy_loss"] for r in zero2]
    assert json.loads((resumed / "processes.json").read_text())["weight_checksums"] == checksums[1]


def test_a_resumed_run_continues_exactly_where_it_stopped(tmp_path):
    def settings(run_dir, updates):
        return PPOSettings(
            model="tiny",
            run_dir=str(run_dir),
            updates=updates,
            episodes_per_update=4,
            max_new_tokens=10,
            max_attempts=2,
            save_every=1,
            minibatch_size=4,
            micro_batch_size=2,
            ppo_epochs=2,
        )

    train_ppo(settings(tmp_path / "straight", 3))
    interrupted = tmp_path / "interrupted"
    train_ppo(settings(interrupted, 2))
    with (interrupted / "metrics.jsonl").open("a") as out:  # logged, then killed before its checkpoint
        out.write(json.dumps({"update": 3, "step": 3, "note": "lost with the crash"}) + "\n")
    train_ppo(settings(interrupted, 3))
    straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_jsonl(interrupted / "metrics.jsonl")
    assert [r["update"] for r in resumed] == [1, 2, 3]
    for a, b in zip(straight, resumed):
        assert a["mean_return"] == b["mean_return"]
        assert a["tokens"] == b["tokens"]
        assert a["policy_loss"] == pytest.approx(b["policy_loss"], abs=1e-5)


def _write_sft_records(path: Path, count: int) -> None:
    data = []
    for task in load_eval_set(REPO / "data" / "eval" / "gp-id.jsonl")[:count]:
        prompt, info = make("gp-l", **task["env_config"]).reset(options={"task": task["task"]})
        data.append({"messages": chat_messages(prompt, [], json.dumps({"formula": solve(info["values"])[0]}))})
    write_jsonl(path, data)


def _tiny_sft(root: Path, **changes) -> SFTSettings:
    """SFT of the tiny model on root/d.jsonl into root/run, 2 steps of 2 records."""
    fixed = dict(
        model="tiny",
        dataset=str(root / "d.jsonl"),
        run_dir=str(root / "run"),
        max_steps=2,
        batch_size=2,
        save_steps=2,
        logging_steps=1,
    )
    return SFTSettings(**{**fixed, **changes})


def test_sft_resumes_from_its_last_trainer_checkpoint(tmp_path):
    _write_sft_records(tmp_path / "d.jsonl", 4)
    train_sft(_tiny_sft(tmp_path))
    resumed = train_sft(_tiny_sft(tmp_path, max_steps=4))
    steps = [r["step"] for r in read_jsonl(resumed / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-000000", "step-000002", "step-000004"]


def test_a_complete_sft_run_run_again_trains_nothing(tmp_path):
    """A notebook re-run or `sftrl run --resume` calls train_sft on a finished run: no
    step is added and no checkpoint rewritten (TRL, resumed at max_steps in the middle
    of an epoch, trains one step more)."""
    _write_sft_records(tmp_path / "d.jsonl", 4)
    settings = _tiny_sft(tmp_path, batch_size=1)
    run = train_sft(settings)
    weights = (run / "checkpoints" / "step-000002" / "model.safetensors").read_bytes()
    again = train_sft(settings)
    assert [r["step"] for r in read_jsonl(again / "metrics.jsonl") if "loss" in r] == [1, 2]
    assert sorted(p.name for p in (again / "checkpoints").iterdir()) == ["step-000000", "step-000002"]
    assert (again / "checkpoints" / "step-000002" / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize(
    "options",
    [
        {"advantage": "grpo", "group_size": 2},
        {"advantage": "rloo", "group_size": 2, "thought_coef": 0.5},
        {"lora": {"r": 4, "alpha": 8}, "kl_coef": 0.1, "entropy_coef": 0.01},
        {"kl_coef": 0.05, "bootstrap_truncated": True},
        {"env_id": "virl-l", "env_config": {"action_space": "relative"}},
    ],
    ids=["grpo", "rloo-thought", "lora-kl-entropy", "kl-bootstrap", "virl"],
)
def test_every_ppo_option_completes_an_update(tmp_path, options):
    settings = PPOSettings(
        model="tiny",
        run_dir=str(tmp_path),
        updates=1,
        episodes_per_update=4,
        max_new_tokens=8,
        max_attempts=2,
        minibatch_size=4,
        micro_batch_size=2,
        ppo_epochs=1,
        **options,
    )
    run = train_ppo(settings)
    row = read_jsonl(run / "metrics.jsonl")[-1]
    assert row["update"] == 1
    assert row["episodes"] == 4
    assert math.isfinite(row["policy_loss"])
    if options.get("kl_coef"):
        assert row["kl_to_initial"] >= 0
    assert (run / "checkpoints" / "update-0001" / "config.json").is_file()


def test_bootstrapping_needs_a_single_conversation(tmp_path):
    with pytest.raises(ValueError, match="starts new ones"):
        train_ppo(
            PPOSettings(
                model="tiny", run_dir=str(tmp_path), env_id="virl-l", env_config={}, bootstrap_truncated=True, updates=1
            )
        )


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tiny_ppo(run_dir: Path, **changes) -> PPOSettings:
    settings = dict(
        model="tiny",
        run_dir=str(run_dir),
        updates=1,
        episodes_per_update=2,
        max_new_tokens=8,
        max_attempts=1,
        minibatch_size=2,
        micro_batch_size=2,
        learning_rate=1e-5,
    )
    return PPOSettings(**{**settings, **changes})


def test_a_complete_ppo_run_run_again_trains_nothing(tmp_path):
    """06 calls the study's steps on a folder 00 filled: a finished PPO run is left as it is."""
    run = train_ppo(_tiny_ppo(tmp_path))
    files = _files(run)
    assert train_ppo(_tiny_ppo(tmp_path)) == run
    assert _files(run) == files


def test_ppo_into_a_finished_run_with_other_settings_is_refused_before_anything_runs(tmp_path):
    run = train_ppo(_tiny_ppo(tmp_path))
    files = _files(run)
    with pytest.raises(RunSettingsError, match=r"learning_rate: 1e-05 in the folder, 0.003 given") as refused:
        train_ppo(_tiny_ppo(tmp_path, learning_rate=3e-3))
    assert "episodes_per_update" not in str(refused.value)  # only the fields that differ are named
    assert _files(run) == files  # nothing trained, nothing rewritten


def test_ppo_resumes_or_continues_only_under_its_own_settings(tmp_path):
    """An unfinished run resumed with another setting is refused (its ppo.yaml would claim
    settings its first updates never used); continuing it further under its own settings,
    with another save interval, is allowed and recorded; asking for fewer updates than it
    holds is refused."""
    train_ppo(_tiny_ppo(tmp_path))
    recorded = (tmp_path / "ppo.yaml").read_text()
    with pytest.raises(RunSettingsError, match=r"seed: 0 in the folder, 1 given"):
        train_ppo(_tiny_ppo(tmp_path, updates=2, seed=1))
    assert (tmp_path / "ppo.yaml").read_text() == recorded
    train_ppo(_tiny_ppo(tmp_path, updates=2, save_every=2))
    assert [r["update"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    history = read_jsonl(tmp_path / "settings-history.jsonl")
    assert [(h["from_step"], h["continued"]) for h in history] == [(0, {}), (1, {"updates": {"was": 1, "now": 2}})]
    with pytest.raises(RunSettingsError, match=r"already holds 2 steps or updates, more than updates=1"):
        train_ppo(_tiny_ppo(tmp_path, updates=1))


def test_sft_into_a_finished_run_with_other_settings_is_refused_and_a_longer_run_continues(tmp_path):
    _write_sft_records(tmp_path / "d.jsonl", 4)

    def settings(**changes):
        return _tiny_sft(tmp_path, **changes)

    run = train_sft(settings())
    files = _files(run)
    with pytest.raises(RunSettingsError, match=r"learning_rate: 2e-05 in the folder, 0.001 given"):
        train_sft(settings(learning_rate=1e-3))  # the "already complete" return, with other settings
    with pytest.raises(RunSettingsError, match=r"max_records: None in the folder, 2 given"):
        train_sft(settings(max_steps=4, max_records=2))
    assert _files(run) == files
    train_sft(settings(max_steps=4, logging_steps=2))  # further, with another log interval: allowed
    history = read_jsonl(run / "settings-history.jsonl")
    assert history[-1]["continued"] == {"max_steps": {"was": 2, "now": 4}}
    assert read_counters(last_checkpoint(run))["step"] == 4


class YesEnv:
    """A task the kit has never heard of (docs/extending.md's example): answer {"answer": "yes"}."""

    env_id = "yes-l"
    answer_field = "answer"
    single_conversation = True
    buffer_lambda = 6.0  # the paper's GP value: inference tokens per trained token

    def __init__(self, max_attempts: int = 2) -> None:
        self.max_attempts = max_attempts

    def reset(self, *, seed=None, options=None):
        self.attempts, self.done = 0, False
        return Observation('Reply with the JSON object {"answer": "yes"} and nothing else.'), {
            "task": {"word": "yes"},
            "success": False,
        }

    def step(self, action: str):
        self.attempts += 1
        right = '"yes"' in action
        verdict = {
            "outcome": "correct" if right else "wrong",
            "reward": 1.0 if right else -1.0,
            "feedback": "Correct." if right else 'The answer must be {"answer": "yes"}.',
            "recognition_correct": None,
            "other_rule_used": False,
        }
        truncated = not right and self.attempts >= self.max_attempts
        self.done = right or truncated
        info = {"task": {"word": "yes"}, "success": right, "verdict": verdict}
        return Observation(verdict["feedback"]), verdict["reward"], right, truncated, info


def test_ppo_trains_a_newly_registered_environment_without_an_edit_to_the_kit(tmp_path):
    """What PPO needs from an environment (its answer field, buffer lambda, budget) comes
    from the environment: a new id trains, its FLOPs counted with its own lambda."""
    if "yes-l" not in registered():
        register("yes-l", YesEnv)
    run = train_ppo(_tiny_ppo(tmp_path, env_id="yes-l", env_config={}, max_attempts=2))
    row = read_jsonl(run / "metrics.jsonl")[-1]
    assert (row["update"], row["episodes"], row["buffer_lambda"]) == (1, 2, 6.0)
    expected = 6 * row["num_parameters"] * row["tokens"] + 2 * row["num_parameters"] * 6.0 * row["tokens"]
    assert row["flops"] == pytest.approx(expected)


def test_gradient_checkpointing_saves_memory_not_results(tmp_path):
    """With activations recomputed in the backward pass, PPO (value head, LoRA off) and SFT
    end with the same weights and losses as without: a run may switch it on to fit in
    memory, and its folder takes the switch (it is not a setting that shapes the result)."""
    import torch
    from safetensors.torch import load_file

    def weights(run, name):
        return load_file(run / "checkpoints" / name / "model.safetensors")

    plain = train_ppo(_tiny_ppo(tmp_path / "plain", engine="hf"))
    recomputed = train_ppo(_tiny_ppo(tmp_path / "gc", engine="hf", gradient_checkpointing=True))
    a, b = weights(plain, "update-0001"), weights(recomputed, "update-0001")
    assert any(not torch.equal(a[k], weights(plain, "update-0000")[k]) for k in a)  # the update moved something
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert read_jsonl(plain / "metrics.jsonl")[-1]["loss"] == pytest.approx(
        read_jsonl(recomputed / "metrics.jsonl")[-1]["loss"], abs=1e-6
    )
    train_ppo(_tiny_ppo(tmp_path / "gc", engine="hf", gradient_checkpointing=False, updates=2))  # not refused

    _write_sft_records(tmp_path / "d.jsonl", 4)
    sft_plain = train_sft(_tiny_sft(tmp_path, run_dir=str(tmp_path / "sft")))
    sft_gc = train_sft(_tiny_sft(tmp_path, run_dir=str(tmp_path / "sft-gc"), gradient_checkpointing=True))
    a, b = weights(sft_plain, "step-000002"), weights(sft_gc, "step-000002")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
