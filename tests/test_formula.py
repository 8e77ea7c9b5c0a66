from fractions import Fraction

import pytest

from sftrl_kit.envs.general_points.formula import MAX_FORMULA_CHARS, FormulaError, parse_formula


@pytest.mark.parametrize(
    "text, numbers, value, claimed",
    [
        ("(8-2)*4", (8, 2, 4), 24, None),
        (" ( 8 - 2 ) * 4 = 24 ", (8, 2, 4), 24, 24),
        ("8/(3-8/3)", (8, 3, 8, 3), 24, None),
        ("2*3+4*5", (2, 3, 4, 5), 26, None),
        ("10-4-3", (10, 4, 3), 3, None),
        ("12/3/2", (12, 3, 2), 2, None),
        ("7 × 3 ÷ 7", (7, 3, 7), 3, None),
        ("1+2=25", (1, 2), 3, 25),
        ("((((5))))", (5,), 5, None),
    ],
)
def test_legal_formulas_parse_exactly(text, numbers, value, claimed):
    formula = parse_formula(text)
    assert formula.numbers == numbers
    assert formula.value() == Fraction(value)
    assert formula.claimed_result == claimed


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-3+27", "unary minus"),
        ("9**9**9**9", "expected a number"),
        ("2^5", "'^'"),
        ("3 x 8", "'x'"),
        ("(3+5", "never closed"),
        ("3+5)", "no matching"),
        ("3 4", "unexpected '4'"),
        ("3+", "ends where a number"),
        ("3*8=2*12", "single whole number"),
        ("24=3*8", "single whole number"),
        ("1=2=3", "single whole number"),
        ("٣+٥", "'٣'"),  # Arabic-Indic digits are not ASCII digits
        ("9" * 40, "too long to be a card"),
        ("1+" * 150 + "1", f"longer than {MAX_FORMULA_CHARS}"),
        ("(" * 50 + "1" + ")" * 50, "nested more than"),
        ("__import__('os')", "'_'"),
    ],
)
def test_illegal_formulas_raise_a_readable_error(text, reason):
    with pytest.raises(FormulaError, match=None) as caught:
        parse_formula(text)
    assert reason in str(caught.value)


def test_division_by_zero_is_an_error_at_evaluation():
    formula = parse_formula("8/(3-3)+24")
    with pytest.raises(FormulaError, match="divides by zero"):
        formula.value()


def test_non_string_formula_is_rejected():
    with pytest.raises(FormulaError, match="must be a string"):
        parse_formula(24)  # type: ignore[arg-type]
