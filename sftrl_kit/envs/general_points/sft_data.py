"""GeneralPoints SFT demonstrations (paper section 5): expert and sub-optimal answers.

"expert": one prompt, one correct answer per deal. "suboptimal": 1 to budget-1 wrong
answers, each answered by the verifier's real message, then a correct answer. Every
wrong answer is checked by the verifier to be the kind of error it claims to be.

Demonstrations are dicts {"prompt", "exchanges", "answer", "seed", "task"};
`sftrl_kit.data` picks the training seeds and settings and turns them into records.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

from .cards import RANKS
from .env import GeneralPointsEnv
from .prompts import format_answer, number_thought
from .solver import solve
from .verifier import verify

ERROR_KINDS = ("wrong_value", "numbers_mismatch", "illegal_formula")


def expert_demonstrations(
    env: GeneralPointsEnv, size: int, seed: int, reasoning: bool = False
) -> Iterator[dict[str, Any]]:
    """Deal i (seed + i) and one of its correct answers, drawn with random.Random(seed + i);
    with `reasoning`, the answer starts with a "thought" applying the stated rule to each card."""
    for index in range(size):
        observation, info = env.reset(seed=seed + index)
        rng = random.Random(seed + index)
        answer = correct_answer(env, info, rng, reasoning)
        yield {"prompt": observation, "exchanges": [], "answer": answer, "seed": seed + index, "task": info["task"]}


def suboptimal_demonstrations(env: GeneralPointsEnv, size: int, seed: int) -> Iterator[dict[str, Any]]:
    """Deal i (seed + i): verified wrong answers with the verifier's messages, then a correct one."""
    for index in range(size):
        observation, info = env.reset(seed=seed + index)
        rng = random.Random(seed + index)
        exchanges = []
        for _ in range(rng.randint(1, env.config.max_attempts - 1)):
            wrong = wrong_answer(env, info, rng)
            feedback, _, terminated, truncated, _ = env.step(wrong)
            if terminated or truncated:
                raise RuntimeError(f"a wrong answer ended the episode of {info['task']}")
            exchanges.append((wrong, feedback.text))
        answer = correct_answer(env, info, rng)
        yield {
            "prompt": observation,
            "exchanges": exchanges,
            "answer": answer,
            "seed": seed + index,
            "task": info["task"],
        }


def correct_answer(env: GeneralPointsEnv, info: dict[str, Any], rng: random.Random, reasoning: bool = False) -> str:
    formula = rng.choice(solve(info["values"], env.config.target))
    cards, numbers = _ranks(env), info["values"]
    thought = number_thought(cards, numbers, env.config.face_rule) if reasoning else None
    return format_answer(cards, numbers, f"{formula}={env.config.target}", thought)


def wrong_answer(env: GeneralPointsEnv, info: dict[str, Any], rng: random.Random) -> str:
    """A wrong answer of a random kind (ERROR_KINDS), confirmed by the verifier (GP-VL:
    sometimes with misread cards as well)."""
    values, target = info["values"], env.config.target
    for _ in range(200):
        kind = rng.choice(ERROR_KINDS)
        if kind == "wrong_value":
            formula = _random_formula(values, rng)
        else:
            formula = rng.choice(solve(values, target))
            formula = _change_a_number(formula, rng) if kind == "numbers_mismatch" else _break(formula, rng)
        cards = _ranks(env)
        if env.config.checks_recognition and rng.random() < 0.3:
            cards[rng.randrange(len(cards))] = rng.choice([r for r in RANKS if r not in cards])
        answer = format_answer(cards, values, formula)
        if verify(answer, env.hand, env.config).outcome == kind:
            return answer
    raise RuntimeError(f"could not make a wrong answer for {info['task']}")


def _ranks(env: GeneralPointsEnv) -> list[str]:
    return [card.rank for card in env.hand]


def _random_formula(values: list[int], rng: random.Random) -> str:
    items = [str(v) for v in values]
    rng.shuffle(items)
    while len(items) > 1:
        i = rng.randrange(len(items) - 1)
        joined = f"{items[i]}{rng.choice('+-*/')}{items[i + 1]}"
        items[i : i + 2] = [f"({joined})" if len(items) > 2 else joined]
    return items[0]


def _change_a_number(formula: str, rng: random.Random) -> str:
    numbers = list(re.finditer(r"\d+", formula))
    chosen = rng.choice(numbers)
    new = rng.choice([v for v in range(1, 14) if v != int(chosen.group())])
    return formula[: chosen.start()] + str(new) + formula[chosen.end() :]


def _break(formula: str, rng: random.Random) -> str:
    breakers = [
        lambda f: f.replace(")", "", 1) if ")" in f else "(" + f,
        lambda f: f.replace("*", "x", 1) if "*" in f else f + "x2",
        lambda f: f + "^1",
        lambda f: f.replace("+", "++", 1) if "+" in f else "-" + f,
    ]
    return rng.choice(breakers)(formula)
