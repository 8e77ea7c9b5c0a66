"""Safe, exact parsing of a model's arithmetic formula.

Grammar (whitespace allowed anywhere between tokens):

    equation := expr ['=' integer]
    expr     := term (('+' | '-') term)*
    term     := factor (('*' | '/') factor)*
    factor   := integer | '(' expr ')'

Integers are ASCII digits; there is no unary minus, no power, no name, nothing else. The text is
length-checked before it is read and nesting depth is capped, so any string gets an
answer (a `Formula` or a `FormulaError`) in bounded time. Evaluation uses `Fraction`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_FORMULA_CHARS = 200
MAX_DEPTH = 32
MAX_DIGITS = 6

_TOKEN = re.compile(r"\s*(?:([0-9]+)|(.))", re.DOTALL)
_OPERATOR_ALIASES = {"×": "*", "÷": "/", "−": "-"}


class FormulaError(ValueError):
    """The text is not a legal formula; the message says why, for the model to read."""


Node = int | tuple  # an int leaf, or (op, left, right)


@dataclass(frozen=True)
class Formula:
    tree: Node
    numbers: tuple[int, ...]
    claimed_result: int | None  # the integer after '=', when the formula has one

    def value(self) -> Fraction:
        """Exact value of the left side; raises FormulaError on division by zero."""
        return _evaluate(self.tree)


def parse_formula(text: str) -> Formula:
    if not isinstance(text, str):
        raise FormulaError(f"the formula must be a string, got {type(text).__name__}")
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"the formula is longer than {MAX_FORMULA_CHARS} characters")
    tokens = _tokenize(text)
    if not tokens:
        raise FormulaError("the formula is empty")
    parser = _Parser(tokens)
    tree = parser.expression(depth=0)
    claimed = parser.claimed_result()
    return Formula(tree=tree, numbers=tuple(_leaves(tree)), claimed_result=claimed)


def _tokenize(text: str) -> list[str]:
    tokens = []
    for match in _TOKEN.finditer(text):
        number, symbol = match.groups()
        if number is not None:
            if len(number) > MAX_DIGITS:
                raise FormulaError(f"the number {number[:12]}... is too long to be a card")
            tokens.append(number)
        elif symbol is not None and not symbol.isspace():
            symbol = _OPERATOR_ALIASES.get(symbol, symbol)
            if symbol not in "+-*/()=":
                raise FormulaError(f"the formula contains {symbol!r}; only digits, + - * / ( ) and '=' are allowed")
            tokens.append(symbol)
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def expression(self, depth: int) -> Node:
        node = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            node = (op, node, self.term(depth))
        return node

    def term(self, depth: int) -> Node:
        node = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            node = (op, node, self.factor(depth))
        return node

    def factor(self, depth: int) -> Node:
        token = self.peek()
        if token is None:
            raise FormulaError("the formula ends where a number was expected")
        if token == "(":
            if depth >= MAX_DEPTH:
                raise FormulaError(f"parentheses are nested more than {MAX_DEPTH} deep")
            self.take()
            node = self.expression(depth + 1)
            if self.peek() != ")":
                raise FormulaError("a '(' is never closed")
            self.take()
            return node
        if token.isdigit():
            return int(self.take())
        if token == "-":
            raise FormulaError("negative numbers (unary minus) are not allowed")
        raise FormulaError(f"expected a number or '(' but found {token!r}")

    def claimed_result(self) -> int | None:
        token = self.peek()
        if token is None:
            return None
        if token == ")":
            raise FormulaError("a ')' has no matching '('")
        if token != "=":
            raise FormulaError(f"unexpected {token!r} after a complete expression")
        self.take()
        rest = self.tokens[self.position :]
        if len(rest) != 1 or not rest[0].isdigit():
            raise FormulaError("after '=' there must be a single whole number, the target")
        return int(rest[0])


def _leaves(node: Node):
    if isinstance(node, int):
        yield node
    else:
        yield from _leaves(node[1])
        yield from _leaves(node[2])


def _evaluate(node: Node) -> Fraction:
    if isinstance(node, int):
        return Fraction(node)
    op, left, right = node
    a, b = _evaluate(left), _evaluate(right)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise FormulaError("the formula divides by zero")
    return a / b
