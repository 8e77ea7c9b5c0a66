import random
from fractions import Fraction
from itertools import combinations_with_replacement, permutations, product

import pytest

from sftrl_kit.envs.general_points.formula import parse_formula
from sftrl_kit.envs.general_points.solver import is_solvable, solve


def brute_force_solvable(numbers, target=24):
    """Independent reference: every order, operator triple and tree shape of 4 numbers."""
    ops = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a / b if b != 0 else None,
    }

    def apply(op, a, b):
        return None if a is None or b is None else ops[op](a, b)

    for a, b, c, d in set(permutations(Fraction(n) for n in numbers)):
        for x, y, z in product(ops, repeat=3):
            shapes = (
                apply(z, apply(y, apply(x, a, b), c), d),  # ((a b) c) d
                apply(z, apply(x, a, apply(y, b, c)), d),  # (a (b c)) d
                apply(y, apply(x, a, b), apply(z, c, d)),  # (a b) (c d)
                apply(x, a, apply(z, apply(y, b, c), d)),  # a ((b c) d)
                apply(x, a, apply(y, b, apply(z, c, d))),  # a (b (c d))
            )
            if any(v == target for v in shapes):
                return True
    return False


def test_exactly_1362_of_1820_four_card_multisets_make_24():
    hands = list(combinations_with_replacement(range(1, 14), 4))
    assert len(hands) == 1820
    assert sum(is_solvable(h) for h in hands) == 1362


def test_solvability_agrees_with_brute_force_on_a_sample():
    hands = list(combinations_with_replacement(range(1, 14), 4))
    for hand in random.Random(0).sample(hands, 120):
        assert is_solvable(hand) == brute_force_solvable(hand), hand


@pytest.mark.parametrize(
    "hand, needs",
    [
        ((3, 3, 8, 8), "8/(3-8/3)"),
        ((1, 5, 5, 5), None),
        ((3, 3, 7, 7), None),
        ((1, 3, 4, 6), None),
        ((4, 4, 10, 10), None),
    ],
)
def test_hands_that_need_fractions_are_solved(hand, needs):
    solutions = solve(hand)
    assert solutions, hand
    if needs:
        assert needs in solutions
    for formula in solutions:
        parsed = parse_formula(formula)
        assert sorted(parsed.numbers) == sorted(hand)
        assert parsed.value() == 24


def test_every_solution_uses_each_number_once_and_hits_the_target():
    for hand, target in [((1, 2, 3, 4), 24), ((2, 7, 9, 13), 24), ((5, 6, 11, 12), 10), ((1, 1, 2, 13), 1)]:
        for formula in solve(hand, target):
            parsed = parse_formula(formula)
            assert sorted(parsed.numbers) == sorted(hand)
            assert parsed.value() == target


def test_reordered_or_regrouped_formulas_count_once():
    assert solve([1, 2, 3, 4]) == ["(1+2+3)*4", "(1+3)*(2+4)", "1*2*3*4", "2*3*4/1"]


def test_unsolvable_hands_and_other_sizes():
    assert solve([1, 1, 1, 1]) == []
    assert not is_solvable([1, 1, 1, 1])
    assert solve([24]) == ["24"]
    assert solve([23]) == []
    assert solve([]) == []
    assert is_solvable([6, 4], 24)
    assert solve([6, 4], 24) == ["4*6"]
    assert solve([3, 8], 24) == ["3*8"]
    assert is_solvable([1, 1, 1, 1, 24])
    assert not is_solvable([1, 1, 1, 1, 1])


def test_a_zero_over_zero_is_never_a_solution():
    # (1-1)/(2-2) is undefined; a partner lookup once accepted it as "0 / 0 == 24".
    assert not brute_force_solvable([1, 1, 2, 2])
    assert not is_solvable([1, 1, 2, 2])
    for formula in solve([3, 3, 5, 5], 0):
        assert parse_formula(formula).value() == 0
