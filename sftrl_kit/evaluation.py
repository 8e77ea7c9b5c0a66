"""Evaluation on frozen sets, with honest statistics.

Metrics (the only place they are computed):
  success_rate            episodes solved within the verification budget
  first_attempt_success   episodes whose first answer was correct
  per_step_accuracy       correct answers / all answers, revisions included (the
                          paper's per-step accuracy)
  first_answer_accuracy   correct first answers / first answers at each task point
                          (revisions left out: what the fake-rule control reads, since
                          the verifier's message after a wrong answer names its rule)
  recognition_accuracy    VL: answers whose recognition check passed / answers checked
                          (GP-VL: the four cards read right; V-IRL-VL: exactly the
                          places in view named)
  mean_attempts, mean_return, outcome_histogram

Every rate keeps its counts per task (`per_task`: task id -> [hits, answers]); its
interval, and the tests that compare two rates, live in `stats`.

Each evaluation is stored under run_dir/eval/<set>/<digest of its key>/
(run_folder.evaluation_folder), where the key holds every setting that changes the
numbers (set, limit, budget, sampling, engine): evaluations with different settings live
side by side and are never mixed or overwritten (see `evaluation_key`).
`evaluate_checkpoints` evaluates every checkpoint of training runs, reusing what is there.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import run_folder
from .data import load_eval_set
from .envs import make
from .episodes import Episode
from .models import SamplingConfig
from .rollout import Responder, engine_of, rollout
from .stats import rate_by_task

EVAL_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=256, seed=0)
# The settings in an evaluation's key besides the set itself: rows that gather evaluations
# carry them as columns, and tables and figures refuse rows that differ in any of them.
KEY_FIELDS = ("env_id", "limit", "max_attempts", *(f.name for f in fields(SamplingConfig)), "engine", "env_overrides")
# The metrics that are rates (each a rate_by_task dict: value, interval, counts).
RATES = ("success_rate", "first_attempt_success", "per_step_accuracy", "first_answer_accuracy", "recognition_accuracy")
FIRST_ANSWER_METRIC = (
    "first_answer_accuracy"  # the fake-rule control's clean number: later tries hear the verifier's rule
)


def task_ids(episodes: Sequence[Episode]) -> list[str]:
    """One id per episode, "<split>:<seed>", the same for the same frozen task in any
    evaluation (a task played again gets "#2", "#3", ... in order)."""
    seen: Counter = Counter()
    ids = []
    for episode in episodes:
        base = f"{episode.split}:{episode.seed}"
        seen[base] += 1
        ids.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return ids


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, Any]:
    ids = task_ids(episodes)
    turns = [turn for episode in episodes for turn in episode.turns]

    def rate(count_of) -> dict[str, Any]:
        return rate_by_task({task: count_of(e) for task, e in zip(ids, episodes)})

    def checked(e: Episode) -> list[bool]:
        return [bool(c) for c in (t.verdict.get("recognition_correct") for t in e.turns) if c is not None]

    any_checked = any(checked(e) for e in episodes)
    return {
        "episodes": len(episodes),
        "success_rate": rate(lambda e: (int(e.success), 1)),
        "first_attempt_success": rate(lambda e: (int(bool(e.turns) and e.turns[0].outcome == "correct"), 1)),
        "per_step_accuracy": rate(lambda e: (sum(t.outcome == "correct" for t in e.turns), len(e.turns))),
        "first_answer_accuracy": rate(_first_answers_right),
        "recognition_accuracy": rate(lambda e: (sum(checked(e)), len(checked(e)))) if any_checked else None,
        "mean_attempts": len(turns) / len(episodes) if episodes else None,
        "mean_return": sum(e.total_reward for e in episodes) / len(episodes) if episodes else None,
        "outcome_histogram": dict(sorted(Counter(t.outcome for t in turns).items())),
    }


def _first_answers_right(episode: Episode) -> tuple[int, int]:
    """(right, given) over the first answers at each task point: the first turn and every
    turn after a correct one (a correct answer ends a GP deal, and moves a V-IRL route on).
    Revisions, which follow the verifier's message, are left out."""
    firsts = [t for i, t in enumerate(episode.turns) if i == 0 or episode.turns[i - 1].outcome == "correct"]
    return sum(t.outcome == "correct" for t in firsts), len(firsts)


RAMBLING_CHARS = 600  # an unreadable answer this long is rambling, not a slip of format


VALID_OUTCOMES = frozenset({"correct", "wrong_value", "wrong_action"})  # failure_modes' "valid" (GP, V-IRL)


def failure_modes(episodes: Sequence[Episode]) -> dict[str, Any]:
    """How answers failed, with the memorisation signature counted on its own:

    other_rule_used     the answer followed the rule not in force (the verdict's flag):
                        GP numbers valued under the other face-card rule, or a V-IRL
                        action of the other action space. On a rule-OOD set the other
                        rule is the trained one: the memorisation signature
    other_rule_numbers  GP: the "number" field lists the hand's values under the other
                        face-card rule, whatever the formula (the verdict's numbers_rule);
                        the signature in a model whose arithmetic does not work yet
    valid               the answer is well-formed and plays by the scored rule: GP, a
                        legal formula using each card's number under that rule exactly
                        once, whatever its value (outcome correct or wrong_value); V-IRL,
                        an action of the scored action space (correct or wrong_action).
                        Instruction-following apart from competence: success counts the
                        valid answers that are also right. The scored rule is the one the
                        prompt states on every set but the fake-rule control
    unparseable         no answer object could be read
    rambling            unreadable and at least RAMBLING_CHARS long (typical of RL
                        without an SFT start)
    Each count comes with its share of all answers (and that share as a `rate_by_task`,
    `rate`: its interval accounts for answers of one episode being alike) and example
    episode indices.
    """
    checks = {
        "other_rule_used": lambda t: bool(t.verdict.get("other_rule_used")),
        "other_rule_numbers": lambda t: t.verdict.get("numbers_rule") == "other",
        "valid": lambda t: t.outcome in VALID_OUTCOMES,
        "unparseable": lambda t: t.outcome == "unparseable",
        "rambling": lambda t: t.outcome == "unparseable" and len(t.response) >= RAMBLING_CHARS,
    }
    ids = task_ids(episodes)
    answers = sum(len(e.turns) for e in episodes)
    out: dict[str, Any] = {"answers": answers}
    for name, check in checks.items():
        per_task = {task: (sum(map(check, e.turns)), len(e.turns)) for task, e in zip(ids, episodes)}
        hits = [i for i, e in enumerate(episodes) if any(map(check, e.turns))]
        count = sum(k for k, _ in per_task.values())
        out[name] = {
            "count": count,
            "share": count / answers if answers else None,
            "rate": rate_by_task(per_task),
            "examples": hits[:10],
        }
    return out


def failure_examples(
    episodes: Sequence[Episode],
    modes: Sequence[str] = ("other_rule_used", "unparseable"),
) -> list[Episode]:
    """The example episodes failure_modes found for the given modes, in their order."""
    found = failure_modes(episodes)
    return [episodes[i] for i in sorted({i for mode in modes for i in found[mode]["examples"]})]


# --- evaluations, keyed by their settings ----------------------------------------------


def evaluation_key(
    name: str,
    records: Sequence[dict[str, Any]],
    env_id: str,
    sampling: SamplingConfig,
    limit: int | None = None,
    *,
    engine: str,
    **env_overrides: Any,
) -> dict[str, Any]:
    """Everything that changes an evaluation's numbers, resolved to the values used:
    `limit` is the number of tasks played (the first `limit`, or the whole set),
    `max_attempts` the budget in force (the override, or the environment's default), and
    `engine` the generation engine ("hf", "vllm": greedy decoding agrees across them up to
    floating-point ties, so each keeps its own evaluations), so that equal evaluations get
    equal keys however they were asked for."""
    if not records:
        raise ValueError(f"the evaluation set {name!r} is empty")
    played = len(records) if limit is None else len(records[:limit])
    budget = make(env_id, **{**records[0]["env_config"], **env_overrides}).config.max_attempts
    sampled = {
        f.name: float(getattr(sampling, f.name)) if f.type in ("float", float) else getattr(sampling, f.name)
        for f in fields(sampling)
    }  # 0 and 0.0 give one key
    return {
        "eval_set": name,
        "env_id": env_id,
        "limit": played,
        "max_attempts": budget,
        **sampled,
        "engine": engine,
        "env_overrides": {k: v for k, v in sorted(env_overrides.items()) if k != "max_attempts"},
    }


def evaluate(
    policy: Responder,
    eval_set: str | Path | Sequence[dict[str, Any]],
    env_id: str = "gp-l",
    sampling: SamplingConfig = EVAL_SAMPLING,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    run_dir: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
    **env_overrides: Any,
) -> dict[str, Any]:
    """Play every task of a frozen eval set once; metrics, and with run_dir, files in
    `run_folder.evaluation_folder(run_dir, key)`. An evaluation is never overwritten:
    one with the same key already there is an error (`evaluate_model` reuses it instead).

    env_overrides change settings for the whole set (e.g. max_attempts=1 for an
    ablation); the rule and colours come from each record.
    """
    records = load_eval_set(eval_set) if isinstance(eval_set, (str, Path)) else list(eval_set)
    split_names = sorted({r["split"] for r in records})
    name = name or f"{env_id}-{split_names[0] if len(split_names) == 1 else 'mixed'}"
    key = evaluation_key(name, records, env_id, sampling, limit, engine=engine_of(policy), **env_overrides)
    if run_dir is not None and (stored := run_folder.read_evaluation(run_dir, key)) is not None:
        raise FileExistsError(
            f"{stored['folder']} already holds this evaluation ({_describe(key)}); read it with "
            "load_evaluations, or call evaluate_model, which reuses it"
        )
    records = records[: key["limit"]]
    envs = [make(env_id, **{**r["env_config"], **env_overrides}) for r in records]
    started = time.perf_counter()
    episodes = rollout(
        policy,
        envs,
        sampling,
        tasks=[r["task"] for r in records],
        seeds=[r["seed"] for r in records],
        splits=[r["split"] for r in records],
        batch_size=batch_size,
        with_logprobs=False,
        progress=progress,
    )
    split_names = sorted({r["split"] for r in records})
    metrics = {
        "key": key,
        "split": split_names[0] if len(split_names) == 1 else split_names,
        "model": getattr(policy, "name", type(policy).__name__),
        "seconds": round(time.perf_counter() - started, 2),
        **episode_metrics(episodes),
        "failure_modes": failure_modes(episodes),
    }
    if run_dir is not None:
        metrics["folder"] = str(run_folder.write_evaluation(run_dir, metrics, episodes))
    return metrics


def evaluate_model(
    model: Responder | str | Path,
    run_dir: str | Path,
    eval_sets: Mapping[str, str | Path],
    env_id: str = "gp-l",
    sampling: SamplingConfig = EVAL_SAMPLING,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    engine: str = "auto",
    **env_overrides: Any,
) -> dict[str, dict[str, Any]]:
    """One model on each set {name: path}, stored under run_dir/eval/; an evaluation with
    the identical key already there is read back, not re-run, and the model (a responder,
    or anything load_policy takes) is loaded only if one is missing. engine: the
    generation engine for a model given by name or folder ("auto", "hf", "vllm"; the
    process's one vLLM engine takes each model's weights, see `engines.open_engine`); a
    responder answers with its own."""
    from .engines import resolve_engine
    from .models import is_vision_model

    engine_name = engine_of(model) if hasattr(model, "respond") else resolve_engine(engine, is_vision_model(model))
    results, todo = {}, {}
    for name, path in eval_sets.items():
        records = load_eval_set(path)  # read once: for the key, and for playing if it must be
        key = evaluation_key(name, records, env_id, sampling, limit, engine=engine_name, **env_overrides)
        stored = run_folder.read_evaluation(run_dir, key)
        if stored is not None:
            results[name] = stored
        else:
            todo[name] = records
    if todo:
        from .engines import open_engine
        from .models import load_policy

        policy = model if hasattr(model, "respond") else open_engine(load_policy(model), engine_name)
        for name, records in todo.items():
            results[name] = evaluate(
                policy,
                records,
                env_id,
                sampling,
                limit=limit,
                batch_size=batch_size,
                run_dir=run_dir,
                name=name,
                progress=progress,
                **env_overrides,
            )
    return {name: results[name] for name in eval_sets}


def load_evaluations(
    run_dir: str | Path, eval_set: str | None = None, where: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The stored evaluations of a model folder (on one set, or all), each metrics dict
    with its `folder`; `where` keeps those whose key has these values (a full key, or
    some fields of one, e.g. {"max_attempts": 5})."""
    return [
        metrics
        for metrics in run_folder.read_evaluations(run_dir, eval_set)
        if all(metrics["key"].get(field) == value for field, value in (where or {}).items())
    ]


def select_evaluation(run_dir: str | Path, eval_set: str, where: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The one evaluation of run_dir on eval_set matching `where`; an error that names the
    differing settings when there is none or more than one."""
    found = load_evaluations(run_dir, eval_set, where)
    if len(found) == 1:
        return found[0]
    if not found:
        others = load_evaluations(run_dir, eval_set)
        have = "; ".join(_describe(m["key"]) for m in others) or "none"
        raise FileNotFoundError(
            f"{Path(run_dir).name} has no evaluation on {eval_set} with {_describe(where or {})} (it has: {have})"
        )
    raise ValueError(
        f"{Path(run_dir).name} has {len(found)} evaluations on {eval_set} that differ in "
        f"{differing_settings([m['key'] for m in found])}: say which to use"
    )


def differing_settings(keys: Sequence[Mapping[str, Any]], ignore: Sequence[str] = ("eval_set",)) -> str:
    """'max_attempts: 2, 5; seed: 0, 1' for the fields whose values differ among keys
    ('' when none do)."""
    parts = []
    for field in dict.fromkeys(f for key in keys for f in key if f not in ignore):
        values = list(dict.fromkeys(json.dumps(key.get(field), sort_keys=True) for key in keys))
        if len(values) > 1:
            parts.append(f"{field}: {', '.join(values)}")
    return "; ".join(parts)


def require_same_settings(keys: Sequence[Mapping[str, Any]], what: str, ignore: Sequence[str] = ("eval_set",)) -> None:
    """ValueError naming the differing fields and their values if `keys` (evaluation keys,
    or rows with their fields as columns) disagree outside `ignore`."""
    differing = differing_settings(keys, ignore)
    if differing:
        raise ValueError(
            f"{what} would mix evaluations with different settings ({differing}); "
            "pass the settings to use (e.g. keys=settings.eval_keys())"
        )


def _describe(key: Mapping[str, Any]) -> str:
    return ", ".join(f"{field}={value!r}" for field, value in key.items()) or "any settings"


def key_columns(key: Mapping[str, Any]) -> dict[str, Any]:
    """The key's settings as flat row columns (env_overrides as JSON text)."""
    return {
        field: json.dumps(key[field], sort_keys=True) if field == "env_overrides" else key[field]
        for field in KEY_FIELDS
        if field in key
    }


def evaluate_checkpoints(
    runs: str | Path | Sequence[str | Path],
    eval_sets: Mapping[str, str | Path],
    env_id: str = "gp-l",
    sampling: SamplingConfig = EVAL_SAMPLING,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    engine: str = "auto",
    **env_overrides: Any,
) -> list[dict[str, Any]]:
    """Every checkpoint of a training run (or of several) on every eval set {name: path},
    through `evaluate_model`: an evaluation with the same settings already in a
    checkpoint's folder is read back, not run again. One `evaluation_row` per (run,
    checkpoint, set), ready for pandas.DataFrame(rows). With vLLM, one engine serves
    every checkpoint, taking each one's weights in turn.
    """
    rows = []
    for run in [runs] if isinstance(runs, (str, Path)) else runs:
        checkpoints = run_folder.list_checkpoints(run)
        if not checkpoints:
            raise FileNotFoundError(f"no checkpoints under {Path(run) / run_folder.CHECKPOINTS}")
        for checkpoint in checkpoints:
            counters = run_folder.read_counters(checkpoint)
            evaluated = evaluate_model(
                checkpoint,
                checkpoint,
                eval_sets,
                env_id,
                sampling,
                limit=limit,
                batch_size=batch_size,
                progress=progress,
                engine=engine,
                **env_overrides,
            )
            rows += [evaluation_row(Path(run).name, checkpoint, counters, metrics) for metrics in evaluated.values()]
    return rows


def evaluation_row(
    run: str, checkpoint: Path, counters: Mapping[str, Any], metrics: Mapping[str, Any]
) -> dict[str, Any]:
    """One flat row: the run, the checkpoint and its counters (step, tokens, gflops, ...),
    the set and the evaluation's settings (KEY_FIELDS), and the metrics (flatten_metrics)."""
    return {
        "run": run,
        "checkpoint": checkpoint.name,
        "eval_set": metrics["key"]["eval_set"],
        **counters,
        **key_columns(metrics["key"]),
        **flatten_metrics(metrics),
    }


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """{"success_rate": {"value", "low", ...}} -> {"success_rate", "success_rate_low", ...};
    `_effective_trials` is the number of answers the interval counts (rate_by_task)."""
    flat = {}
    for key in RATES:
        entry = metrics.get(key)
        flat[key] = entry["value"] if entry else None
        flat[f"{key}_low"] = entry["low"] if entry else None
        flat[f"{key}_high"] = entry["high"] if entry else None
        flat[f"{key}_successes"] = entry["successes"] if entry else 0
        flat[f"{key}_trials"] = entry["trials"] if entry else 0
        flat[f"{key}_effective_trials"] = entry.get("effective_trials", entry["trials"]) if entry else 0
    flat.update(
        episodes=metrics["episodes"],
        mean_attempts=metrics["mean_attempts"],
        mean_return=metrics["mean_return"],
        eval_seconds=metrics.get("seconds"),
    )
    return flat
