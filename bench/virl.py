"""V-IRL environment throughput; writes JSON.

    python bench/virl.py [--out bench/results/virl.json] [--repeats 5]

Medians over --repeats timed passes of: V-IRL-L env steps per second (expert answers,
so every step parses, verifies and moves on), routes generated per second (a walk, its
views and instruction), and 2x2 street-view grids rendered per second (224 px).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from common import REPO, RESULTS, machine, write_report  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(REPO))

from sftrl_kit.envs import make  # noqa: E402
from sftrl_kit.envs.virl.city import generate_city, generate_route  # noqa: E402
from sftrl_kit.envs.virl.prompts import describe_landmarks, format_answer  # noqa: E402
from sftrl_kit.envs.virl.streetview import render_views  # noqa: E402


def median_rate(run, count: int, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return count / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "virl.json"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    env = make("virl-l")
    steps_per_pass = 0

    def env_steps() -> None:
        nonlocal steps_per_pass
        steps_per_pass = 0
        env.reset(seed=0)
        for _ in range(40):
            env.reset()
            done = False
            while not done:
                decision = env.decisions[env.position]
                _, _, done, _, _ = env.step(format_answer(describe_landmarks(decision.landmarks), "", decision.action))
                steps_per_pass += 1

    env_steps()
    city = generate_city()
    routes = 500

    def make_routes() -> None:
        rng = random.Random(0)
        for _ in range(routes):
            generate_route(city, rng, turns=rng.randint(1, 3))

    grids = 100

    def render() -> None:
        for seed in range(grids):
            render_views(city, (seed % city.size, seed // city.size % city.size), (seed * 45) % 360, seed, 112)

    report = {
        "benchmark": "virl",
        "machine": machine(),
        "repeats": args.repeats,
        "virl_l_env_steps_per_second": round(median_rate(env_steps, steps_per_pass, args.repeats)),
        "routes_generated_per_second": round(median_rate(make_routes, routes, args.repeats)),
        "street_view_grids_per_second": round(median_rate(render, grids, args.repeats), 1),
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
