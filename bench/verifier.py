"""Verifier and environment throughput for GeneralPoints; writes JSON.

    python bench/verifier.py [--out bench/results/verifier.json] [--repeats 5]

Measures, each as the median of --repeats timed passes:
  - verifications per second over a mix of correct, wrong-value, wrong-numbers,
    illegal-formula and unreadable answers (equal shares) on the frozen GP-ID deals;
  - the worst latency of each hostile answer (10 MB text, a million parentheses, ...);
  - GP-L env steps per second (reset + one step) and GP-VL resets per second
    (a rendered image each).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from common import REPO, RESULTS, machine, write_report  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(REPO))

from sftrl_kit.data import load_eval_set  # noqa: E402
from sftrl_kit.envs import make  # noqa: E402
from sftrl_kit.envs.answers import MAX_ANSWER_CHARS  # noqa: E402
from sftrl_kit.envs.general_points import GPConfig, format_answer, solve, verify  # noqa: E402
from sftrl_kit.envs.general_points.cards import Card  # noqa: E402

CAP = MAX_ANSWER_CHARS
HOSTILE = {
    "10MB_text": "{" + '"formula": "1+1", ' * 500_000 + "}",
    "1e6_nested_parens": '{"formula": "' + "(" * 1_000_000 + "1" + ")" * 1_000_000 + '"}',
    "1e6_open_braces": "{" * 1_000_000,
    # just under the answer-length cap, so the whole parser runs
    "cap_sized_object": "{" + '"formula": "1+1", ' * (CAP // 20) + "}",
    "cap_sized_open_braces": "{" * (CAP - 1),
    "cap_sized_nested_lists": '{"cards": ' + "[" * (CAP // 2 - 20) + "]" * (CAP // 2 - 20) + ', "formula": "1"}',
    "power_tower": '{"formula": "9**9**9**9"}',
    "5000_digit_integer": '{"formula": "' + "9" * 5000 + '"}',
    "division_by_zero": '{"formula": "10/(8-8)+3+1"}',
    "unicode_digits": '{"formula": "(١٠-٨+١)*٣"}',
}


def answer_mix(records: list[dict], config: GPConfig) -> list[tuple[list[Card], str]]:
    rng = random.Random(0)
    mix = []
    for record in records:
        hand = [Card.from_code(code) for code in record["task"]["hand"]]
        values = [card.value(config.face_rule) for card in hand]
        cards = [card.rank for card in hand]
        formula = rng.choice(solve(values, config.target))
        mix += [
            (hand, format_answer(cards, values, formula + "=24")),
            (hand, format_answer(cards, values, "+".join(map(str, values)) + "+0*1")),
            (hand, format_answer(cards, values, formula.replace(str(values[0]), "77", 1))),
            (hand, format_answer(cards, values, formula + ")")),
            (hand, "I think the answer is probably (8 - 2) * 4 but I am not sure."),
        ]
    return mix


def timed(function, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "verifier.json"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = GPConfig()
    records = load_eval_set(REPO / "data" / "eval" / "gp-id.jsonl")
    mix = answer_mix(records, config)
    verify_seconds = timed(lambda: [verify(text, hand, config) for hand, text in mix], args.repeats)

    hand = [Card.from_code(code) for code in records[0]["task"]["hand"]]
    hostile_ms = {}
    for name, text in HOSTILE.items():
        worst = max(timed(lambda text=text: verify(text, hand, config), args.repeats))
        hostile_ms[name] = {"worst_ms": round(worst * 1e3, 3), "outcome": verify(text, hand, config).outcome}

    steps = 2000
    env = make("gp-l")
    texts = [text for _, text in mix]

    def env_steps() -> None:
        env.reset(seed=0)
        for i in range(steps):
            env.reset()
            env.step(texts[i % len(texts)])

    env_seconds = timed(env_steps, args.repeats)
    vl_env, vl_resets = make("gp-vl"), 200

    def vl_reset() -> None:
        vl_env.reset(seed=0)
        for _ in range(vl_resets):
            vl_env.reset()

    vl_seconds = timed(vl_reset, args.repeats)

    result = {
        "benchmark": "verifier",
        "machine": machine(),
        "repeats": args.repeats,
        "verifications_per_second": round(len(mix) / statistics.median(verify_seconds)),
        "answer_mix": {
            "answers": len(mix),
            "kinds": ["correct", "wrong_value", "numbers_mismatch", "illegal_formula", "unparseable"],
        },
        "hostile_answers": hostile_ms,
        "gp_l_env_steps_per_second": round(steps / statistics.median(env_seconds)),
        "gp_vl_resets_per_second": round(vl_resets / statistics.median(vl_seconds), 1),
    }
    write_report(args.out, result)


if __name__ == "__main__":
    main()
