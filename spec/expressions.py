"""A tiny, safe expression language for block parameters: ``width * expansion``.

Expressions are parsed with :mod:`ast` and only a small whitelist of node types is accepted
(integer arithmetic, comparisons, ``a if cond else b``), then walked by hand. Nothing is ever
passed to ``eval``. The accepted language is a subset of Python, so the torch and flax backends
can emit an expression verbatim into generated source.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Value = int | float | str | bool

_BINARY: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Value, Value], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
ALLOWED_SYNTAX = "integers, parameter names, + - * // %, comparisons and 'a if condition else b'"
# Bounds on an expression's size and on every integer it computes: Python's parser recurses (a
# long chain is a RecursionError or MemoryError there), and squaring in a chain of derived values
# (a = width * width, b = a * a, ...) doubles the digits each time.
MAX_LENGTH = 1_000
MAX_DEPTH = 32
MAX_MAGNITUDE = 2**40


_SYNTAX_NAMES: dict[type[ast.AST], str] = {
    ast.Call: "a function call",
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Lambda: "a lambda",
    ast.Div: "true division '/' (use '//')",
    ast.Pow: "'**'",
    ast.BoolOp: "'and'/'or'",
    ast.List: "a list",
    ast.Tuple: "a tuple",
}


class ExpressionError(ValueError):
    """An expression that does not parse or names something unknown; the caller adds a location."""


@dataclass(frozen=True)
class Expression:
    """A parsed expression; ``text`` is normalised Python source for it."""

    text: str
    tree: ast.expr = field(compare=False, repr=False)  # equal texts parse to equal trees

    @property
    def names(self) -> frozenset[str]:
        return frozenset(node.id for node in ast.walk(self.tree) if isinstance(node, ast.Name))

    def evaluate(self, bindings: Mapping[str, Value]) -> Value:
        return _evaluate(self.tree, bindings)


def parse_expression(value: Value) -> Expression:
    """Parse a YAML value (a number, a boolean or an expression string) into an :class:`Expression`."""
    if isinstance(value, bool | int | float):
        if isinstance(value, int):
            _bounded(value)
        return Expression(repr(value), ast.Constant(value))
    if len(value) > MAX_LENGTH:
        raise ExpressionError(f"an expression has at most {MAX_LENGTH:,} characters; this one has {len(value):,}")
    try:
        tree = ast.parse(value.strip(), mode="eval").body
    except (SyntaxError, RecursionError, MemoryError):
        raise ExpressionError(f"cannot parse expression '{value}'; use {ALLOWED_SYNTAX}") from None
    for node in ast.walk(tree):
        _check_syntax(node, value)
    if _depth(tree) > MAX_DEPTH:
        raise ExpressionError(f"'{value}' nests more than {MAX_DEPTH} operations deep; that is the limit")
    return Expression(ast.unparse(tree), tree)


def _depth(tree: ast.AST) -> int:
    """The depth of ``tree``'s deepest node, found without recursion."""
    deepest = 0
    pending = [(tree, 1)]
    while pending:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _check_syntax(node: ast.AST, text: str) -> None:
    allowed = (
        ast.BinOp,
        ast.UnaryOp,
        ast.Compare,
        ast.IfExp,
        ast.Name,
        ast.Constant,
        ast.Load,
        ast.USub,
        *_BINARY,
        *_COMPARE,
    )
    if not isinstance(node, allowed):
        what = _SYNTAX_NAMES.get(type(node), f"'{type(node).__name__}'")
        raise ExpressionError(f"'{text}' uses {what}, which is not allowed; use {ALLOWED_SYNTAX}")
    if isinstance(node, ast.Compare) and len(node.ops) != 1:
        raise ExpressionError(f"'{text}': chained comparisons are not allowed; compare two values at a time")
    if isinstance(node, ast.Constant) and not isinstance(node.value, int | str | bool):
        raise ExpressionError(f"'{text}': only integer, string and boolean constants are allowed")
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        _bounded(node.value)


def _evaluate(node: ast.expr, bindings: Mapping[str, Value]) -> Value:
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, int | str | bool):
            raise ExpressionError(f"unsupported constant {node.value!r}")
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in bindings:
            raise ExpressionError(f"unknown name '{node.id}'")
        return bindings[node.id]
    if isinstance(node, ast.UnaryOp):
        return _bounded(-_number(_evaluate(node.operand, bindings)))
    if isinstance(node, ast.BinOp):
        left = _number(_evaluate(node.left, bindings))
        right = _number(_evaluate(node.right, bindings))
        if isinstance(node.op, ast.FloorDiv | ast.Mod) and right == 0:
            raise ExpressionError("division by zero")
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Compare):
        left_value = _evaluate(node.left, bindings)
        right_value = _evaluate(node.comparators[0], bindings)
        if not isinstance(node.ops[0], ast.Eq | ast.NotEq):
            left_value, right_value = _number(left_value, "a comparison"), _number(right_value, "a comparison")
        return _COMPARE[type(node.ops[0])](left_value, right_value)
    if isinstance(node, ast.IfExp):
        branch = node.body if _evaluate(node.test, bindings) else node.orelse
        return _evaluate(branch, bindings)
    raise ExpressionError(f"unsupported expression node {type(node).__name__}")


def _number(value: Value, what: str = "arithmetic") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExpressionError(f"{what} needs integers, got {value!r}")
    return value


def _bounded(value: int) -> int:
    if abs(value) > MAX_MAGNITUDE:
        raise ExpressionError(f"a value exceeds 2**40 ({MAX_MAGNITUDE:,}) in magnitude, the limit for spec arithmetic")
    return value
