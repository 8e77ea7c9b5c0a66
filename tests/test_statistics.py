"""The statistics behind every comparison: clustered answers, paired checkpoints.

Simulations draw each episode's skill from a Beta distribution (an episode-level latent:
a model that misreads a deal keeps misreading it while it revises), with an intra-class
correlation of 0.75, the level at which answers-as-independent tests reject a true null
about 14% of the time at 2 answers per episode and 33% at 5.
"""

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from sftrl_kit.stats import (
    Z_95,
    compare_rates,
    mcnemar_exact_p,
    paired_mean_difference,
    pooled_paired_difference,
    rate_by_task,
    wilson_interval,
)

EPISODES = 50
MEAN, ICC = 0.3, 0.75


def skills(rng, size=EPISODES):
    spread = 1 / ICC - 1
    return rng.beta(MEAN * spread, (1 - MEAN) * spread, size=size)


def as_rate(hits, answers, ids):
    return rate_by_task({task: (int(k), int(n)) for task, k, n in zip(ids, hits, answers)})


@pytest.mark.parametrize("answers", [2, 5])
def test_identical_policies_differ_significantly_about_5_percent_of_the_time(answers):
    """Unpaired (each policy on its own tasks) and paired (both on the same frozen tasks,
    which share a difficulty): the new tests reject a true null at close to 5%; treating
    answers as independent rejects far more often."""
    rng = np.random.default_rng(answers)
    trials = 2000
    n = np.full(EPISODES, answers)
    own_a, own_b = [f"a{i}" for i in range(EPISODES)], [f"b{i}" for i in range(EPISODES)]
    shared = [f"t{i}" for i in range(EPISODES)]
    rejected = {"unpaired": 0, "paired": 0, "naive": 0}
    for _ in range(trials):
        k_a, k_b = rng.binomial(answers, skills(rng)), rng.binomial(answers, skills(rng))
        a, b = as_rate(k_a, n, own_a), as_rate(k_b, n, own_b)
        rejected["unpaired"] += compare_rates(a, b)["significant"]
        naive = compare_rates(wilson_interval(k_a.sum(), n.sum()), wilson_interval(k_b.sum(), n.sum()))
        rejected["naive"] += naive["significant"]
        task = skills(rng)
        rejected["paired"] += compare_rates(
            as_rate(rng.binomial(answers, task), n, shared), as_rate(rng.binomial(answers, task), n, shared)
        )["significant"]
    rates = {name: count / trials for name, count in rejected.items()}
    print(f"{answers} answers per episode, false-positive rates: {rates}")
    assert 0.025 <= rates["unpaired"] <= 0.075
    assert 0.025 <= rates["paired"] <= 0.075
    assert rates["naive"] > (0.10 if answers == 2 else 0.25)


def test_the_test_is_named_and_chosen_by_the_data():
    ids = ["t1", "t2", "t3"]
    single = as_rate([1, 0, 1], [1, 1, 1], ids), as_rate([0, 0, 1], [1, 1, 1], ids)
    multi = as_rate([1, 0, 2], [2, 2, 2], ids), as_rate([0, 1, 1], [2, 2, 2], ids)
    other = as_rate([1, 0, 2], [2, 2, 2], ["u1", "u2", "u3"])
    assert compare_rates(*single)["test"].startswith("McNemar")
    assert compare_rates(*multi)["test"].startswith("paired z, cluster-robust")
    assert compare_rates(multi[0], other)["test"].startswith("two-proportion z, cluster-robust")
    assert (
        compare_rates(wilson_interval(3, 9), wilson_interval(5, 9))["test"] == "two-proportion z (independent samples)"
    )


def test_mcnemar_matches_a_hand_worked_example_and_scipy():
    # 7 tasks solved only by A, 1 only by B: P(X <= 1 | Binomial(8, 1/2)) = 9/256, two-sided 18/256
    assert mcnemar_exact_p(7, 1) == pytest.approx(18 / 256)
    assert mcnemar_exact_p(1, 7) == pytest.approx(18 / 256)
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(4, 4) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        size = int(rng.integers(5, 60))
        a_solved, b_solved = rng.random(size) < rng.uniform(0.1, 0.9), rng.random(size) < rng.uniform(0.1, 0.9)
        ids = [f"s{i}" for i in range(size)]
        comparison = compare_rates(as_rate(a_solved, np.ones(size), ids), as_rate(b_solved, np.ones(size), ids))
        only_a, only_b = int(np.sum(a_solved & ~b_solved)), int(np.sum(b_solved & ~a_solved))
        expected = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        assert comparison["p_value"] == pytest.approx(expected, rel=1e-9)
        assert comparison["discordant"] == [only_a, only_b]
        assert comparison["difference"] == pytest.approx((only_a - only_b) / size)
        assert comparison["low"] <= comparison["difference"] <= comparison["high"]


def test_pairs_are_matched_by_task_id_not_by_order():
    a = rate_by_task({"x": (1, 1), "y": (0, 1), "z": (1, 1)})
    b = rate_by_task({"z": (1, 1), "x": (1, 1), "y": (0, 1)})
    same = compare_rates(a, b)
    assert same["discordant"] == [0, 0]
    assert same["p_value"] == 1.0
    assert same["difference"] == 0.0


def test_one_answer_per_task_gives_the_wilson_interval_exactly():
    ids = [f"t{i}" for i in range(40)]
    rate = as_rate([1] * 10 + [0] * 30, [1] * 40, ids)
    plain = wilson_interval(10, 40)
    assert (rate["low"], rate["high"], rate["value"]) == (plain["low"], plain["high"], plain["value"])
    assert rate["design_effect"] == 1.0
    assert rate["episodes"] == 40


def test_the_design_effect_is_the_cluster_variance_over_the_binomial():
    hits, answers = np.array([0, 5, 1, 4, 0, 3, 2, 5]), np.array([5, 5, 2, 4, 5, 3, 5, 5])
    rate = as_rate(hits, answers, [f"t{i}" for i in range(len(hits))])
    p = hits.sum() / answers.sum()
    m = len(hits)
    cluster = m / (m - 1) * np.sum((hits - p * answers) ** 2) / answers.sum() ** 2
    assert rate["design_effect"] == pytest.approx(cluster / (p * (1 - p) / answers.sum()))
    effective = answers.sum() / rate["design_effect"]
    centre = (p + Z_95**2 / (2 * effective)) / (1 + Z_95**2 / effective)
    assert (rate["low"] + rate["high"]) / 2 == pytest.approx(centre)
    nothing = as_rate([0, 0, 0], [5, 5, 2], ["a", "b", "c"])  # no variance to read: one answer per episode
    assert nothing["effective_trials"] == 3
    assert nothing["high"] == pytest.approx(wilson_interval(0, 3)["high"])


@pytest.mark.parametrize("answers", [2, 5])
def test_the_cluster_interval_covers_the_true_rate_95_percent_of_the_time(answers):
    rng = np.random.default_rng(10 + answers)
    trials, covered, covered_naive = 2000, 0, 0
    n = np.full(EPISODES, answers)
    ids = [f"t{i}" for i in range(EPISODES)]
    for _ in range(trials):
        k = rng.binomial(answers, skills(rng))
        rate = as_rate(k, n, ids)
        naive = wilson_interval(int(k.sum()), int(n.sum()))
        covered += rate["low"] <= MEAN <= rate["high"]
        covered_naive += naive["low"] <= MEAN <= naive["high"]
    print(
        f"{answers} answers per episode: coverage {covered / trials:.3f} (answers as independent: "
        f"{covered_naive / trials:.3f})"
    )
    assert 0.93 <= covered / trials <= 0.975
    assert covered_naive / trials < 0.9


def test_the_paired_success_interval_covers_the_true_difference():
    """Newcombe's paired interval: two checkpoints on the same 60 tasks, with a shared task
    difficulty, true success 0.5 and 0.4."""
    rng = np.random.default_rng(3)
    ids = [f"t{i}" for i in range(60)]
    covered = 0
    for _ in range(1000):
        easy = rng.random(60) < 0.5
        a = np.where(easy, rng.random(60) < 0.8, rng.random(60) < 0.2)  # 0.5 overall
        b = np.where(easy, rng.random(60) < 0.7, rng.random(60) < 0.1)  # 0.4 overall
        c = compare_rates(as_rate(a, np.ones(60), ids), as_rate(b, np.ones(60), ids))
        covered += c["low"] <= 0.1 <= c["high"]
    print(f"paired success interval: coverage {covered / 1000:.3f}")
    assert 0.93 <= covered / 1000 <= 0.975


def test_no_variation_still_gives_an_interval_of_honest_width():
    """0 of 8 answers against 0 of 8 on the same 4 tasks: nothing varies, yet 4 episodes
    cannot rule out a difference of 40 points."""
    nothing = rate_by_task({f"t{i}": (0, 2) for i in range(4)})
    c = compare_rates(nothing, nothing)
    assert c["difference"] == 0.0
    assert c["p_value"] == 1.0
    assert c["high"] == pytest.approx(wilson_interval(0, 4)["high"])
    assert c["low"] == -c["high"]


def test_p_values_are_written_as_the_readme_writes_them():
    from sftrl_kit.stats import format_p_value

    assert [format_p_value(p) for p in (4.2e-7, 0.0001, 0.00048, 0.0623, 0.5, 1.0)] == [
        "p < 0.0001",
        "0.0001",
        "0.0005",
        "0.0623",
        "0.5",
        "1",
    ]
    with pytest.raises(ValueError, match="lies in"):
        format_p_value(1.5)


def test_the_statistics_need_nothing_of_the_evaluator():
    """Intervals and tests import without the evaluator, the models or torch: what
    measures recognition or compares runs can use them without an import circle."""
    import subprocess
    import sys

    probe = (
        "import sys, sftrl_kit.stats; "
        "print(sorted(m for m in ('sftrl_kit.evaluation', 'sftrl_kit.models', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_rates_are_written_one_way_in_tables_and_the_terminal():
    from sftrl_kit.stats import format_rate

    rate = {"successes": 3, "trials": 100, "value": 0.03, "low": 0.0103, "high": 0.0845}
    assert format_rate(rate) == "3/100 = 3.0% [1.0, 8.5]"
    assert format_rate(rate, counts=False) == "  3.0% [1.0, 8.5]"


def test_pooling_identical_seeds_gives_one_seeds_paired_test():
    """Three seeds that answered alike are one seed's evidence, not three times it: the
    pooled difference, interval and p-value are compare_rates' paired, clustered ones."""
    rng = np.random.default_rng(5)
    ids = [f"t{i}" for i in range(40)]
    a = as_rate(rng.integers(0, 3, 40), np.full(40, 2), ids)
    b = as_rate(rng.integers(0, 2, 40), np.full(40, 2), ids)
    single, pooled = compare_rates(a, b), pooled_paired_difference([(a, b)] * 3)
    for field in ("difference", "low", "high", "p_value"):
        assert pooled[field] == pytest.approx(single[field], rel=1e-12)
    assert pooled["per_seed"] == [single["difference"]] * 3


def test_the_pooled_standard_error_agrees_with_a_cluster_bootstrap():
    """An independent computation: resample the frozen tasks with replacement (the same
    draw for every seed and both checkpoints, since the seeds share the tasks), recompute
    the mean of the seeds' differences, and take the spread of 4,000 draws."""
    rng = np.random.default_rng(11)
    tasks, seeds = 80, 3
    ids = [f"t{i}" for i in range(tasks)]
    easy = rng.random(tasks) < 0.5  # a task's difficulty is shared by every seed
    hits_a = [np.where(easy, rng.binomial(2, 0.8, tasks), rng.binomial(2, 0.2, tasks)) for _ in range(seeds)]
    hits_b = [np.where(easy, rng.binomial(2, 0.6, tasks), rng.binomial(2, 0.1, tasks)) for _ in range(seeds)]
    twos = np.full(tasks, 2)
    pairs = [(as_rate(a, twos, ids), as_rate(b, twos, ids)) for a, b in zip(hits_a, hits_b)]
    pooled = pooled_paired_difference(pairs)
    draws = []
    for _ in range(4000):
        pick = rng.integers(0, tasks, tasks)
        draws.append(
            np.mean([a[pick].sum() / (2 * tasks) - b[pick].sum() / (2 * tasks) for a, b in zip(hits_a, hits_b)])
        )
    bootstrap_se = np.std(draws, ddof=1)
    analytic_se = (pooled["high"] - pooled["low"]) / (2 * Z_95)
    assert pooled["difference"] == pytest.approx(np.mean([a.mean() / 2 - b.mean() / 2 for a, b in zip(hits_a, hits_b)]))
    assert analytic_se == pytest.approx(bootstrap_se, rel=0.08)


def test_the_pooled_interval_covers_the_true_difference():
    """Three seeds on the same 60 tasks, two answers each, true success 0.5 and 0.4 with a
    task difficulty shared across seeds and checkpoints: 95% coverage."""
    rng = np.random.default_rng(17)
    ids, covered, runs = [f"t{i}" for i in range(60)], 0, 600
    twos = np.full(60, 2)
    for _ in range(runs):
        easy = rng.random(60) < 0.5
        pairs = [
            (
                as_rate(np.where(easy, rng.binomial(2, 0.8, 60), rng.binomial(2, 0.2, 60)), twos, ids),
                as_rate(np.where(easy, rng.binomial(2, 0.7, 60), rng.binomial(2, 0.1, 60)), twos, ids),
            )
            for _ in range(3)
        ]
        pooled = pooled_paired_difference(pairs)
        covered += pooled["low"] <= 0.1 <= pooled["high"]
    assert 0.92 <= covered / runs <= 0.98


def test_pooling_seeds_where_nothing_varies_keeps_an_honest_interval():
    nothing = rate_by_task({f"t{i}": (0, 2) for i in range(4)})
    pooled = pooled_paired_difference([(nothing, nothing)] * 3)
    assert (pooled["difference"], pooled["p_value"]) == (0.0, 1.0)
    assert pooled["high"] > 0.2
    assert pooled["low"] == -pooled["high"]
    with pytest.raises(ValueError, match="per-task"):
        pooled_paired_difference([({"successes": 1, "trials": 2}, nothing)])


def test_the_paired_mean_difference_is_students_paired_t_test():
    # d = 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), se = sd / 2, t = 3.873 on 3 degrees of
    # freedom, whose CDF has a closed form: 1/2 + (x / (1 + x^2) + atan x) / pi, x = t / sqrt 3.
    result = paired_mean_difference([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0])
    t_value = 2.5 / (math.sqrt(5 / 3) / 2)
    x = t_value / math.sqrt(3)
    cdf = 0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi
    assert result["difference"] == pytest.approx(2.5)
    assert result["p_value"] == pytest.approx(2 * (1 - cdf), rel=1e-9)
    # the interval's half-width is t_{0.975, 3} = 3.18245 standard errors
    assert result["high"] - 2.5 == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=1e-6)
    assert paired_mean_difference([1.0, 1.0], [1.0, 1.0])["p_value"] == 1.0
    with pytest.raises(ValueError, match="length"):
        paired_mean_difference([1.0, 2.0], [1.0])
