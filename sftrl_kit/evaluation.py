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

Every rate keeps its counts per task (`per_task`: task id -> [hits, answers]), so that
statistics can respect how the data was drawn:
  - the answers of one episode are not independent (a model that misreads a deal
    misreads it again when it revises), so rates over answers get a cluster-robust
    interval: Wilson's, on the effective number of answers N / design effect;
  - two checkpoints evaluated on the same frozen tasks are paired samples.
`compare_rates` picks its test from the data and names it: McNemar's exact test for
paired per-episode rates, a paired cluster-robust z-test for paired per-answer rates,
a cluster-robust two-proportion z-test for independent per-answer rates, and the
pooled two-proportion z-test (with a Newcombe interval) for independent per-episode
rates.

Each evaluation is stored under run_dir/eval/<set>/<digest of its key>/
(run_folder.evaluation_folder), where the key holds every setting that changes the
numbers (set, limit, budget, sampling, engine): evaluations with different settings live
side by side and are never mixed or overwritten (see `evaluation_key`).
`evaluate_checkpoints` evaluates every checkpoint of training runs, reusing what is there.
"""

from __future__ import annotations

import json
import math
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

Z_95 = 1.959963984540054
EVAL_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=256, seed=0)
# The settings in an evaluation's key besides the set itself: rows that gather evaluations
# carry them as columns, and tables and figures refuse rows that differ in any of them.
KEY_FIELDS = ("env_id", "limit", "max_attempts", *(f.name for f in fields(SamplingConfig)), "engine", "env_overrides")
# The metrics that are rates (each a rate_by_task dict: value, interval, counts).
RATES = ("success_rate", "first_attempt_success", "per_step_accuracy", "first_answer_accuracy", "recognition_accuracy")


# --- rates and their intervals ---------------------------------------------------------


def _wilson_limits(p: float, n: float, z: float) -> tuple[float, float]:
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> dict[str, float | int | None]:
    """Rate with its Wilson score interval; value/low/high are None when trials == 0."""
    if trials == 0:
        return {"value": None, "low": None, "high": None, "successes": 0, "trials": 0}
    p = successes / trials
    low, high = _wilson_limits(p, trials, z)
    return {"value": p, "low": low, "high": high, "successes": successes, "trials": trials}


def _cluster_variance(counts: Sequence[tuple[int, int]], p: float) -> float:
    """Sandwich variance of the ratio estimator sum(k) / sum(n) around p, one cluster per
    (k, n), with the m / (m - 1) small-sample factor; clusters without answers drop out."""
    counts = [(k, n) for k, n in counts if n > 0]
    m, total = len(counts), sum(n for _, n in counts)
    if m < 2:
        return 0.0
    return m / (m - 1) * sum((k - p * n) ** 2 for k, n in counts) / total**2


def rate_by_task(per_task: Mapping[str, Sequence[int]], z: float = Z_95) -> dict[str, Any]:
    """A rate from each task's (hits, answers), with a 95% interval that respects episodes.

    With one answer per task this is `wilson_interval`. With more (per-step accuracy, the
    trained-rule share) the answers of an episode are correlated, so the interval is
    Wilson's on the effective sample size trials / design_effect, where design_effect is
    the cluster-robust variance over the binomial one (at least 1). At a rate of 0 or 1
    the variance says nothing about the clustering, and the worst case is assumed: one
    effective answer per episode.
    """
    counts = [(int(k), int(n)) for k, n in per_task.values()]
    hits, trials = sum(k for k, _ in counts), sum(n for _, n in counts)
    episodes = sum(n > 0 for _, n in counts)
    out = {
        **wilson_interval(hits, trials, z),
        "episodes": episodes,
        "design_effect": 1.0,
        "effective_trials": trials,
        "per_task": {task: [int(k), int(n)] for task, (k, n) in per_task.items()},
    }
    if trials == 0 or max(n for _, n in counts) <= 1:
        return out
    p = hits / trials
    binomial = p * (1 - p) / trials
    design_effect = max(1.0, _cluster_variance(counts, p) / binomial) if binomial > 0 else trials / episodes
    effective = trials / design_effect
    out["low"], out["high"] = _wilson_limits(p, effective, z)
    out.update(design_effect=design_effect, effective_trials=effective)
    return out


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


def failure_modes(episodes: Sequence[Episode]) -> dict[str, Any]:
    """How answers failed, with the memorisation signature counted on its own:

    other_rule_used     the answer followed the rule not in force (the verdict's flag):
                        GP numbers valued under the other face-card rule, or a V-IRL
                        action of the other action space. On a rule-OOD set the other
                        rule is the trained one: the memorisation signature
    other_rule_numbers  GP: the "number" field lists the hand's values under the other
                        face-card rule, whatever the formula (the verdict's numbers_rule);
                        the signature in a model whose arithmetic does not work yet
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


# --- comparing two rates ---------------------------------------------------------------


def format_p_value(p: float) -> str:
    """A p-value as the README writes it: 'p < 0.0001' below that, else four decimals
    at most ('0.0005', '0.03')."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a p-value lies in [0, 1], got {p}")
    return "p < 0.0001" if p < 0.0001 else f"{p:.4f}".rstrip("0").rstrip(".") if p < 1 else "1"


def compare_rates(a: dict[str, Any], b: dict[str, Any], z: float = Z_95) -> dict[str, Any]:
    """Is rate a different from rate b? Returns the difference a - b, its 95% interval,
    a two-sided p-value, and `test`: the test the data called for.

    Rates from `rate_by_task` (evaluate's metrics) are paired when both hold the same task
    ids (two checkpoints on one frozen set) and clustered when some task has more than one
    answer. Plain counts ({"successes", "trials"}) are taken as independent samples.
      paired, one answer per task     McNemar's exact test; Newcombe's paired score interval
      paired, clustered               z-test on per-task linearised differences (sandwich)
      independent, clustered          pooled z-test with cluster-robust variances; Newcombe
                                      interval from the design-effect Wilson intervals
      independent, one answer each    pooled two-proportion z-test; Newcombe interval
    """
    if a["trials"] == 0 or b["trials"] == 0:
        raise ValueError("both rates need at least one trial")
    tasks_a, tasks_b = a.get("per_task"), b.get("per_task")
    paired = bool(tasks_a) and tasks_b is not None and set(tasks_a) == set(tasks_b)
    clustered = any(n > 1 for tasks in (tasks_a or {}, tasks_b or {}) for _, n in tasks.values())
    if paired and not clustered:
        return _mcnemar(a, b, z)
    if paired:
        return _paired_clusters(a, b, z)
    return _independent(a, b, z, clustered)


def _result(difference: float, low: float, high: float, p_value: float, test: str, **extra: Any) -> dict[str, Any]:
    return {
        "difference": difference,
        "low": max(-1.0, low),
        "high": min(1.0, high),
        "p_value": p_value,
        "significant": p_value < 0.05,
        "test": test,
        **extra,
    }


def _two_sided_normal(z_score: float) -> float:
    return math.erfc(abs(z_score) / math.sqrt(2))


def _independent(a: dict[str, Any], b: dict[str, Any], z: float, clustered: bool) -> dict[str, Any]:
    """Newcombe's hybrid score interval from each rate's own interval, and the pooled z-test
    (with cluster-robust variances under the null when answers cluster in episodes)."""
    k1, n1, k2, n2 = a["successes"], a["trials"], b["successes"], b["trials"]
    p1, p2 = k1 / n1, k2 / n2
    if clustered:
        (l1, u1), (l2, u2) = (_limits(rate, z) for rate in (a, b))
    else:
        (l1, u1), (l2, u2) = _wilson_limits(p1, n1, z), _wilson_limits(p2, n2, z)
    difference = p1 - p2
    low, high = _square_and_add(difference, p1, (l1, u1), p2, (l2, u2))
    pooled = (k1 + k2) / (n1 + n2)
    if clustered:
        variance = sum(_null_variance(rate, pooled) for rate in (a, b))
        test = "two-proportion z, cluster-robust (answers grouped by episode)"
    else:
        variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
        test = "two-proportion z (independent samples)"
    z_score = 0.0 if variance == 0 else difference / math.sqrt(variance)
    return _result(difference, low, high, _two_sided_normal(z_score), test, z=z_score)


def _square_and_add(
    difference: float, p1: float, limits_1: tuple[float, float], p2: float, limits_2: tuple[float, float]
) -> tuple[float, float]:
    """Newcombe's hybrid interval for p1 - p2 from each rate's own interval."""
    (l1, u1), (l2, u2) = limits_1, limits_2
    return (
        difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def _null_variance(rate: dict[str, Any], pooled: float) -> float:
    """The variance of a rate if its true value were `pooled`: cluster-robust with per-task
    counts, binomial with plain counts."""
    if "per_task" in rate:
        return _cluster_variance([tuple(counts) for counts in rate["per_task"].values()], pooled)
    return pooled * (1 - pooled) / rate["trials"]


def _limits(rate: dict[str, Any], z: float) -> tuple[float, float]:
    if "per_task" not in rate:
        return _wilson_limits(rate["successes"] / rate["trials"], rate["trials"], z)
    recomputed = rate_by_task(rate["per_task"], z)
    return recomputed["low"], recomputed["high"]


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs split as Binomial(b + c, 1/2)."""
    n, smaller = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(smaller + 1)) / 2**n
    return min(1.0, 2 * tail)


def _mcnemar(a: dict[str, Any], b: dict[str, Any], z: float) -> dict[str, Any]:
    """Paired 0/1 outcomes per task: McNemar's exact test, and Newcombe's (1998) method 10
    interval (Wilson limits of each margin combined with the pairs' correlation phi)."""
    pairs = [
        (a["per_task"][task][0], b["per_task"][task][0])
        for task in a["per_task"]
        if a["per_task"][task][1] == b["per_task"][task][1] == 1
    ]  # tasks with nothing to score drop out
    if not pairs:
        raise ValueError("no task has an outcome in both evaluations")
    both = sum(x and y for x, y in pairs)
    only_a = sum(x and not y for x, y in pairs)
    only_b = sum(y and not x for x, y in pairs)
    neither = len(pairs) - both - only_a - only_b
    n = len(pairs)
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1, u1), (l2, u2) = _wilson_limits(p1, n, z), _wilson_limits(p2, n, z)
    margins = (both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    difference = p1 - p2
    low = difference - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = difference + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return _result(
        difference,
        low,
        high,
        mcnemar_exact_p(only_a, only_b),
        "McNemar exact (paired by task)",
        discordant=[only_a, only_b],
    )


def _paired_clusters(a: dict[str, Any], b: dict[str, Any], z: float) -> dict[str, Any]:
    """Ratio estimators on the same tasks: the variance of pA - pB from each task's
    linearised contribution (kA - pA nA) / NA - (kB - pB nB) / NB, which keeps both the
    within-episode clustering and the pairing by task."""
    n_a, n_b = a["trials"], b["trials"]
    p_a, p_b = a["successes"] / n_a, b["successes"] / n_b
    residuals = []
    for task, (k_a, m_a) in a["per_task"].items():
        k_b, m_b = b["per_task"][task]
        if m_a or m_b:
            residuals.append((k_a - p_a * m_a) / n_a - (k_b - p_b * m_b) / n_b)
    m = len(residuals)
    variance = m / (m - 1) * sum(r * r for r in residuals) if m > 1 else 0.0
    difference = p_a - p_b
    se = math.sqrt(variance)
    low, high = difference - z * se, difference + z * se
    if se == 0:  # no task varies (e.g. 0/n against 0/n): each rate's own interval, combined as if independent
        low, high = _square_and_add(difference, p_a, _limits(a, z), p_b, _limits(b, z))
    z_score = 0.0 if se == 0 else difference / se
    return _result(
        difference,
        low,
        high,
        _two_sided_normal(z_score),
        "paired z, cluster-robust (same tasks; answers grouped by episode)",
        z=z_score,
    )


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
