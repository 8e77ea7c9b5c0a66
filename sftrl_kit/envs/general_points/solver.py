"""Exact solver for the generalised 24 game, in rational arithmetic.

Every way of combining the numbers is a binary tree; we enumerate trees by splitting
the multiset of numbers into two non-empty parts, combining everything each part can
make. Values are `Fraction`s, so solutions that pass through non-integers
(8/(3-8/3) = 24) are found, unlike float search. Sub-multisets are memoised; the last
combination only looks up the partner value the target needs, so nothing the size of
"all values of four numbers" is ever cached.

Two formulas are the same solution when they differ only by reordering or regrouping
a chain of + and - or of * and /: (1+2+3)*4, (3+1+2)*4 and 4*(1+(2+3)) are one
solution. Each formula is kept in a canonical form (a sum of sorted signed terms, a
product of sorted factors over sorted divisors) and rendered with the fewest
parentheses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, lru_cache
from itertools import combinations


@dataclass(frozen=True)
class _Form:
    """Canonical formula: kind 'atom' (plus = (digits,)), 'sum' (plus - minus terms)
    or 'product' (plus factors / minus divisors); terms are sorted rendered texts."""

    kind: str
    plus: tuple[str, ...]
    minus: tuple[str, ...] = ()

    def text(self) -> str:
        if self.kind == "atom":
            return self.plus[0]
        if self.kind == "sum":
            return "+".join(self.plus) + "".join("-" + t for t in self.minus)
        return "*".join(self.plus) + "".join("/" + t for t in self.minus)


def is_solvable(numbers: Sequence[int], target: int = 24) -> bool:
    """Whether the numbers, each used once, can make the target with + - * / ( )."""
    key = tuple(sorted(numbers))
    if not key:
        return False
    if len(key) == 1:
        return Fraction(key[0]) == target
    goal = Fraction(target)
    for left, right in _splits(key):
        right_values = _values(right)
        for a in _values(left):
            if any(b in right_values for b in _partners(a, goal, right_values)):
                return True
    return False


def solve(numbers: Sequence[int], target: int = 24) -> list[str]:
    """All distinct formulas that use each number exactly once and equal the target.

    Returns them sorted (deterministic), or an empty list when there is none.
    """
    key = tuple(sorted(numbers))
    if not key:
        return []
    if len(key) == 1:
        return [str(key[0])] if key[0] == target else []
    goal = Fraction(target)
    found: set[str] = set()
    for left, right in _splits(key):
        right_forms = _forms(right)
        for a, left_set in _forms(left).items():
            for b in set(_partners(a, goal, right_forms)) & right_forms.keys():
                for op in _ops_reaching(a, b, goal):
                    found.update(_join(op, fa, fb).text() for fa in left_set for fb in right_forms[b])
    return sorted(found)


def _splits(key: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every ordered split of a sorted multiset into two non-empty sorted parts, once."""
    seen = set()
    indices = range(len(key))
    for size in range(1, len(key)):
        for chosen in combinations(indices, size):
            left = tuple(key[i] for i in chosen)
            right = tuple(key[i] for i in indices if i not in chosen)
            if (left, right) not in seen:
                seen.add((left, right))
                yield left, right


def _combine(a: Fraction, b: Fraction) -> Iterator[tuple[str, Fraction]]:
    yield "+", a + b
    yield "-", a - b
    yield "*", a * b
    if b != 0:
        yield "/", a / b


def _partners(a: Fraction, goal: Fraction, available) -> Iterator[Fraction]:
    """Candidate right operands b with (a op b) == goal for some op."""
    yield goal - a
    yield a - goal
    if a != 0:
        yield goal / a
    elif goal == 0:
        yield from available  # 0 * b == 0 for every b
    if goal != 0:
        if a != 0:
            yield a / goal  # a / b == goal needs a != 0 when goal != 0
    elif a == 0:
        yield from (b for b in available if b != 0)  # 0 / b == 0


def _ops_reaching(a: Fraction, b: Fraction, goal: Fraction) -> list[str]:
    return [op for op, value in _combine(a, b) if value == goal]


@cache
def _values(key: tuple[int, ...]) -> frozenset[Fraction]:
    if len(key) == 1:
        return frozenset({Fraction(key[0])})
    out: set[Fraction] = set()
    for left, right in _splits(key):
        for a in _values(left):
            for b in _values(right):
                out.update(value for _, value in _combine(a, b))
    return frozenset(out)


@lru_cache(maxsize=4096)
def _forms(key: tuple[int, ...]) -> dict[Fraction, frozenset[_Form]]:
    """value -> every canonical formula over the multiset with that value."""
    if len(key) == 1:
        return {Fraction(key[0]): frozenset({_Form("atom", (str(key[0]),))})}
    out: dict[Fraction, set[_Form]] = {}
    for left, right in _splits(key):
        right_forms = _forms(right)
        for a, left_set in _forms(left).items():
            for b, right_set in right_forms.items():
                for op, value in _combine(a, b):
                    out.setdefault(value, set()).update(_join(op, fa, fb) for fa in left_set for fb in right_set)
    return {value: frozenset(forms) for value, forms in out.items()}


def _join(op: str, a: _Form, b: _Form) -> _Form:
    """The canonical form of (a op b), flattening chains of the same precedence."""
    kind = "sum" if op in "+-" else "product"
    a_plus, a_minus = _as_chain(a, kind)
    b_plus, b_minus = _as_chain(b, kind)
    if op in "+*":
        plus, minus = a_plus + b_plus, a_minus + b_minus
    else:
        plus, minus = a_plus + b_minus, a_minus + b_plus
    return _Form(kind, tuple(sorted(plus)), tuple(sorted(minus)))


def _as_chain(form: _Form, kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A formula's (plus, minus) terms inside a chain of `kind`."""
    if form.kind == kind:
        return form.plus, form.minus
    needs_parens = kind == "product" and form.kind == "sum"
    return (f"({form.text()})" if needs_parens else form.text(),), ()
