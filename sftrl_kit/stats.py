"""Statistics of rates: intervals and tests, with nothing of the evaluator in them.

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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Z_95 = 1.959963984540054


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


# --- comparing two rates ---------------------------------------------------------------


def format_p_value(p: float) -> str:
    """A p-value as the README writes it: 'p < 0.0001' below that, else four decimals
    at most ('0.0005', '0.03')."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a p-value lies in [0, 1], got {p}")
    return "p < 0.0001" if p < 0.0001 else f"{p:.4f}".rstrip("0").rstrip(".") if p < 1 else "1"


def format_rate(rate: dict[str, Any], counts: bool = True) -> str:
    """A rate as tables and the terminal write it: '3/100 = 3.0% [1.0, 8.5]' (counts=False:
    '  3.0% [1.0, 8.5]', the value in five characters, for columns)."""
    interval = f"[{100 * rate['low']:.1f}, {100 * rate['high']:.1f}]"
    if counts:
        return f"{rate['successes']}/{rate['trials']} = {100 * rate['value']:.1f}% {interval}"
    return f"{100 * rate['value']:5.1f}% {interval}"


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
    p_a, p_b = a["successes"] / a["trials"], b["successes"] / b["trials"]
    difference = p_a - p_b
    se = math.sqrt(_cluster_sum_variance(_task_residuals(a, b).values()))
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


def pooled_paired_difference(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], z: float = Z_95) -> dict[str, Any]:
    """One difference from several seeds' paired comparisons: the mean of the seeds'
    differences pA_i - pB_i (each seed counts once), with a cluster-robust standard error
    that treats each task (deal, route) as one cluster across every seed and both sides:
    the seeds of a study evaluate the same frozen tasks, so their differences are not
    independent, and a task's answers within an evaluation are not either.

    pairs: (rate A, rate B) per seed, rates from `rate_by_task` (evaluate's metrics, with
    per-task counts). Returns _result's fields (difference, low, high, p_value, test)
    and `per_seed`, the seeds' own differences. With one seed it is the paired,
    cluster-robust z-test of compare_rates."""
    if not pairs:
        raise ValueError("no seeds to pool")
    seeds = len(pairs)
    per_seed, residual_sums = [], {}
    for a, b in pairs:
        if "per_task" not in a or "per_task" not in b:
            raise ValueError("pooling needs rates with per-task counts (rate_by_task)")
        per_seed.append(a["successes"] / a["trials"] - b["successes"] / b["trials"])
        for task, residual in _task_residuals(a, b).items():
            residual_sums[task] = residual_sums.get(task, 0.0) + residual / seeds
    difference = sum(per_seed) / seeds
    se = math.sqrt(_cluster_sum_variance(residual_sums.values()))
    z_score = 0.0 if se == 0 else difference / se
    low, high = difference - z * se, difference + z * se
    if se > 0:
        p_value = _two_sided_normal(z_score)
    else:  # no task varies: nothing moved (p = 1) or every task alike; the interval as compare_rates gives it
        p_value = 1.0 if difference == 0 else 0.0
        merged = compare_rates(*(rate_by_task(_summed_counts(side)) for side in zip(*pairs)), z)
        low, high = merged["low"], merged["high"]
    return _result(
        difference,
        low,
        high,
        p_value,
        f"mean of {seeds} seeds' paired differences; z-test, cluster-robust (tasks as clusters across seeds)",
        z=z_score,
        per_seed=per_seed,
    )


def paired_mean_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of a_i - b_i over paired measurements that are not rates (returns of the same
    deals under two trainers, say), with Student's t interval at `level` and the
    two-sided p-value of the paired t-test. Returns difference, low, high, p_value, test
    and pairs."""
    from scipy.stats import t as student_t

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    pairs = len(a)
    if pairs < 2:
        raise ValueError("a paired t-test needs at least two pairs")
    differences = [x - y for x, y in zip(a, b)]
    mean = sum(differences) / pairs
    se = math.sqrt(sum((d - mean) ** 2 for d in differences) / (pairs - 1) / pairs)
    if se == 0:
        low = high = mean
        p_value = 1.0 if mean == 0 else 0.0
    else:
        half = student_t.ppf(0.5 + level / 2, pairs - 1) * se
        low, high = mean - half, mean + half
        p_value = float(2 * student_t.sf(abs(mean / se), pairs - 1))
    return {
        "difference": mean,
        "low": low,
        "high": high,
        "p_value": p_value,
        "test": f"paired t-test over {pairs} pairs",
        "pairs": pairs,
    }


def _summed_counts(rates: Sequence[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per task, the answers and hits of several evaluations added up."""
    summed: dict[str, tuple[int, int]] = {}
    for rate in rates:
        for task, (hits, answers) in rate["per_task"].items():
            before = summed.get(task, (0, 0))
            summed[task] = (before[0] + hits, before[1] + answers)
    return summed


def _task_residuals(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Each task's linearised contribution to pA - pB, (kA - pA mA) / NA - (kB - pB mB) / NB,
    for the tasks with answers on either side (a task one side lacks counts 0 of 0 there)."""
    p_a, p_b = a["successes"] / a["trials"], b["successes"] / b["trials"]
    residuals = {}
    for task in {**a["per_task"], **b["per_task"]}:
        k_a, m_a = a["per_task"].get(task, (0, 0))
        k_b, m_b = b["per_task"].get(task, (0, 0))
        if m_a or m_b:
            residuals[task] = (k_a - p_a * m_a) / a["trials"] - (k_b - p_b * m_b) / b["trials"]
    return residuals


def _cluster_sum_variance(residuals: Iterable[float]) -> float:
    """The variance of a sum of per-cluster terms, with the small-sample factor m / (m - 1)."""
    terms = list(residuals)
    m = len(terms)
    return m / (m - 1) * sum(r * r for r in terms) if m > 1 else 0.0
