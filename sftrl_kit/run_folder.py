"""Where things lie in a run folder: the one module that knows the layout.

    papermill_runs/<YYYYmmdd-HHMMSS>-<name>/  a batch or notebook run (new_run_dir; the root
                                              is $SFTRL_RUNS, else papermill_runs): executed
                                              notebooks, batch.json, figures/, tables/, data/
                                              (the study's SFT datasets) and
      quickstart-<task>/                      a quickstart study's training runs (00)
      ablations/                              08's training runs
      <run>/ (sft-start, ppo, sft, ...)       its training runs (train/sft.py, train/ppo.py)
        sft.yaml | ppo.yaml                   the settings the run ran with (claim_run_folder:
                                              a run with other settings is refused)
        picked.json                           sft-start: the checkpoint pick_start chose
        settings-history.jsonl                each start and resume: from which step, and
                                              the length fields a continuation changed
        metrics.jsonl                         one JSON row per log (SFT) or update (PPO),
                                              each with its "step"
        episodes/update-NNNN.jsonl            PPO: every update's episodes
        processes.json                        PPO: each process's checksum of the weights
        memory-plan.txt                       the memory plan the trainer made before it
                                              loaded anything (memory_plan), per GPU
        trainer/checkpoint-N/                 SFT: TRL's own state (optimizer, scheduler)
        checkpoints/
          step-NNNNNN/ (SFT), update-NNNN/ (PPO): a model folder that load_policy reads
            config.json, *.safetensors, ...   the weights (LoRA merged), the tokenizer
            adapter/                          PPO with LoRA: the adapters alone
            optimizer.safetensors             PPO: AdamW's tensors, and the rest of its
            trainer_state.json                state as JSON (no pickles); under DeepSpeed
                                              one pair per process: optimizer-R-of-N.*
            checkpoint.json                   counters: method, step, tokens, flops, gflops,
                                              ... Written last: a folder without it is
                                              not (yet) a checkpoint
            eval/<set>/<key digest>/          one evaluation per set and settings (any
                                              model folder can hold these, `sftrl eval`'s too)
              episodes.jsonl                  the episodes played
              metrics.json                    the rates and their key; written last
            drift/<key digest>.json           drift.forward_kl: the KL from a start, per setting
            drift-samples/<key digest>.json   (in a start's folder) the responses it is estimated on

A training folder holds one run: training into it again with settings that shape the
result differently is refused before anything runs (claim_run_folder); continuing it
further (more steps or updates) is allowed and recorded in settings-history.jsonl.
A resumed run goes back to its last checkpoint and drops the metric rows logged after
it (`drop_metrics_after`). What an evaluation key holds (everything that changes the
numbers) is evaluation.evaluation_key's business; here a key only names a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .episodes import Episode, read_jsonl, write_episodes
from .files import PARTIAL, write_atomically

CHECKPOINTS = "checkpoints"
COUNTERS = "checkpoint.json"
ADAPTER = "adapter"  # PPO with LoRA: the adapters alone, to resume on the initial base
OPTIMIZER = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"
TRAINER = "trainer"  # SFT: TRL's checkpoint-N folders
METRICS = "metrics.jsonl"
EVAL = "eval"
EVAL_METRICS = "metrics.json"
EVAL_EPISODES = "episodes.jsonl"
DRIFT = "drift"  # <checkpoint>/drift/<key digest>.json: drift.forward_kl's result at one setting
DRIFT_SAMPLES = "drift-samples"  # <start>/drift-samples/<key digest>.json: the start's sampled responses
SETTINGS_HISTORY = "settings-history.jsonl"
SETTINGS_FILES = {"sft": "sft.yaml", "ppo": "ppo.yaml"}
EPISODES = "episodes"  # PPO: update-NNNN.jsonl per update
MEMORY_PLAN = "memory-plan.txt"
PROCESSES = "processes.json"  # PPO: each process's checksum of the weights
START_RUN = "sft-start"  # a study's shared start
PICKED_START = "picked.json"  # in the start's run folder: the checkpoint pick_start chose, and its window
QUICKSTART_PREFIX = "quickstart-"  # quickstart-<task>: the folder of one task's quickstart study
TABLES = "tables"
FIGURES = "figures"
DATA = "data"
ABLATIONS = "ablations"  # 08's training runs
_CHECKPOINT_NAMES = {"sft": "step-{:06d}", "ppo": "update-{:04d}"}
_EPISODES_NAME = _CHECKPOINT_NAMES["ppo"] + ".jsonl"


# --- run folders ----------------------------------------------------------------------


def runs_root() -> Path:
    return Path(os.environ.get("SFTRL_RUNS", "papermill_runs"))


def new_run_dir(name: str, root: str | Path | None = None) -> Path:
    """<root>/<YYYYmmdd-HHMMSS>-<name>/, made unique if two start in one second."""
    root = Path(root) if root is not None else runs_root()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = root / f"{stamp}-{name}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = root / f"{stamp}-{name}-{suffix}"
    folder.mkdir(parents=True)
    return folder


# --- the settings a training folder holds -------------------------------------------


class RunSettingsError(ValueError):
    """A training run was asked of a folder that holds a run with other settings."""


_ABSENT = "(absent)"


def claim_run_folder(
    run_dir: str | Path,
    method: str,
    settings: Mapping[str, Any],
    *,
    done: int,
    length_fields: Iterable[str],
    outside_result: Iterable[str],
) -> dict[str, tuple[Any, Any]]:
    """Check that `settings` may train in `run_dir` before anything runs, and return the
    length fields a continuation changes ({field: (recorded, given)}; {} for a new run or
    the same one).

    A folder is free when it holds no run yet. A folder with a run (its settings file,
    sft.yaml or ppo.yaml by `method`)
    takes the same settings again, with only `length_fields` (max_steps, updates) free to
    differ, and only upwards of `done`, the steps or updates it already holds. Fields in
    `outside_result` (run_dir, save and logging intervals) change nothing in the weights
    and are not compared. Anything else raises RunSettingsError naming each differing
    field with both values; so does a folder holding checkpoints but no settings file."""
    run_dir = Path(run_dir)
    path = settings_file(run_dir, method)
    given = _plain(settings)
    if not path.is_file():
        if list_checkpoints(run_dir) or trainer_dir(run_dir).is_dir():
            raise RunSettingsError(
                f"{run_dir} holds a run but no {path.name}: its settings cannot be told. "
                "Train into a new run_dir, or delete this one."
            )
        return {}
    try:
        recorded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RunSettingsError(f"{path} is not valid YAML ({error}); the run's settings cannot be told") from error
    if not isinstance(recorded, dict):
        raise RunSettingsError(f"{path} holds no settings mapping; the run's settings cannot be told")
    skipped, lengths = set(outside_result), set(length_fields)
    names = [n for n in {**recorded, **given} if n not in skipped]
    changed = {n: (recorded.get(n, _ABSENT), given.get(n, _ABSENT)) for n in names}
    here, there = _study_relative(given, run_dir), _study_relative(recorded, recorded.get("run_dir", run_dir))
    changed = {n: pair for n, pair in changed.items() if here.get(n, _ABSENT) != there.get(n, _ABSENT)}
    differing = {n: pair for n, pair in changed.items() if n not in lengths}
    if differing:
        lines = "\n".join(f"  {n}: {old!r} in the folder, {new!r} given" for n, (old, new) in differing.items())
        raise RunSettingsError(
            f"{run_dir} holds a run trained with other settings:\n{lines}\n"
            "Train into a new run_dir for these settings, or give the folder's own to continue it."
        )
    too_short = {n: new for n, (_, new) in changed.items() if isinstance(new, int) and 0 < new < done}
    if too_short:
        (name, new), *_ = too_short.items()
        raise RunSettingsError(
            f"{run_dir} already holds {done} steps or updates, more than {name}={new} asks for; "
            "a shorter run goes into a new run_dir (its checkpoints up to that step are here)."
        )
    return {n: pair for n, pair in changed.items() if n in lengths}


def record_run_settings(
    run_dir: str | Path,
    method: str,
    settings: Mapping[str, Any],
    from_step: int,
    continued: Mapping[str, tuple[Any, Any]],
) -> None:
    """The settings a run starts or resumes with (its settings file), and a row in
    settings-history.jsonl: when, from which step, and the length fields it changed."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(settings_file(run_dir, method), yaml.safe_dump(dict(settings), sort_keys=False))
    row = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "from_step": from_step,
        "continued": {n: {"was": old, "now": new} for n, (old, new) in continued.items()},
    }
    with (run_dir / SETTINGS_HISTORY).open("a") as out:
        out.write(json.dumps(row) + "\n")


def _study_relative(settings: Mapping[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Absolute paths inside the study folder (run_dir's parent: the start checkpoint,
    the data file) written relative to it, so that a study folder moved or copied whole,
    or reached through a symbolic link (an arm's run folder linking an earlier study's),
    still holds the same runs."""
    study = Path(run_dir).resolve().parent
    portable = {}
    for name, value in settings.items():
        if isinstance(value, str) and os.path.isabs(value) and Path(value).resolve().is_relative_to(study):
            value = f"<study folder>/{Path(value).resolve().relative_to(study)}"
        portable[name] = value
    return portable


def _plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as a YAML file gives them back (tuples as lists, and so on), so that
    given and recorded settings compare like for like."""
    return yaml.safe_load(yaml.safe_dump(dict(settings), sort_keys=False))


def settings_file(run_dir: str | Path, method: str) -> Path:
    """The file a training run's settings are recorded in: sft.yaml or ppo.yaml."""
    if method not in SETTINGS_FILES:
        raise ValueError(f"method must be one of {', '.join(SETTINGS_FILES)}, got {method!r}")
    return Path(run_dir) / SETTINGS_FILES[method]


def episodes_file(run_dir: str | Path, update: int) -> Path:
    """Where a PPO run keeps the episodes of one update: episodes/update-NNNN.jsonl."""
    return Path(run_dir) / EPISODES / _EPISODES_NAME.format(update)


def episode_files(run_dir: str | Path) -> dict[int, Path]:
    """A PPO run's episode files by update, in update order."""
    files = sorted((Path(run_dir) / EPISODES).glob("update-*.jsonl"))
    return {int(path.stem.split("-")[1]): path for path in files}


def processes_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / PROCESSES


def memory_plan_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / MEMORY_PLAN


def write_memory_plan(run_dir: str | Path, table: str) -> Path:
    """The memory plan a trainer made before it loaded anything, as its table."""
    return write_atomically(memory_plan_file(run_dir), table + "\n")


def start_run(study_dir: str | Path) -> Path:
    """A study's shared-start run folder (sft-start)."""
    return Path(study_dir) / START_RUN


def picked_start_file(start_run_dir: str | Path) -> Path:
    return Path(start_run_dir) / PICKED_START


def quickstart_dir(run_dir: str | Path, task: str) -> Path:
    """Where a quickstart study of `task` keeps its training runs: run_dir/quickstart-<task>,
    so that studies of two tasks in one run folder (the smoke batch) never share a run."""
    return Path(run_dir) / f"{QUICKSTART_PREFIX}{task}"


def quickstart_task(folder: str | Path) -> str | None:
    """The task a quickstart study's folder is named after (None for any other folder)."""
    name = Path(folder).name
    return name.removeprefix(QUICKSTART_PREFIX) if name.startswith(QUICKSTART_PREFIX) else None


def tables_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / TABLES


def figures_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / FIGURES


def ablations_dir(run_dir: str | Path) -> Path:
    """Where 08_ablations keeps its training runs, apart from the study's own."""
    return Path(run_dir) / ABLATIONS


def data_dir(run_dir: str | Path) -> Path:
    """Where a study keeps the SFT datasets it made."""
    return Path(run_dir) / DATA


# --- checkpoints and their counters ---------------------------------------------------


def checkpoint_dir(run_dir: str | Path, method: str, step: int) -> Path:
    """Where a trainer writes its checkpoint at `step`: checkpoints/step-NNNNNN (SFT) or
    checkpoints/update-NNNN (PPO)."""
    if method not in _CHECKPOINT_NAMES:
        raise ValueError(f"method must be one of {', '.join(_CHECKPOINT_NAMES)}, got {method!r}")
    return Path(run_dir) / CHECKPOINTS / _CHECKPOINT_NAMES[method].format(step)


def write_counters(checkpoint: str | Path, counters: Mapping[str, Any]) -> None:
    """checkpoint.json, the last file a checkpoint gets: it makes the folder complete."""
    _write_json(Path(checkpoint) / COUNTERS, dict(counters), indent=2)


def read_counters(checkpoint: str | Path) -> dict[str, Any]:
    """A checkpoint's counters (step, tokens, flops, ...); a clear error naming the file
    when it is missing, not JSON, or holds no integer step."""
    path = Path(checkpoint) / COUNTERS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {checkpoint} is not a complete checkpoint")
    try:
        counters = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg}); delete {path.parent} or write it again") from error
    step = counters.get("step") if isinstance(counters, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        raise ValueError(
            f"{path} holds no checkpoint counters: expected a JSON object with an integer 'step', "
            f"found {json.dumps(counters)[:80]}"
        )
    return counters


def is_checkpoint(folder: str | Path) -> bool:
    """Whether `folder` is a complete checkpoint (its counters written)."""
    return (Path(folder) / COUNTERS).is_file()


def start_tokens(model: str | Path) -> int:
    """D_init of a run that starts from `model`: the tokens its checkpoint.json counts,
    0 for a model that is no checkpoint (a base model's name or folder)."""
    folder = Path(model)
    return read_counters(folder)["tokens"] if (folder / COUNTERS).is_file() else 0


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's complete checkpoints (folders under checkpoints/ with a checkpoint.json),
    in the order of their steps; [] when there are none."""
    folders = [p for p in (Path(run_dir) / CHECKPOINTS).glob("*") if (p / COUNTERS).is_file()]
    return sorted(folders, key=lambda p: (read_counters(p)["step"], p.name))


def last_checkpoint(run_dir: str | Path) -> Path:
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoints under {Path(run_dir) / CHECKPOINTS}")
    return checkpoints[-1]


# --- trainer state, to resume ---------------------------------------------------------


def trainer_state_files(checkpoint: str | Path, process_index: int = 0, processes: int = 1) -> tuple[Path, Path]:
    """(tensors, JSON) of PPO's optimizer state: one pair per run, or one per process when
    each holds its own partition (DeepSpeed ZeRO)."""
    folder = Path(checkpoint)
    if processes == 1:
        return folder / OPTIMIZER, folder / TRAINER_STATE
    shard = f"-{process_index}-of-{processes}"
    return (
        folder / OPTIMIZER.replace(".safetensors", f"{shard}.safetensors"),
        folder / TRAINER_STATE.replace(".json", f"{shard}.json"),
    )


def write_trainer_state(
    checkpoint: str | Path, tensors: dict, optimizer: dict[str, Any], process_index: int = 0, processes: int = 1
) -> None:
    """PPO's optimizer state: its tensors as safetensors, the rest as JSON (no pickle)."""
    from safetensors.torch import save_file

    tensor_file, json_file = trainer_state_files(checkpoint, process_index, processes)
    save_file(tensors, tensor_file)
    json_file.write_text(json.dumps({"optimizer": optimizer}) + "\n")


def read_trainer_state(
    checkpoint: str | Path, process_index: int = 0, processes: int = 1
) -> tuple[dict, dict[str, Any]]:
    """(tensors, the rest) as write_trainer_state left them. A checkpoint written by
    another number of partitions is refused, naming the count it was written with."""
    from safetensors.torch import load_file

    folder = Path(checkpoint)
    tensor_file, json_file = trainer_state_files(folder, process_index, processes)
    if not json_file.is_file():
        written = sorted(p.name for p in folder.glob(TRAINER_STATE.replace(".json", "*.json")))
        raise ValueError(
            f"{folder}: unreadable trainer state (no {json_file.name}, for process {process_index} of {processes}; "
            f"it holds {written or 'none'}): resume with the layout and process count the run was trained with"
        )
    try:
        optimizer = json.loads(json_file.read_text())["optimizer"]
        tensors = load_file(tensor_file)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{folder}: unreadable trainer state ({error})") from error
    return tensors, optimizer


def trainer_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / TRAINER


def last_trainer_step(run_dir: str | Path) -> int | None:
    """The step of TRL's last checkpoint-N under trainer/ (what SFT resumes from), or
    None when there is none."""
    steps = [
        int(p.name.split("-", 1)[1])
        for p in trainer_dir(run_dir).glob("checkpoint-*")
        if p.is_dir() and p.name.split("-", 1)[1].isdigit()
    ]
    return max(steps, default=None)


# --- metrics.jsonl --------------------------------------------------------------------


def append_metrics(run_dir: str | Path, row: Mapping[str, Any]) -> None:
    with (Path(run_dir) / METRICS).open("a") as out:
        out.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / METRICS)


def drop_metrics_after(run_dir: str | Path, step: int) -> None:
    """On resume: keep the rows logged at or before `step` (the checkpoint the run goes
    back to) byte for byte; the later ones are logged again. A last line without its
    newline was being written when the run stopped, and goes too."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    *lines, _unfinished = path.read_text().split("\n")
    kept = [
        line + "\n" for number, line in enumerate(lines, 1) if line.strip() and _row_step(path, number, line) <= step
    ]
    write_atomically(path, "".join(kept))


def _row_step(path: Path, number: int, line: str) -> int:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
    if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        raise ValueError(f"{path}:{number}: a metrics row without an integer 'step'")
    return row["step"]


# --- evaluations, one folder per set and settings -------------------------------------


def key_digest(key: Mapping[str, Any]) -> str:
    """A short stable name for a key: the first 12 hex digits of the SHA-256 of its
    canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(dict(key), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def evaluation_folder(model_dir: str | Path, key: Mapping[str, Any]) -> Path:
    """model_dir/eval/<set>/<key digest>/: one folder per set and settings."""
    return Path(model_dir) / EVAL / key["eval_set"] / key_digest(key)


def read_evaluation(model_dir: str | Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored evaluation with exactly this key (its metrics, with `folder`), or None."""
    _refuse_old_layout(Path(model_dir), key["eval_set"])
    path = evaluation_folder(model_dir, key) / EVAL_METRICS
    return _read_evaluation(path) if path.is_file() else None


def read_evaluations(model_dir: str | Path, eval_set: str | None = None) -> list[dict[str, Any]]:
    """Every complete evaluation of a model folder (on one set, or all), each its metrics
    with `folder`, in the order of their folders."""
    model_dir = Path(model_dir)
    _refuse_old_layout(model_dir, eval_set)
    return [_read_evaluation(path) for path in sorted((model_dir / EVAL).glob(f"{eval_set or '*'}/*/{EVAL_METRICS}"))]


def write_evaluation(model_dir: str | Path, metrics: Mapping[str, Any], episodes: Iterable[Episode]) -> Path:
    """The episodes, then the metrics (which make the folder complete), into the
    evaluation folder of metrics["key"]; returns the folder."""
    folder = evaluation_folder(model_dir, metrics["key"])
    write_episodes(folder / EVAL_EPISODES, episodes)
    _write_json(folder / EVAL_METRICS, dict(metrics), indent=2)
    return folder


def copy_evaluation(evaluation: Mapping[str, Any], model_dir: str | Path, **notes: Any) -> Path:
    """A stored evaluation (as read_evaluations returns it) into another model folder,
    its metrics extended by `notes`; returns the new folder."""
    source = Path(evaluation["folder"])
    metrics = {**{k: v for k, v in evaluation.items() if k != "folder"}, **notes}
    target = evaluation_folder(model_dir, metrics["key"])
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(EVAL_METRICS, f"*{PARTIAL}"), dirs_exist_ok=True)
    _write_json(target / EVAL_METRICS, metrics, indent=2)
    return target


def _read_evaluation(path: Path) -> dict[str, Any]:
    metrics = json.loads(path.read_text())
    if "key" not in metrics or key_digest(metrics["key"]) != path.parent.name:
        raise ValueError(
            f"{path} does not hold the key its folder is named after; delete {path.parent} and evaluate again"
        )
    return {**metrics, "folder": str(path.parent)}


def _refuse_old_layout(model_dir: Path, eval_set: str | None = None) -> None:
    for path in sorted((model_dir / EVAL).glob(f"{eval_set or '*'}/{EVAL_METRICS}")):
        raise ValueError(
            f"{path} is an evaluation in the old layout (eval/<set>/metrics.json), not keyed by its "
            f"settings: its budget and sampling cannot be told apart from others'. Delete "
            f"{path.parent} and evaluate again"
        )


# --- results keyed by their settings, one JSON file each -------------------------------


def keyed_file(model_dir: str | Path, kind: str, key: Mapping[str, Any]) -> Path:
    """model_dir/<kind>/<key digest>.json (kind: DRIFT, DRIFT_SAMPLES)."""
    return Path(model_dir) / kind / f"{key_digest(key)}.json"


def read_keyed(path: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The result stored at `path` (keyed_file) with exactly this key, or None when there
    is none; a file holding another key is an error."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if stored.get("key") != dict(key):
        raise ValueError(f"{path} does not hold the key its name says; delete it and measure again")
    return stored


def write_keyed(path: Path, result: Mapping[str, Any], indent: int | None = None) -> None:
    """A result holding its `key` to `path` (keyed_file), written whole."""
    _write_json(path, dict(result), indent=indent)


# --- files written whole --------------------------------------------------------------


def _write_json(path: Path, data: Any, indent: int | None = None) -> None:
    write_atomically(path, json.dumps(data, indent=indent) + "\n")
