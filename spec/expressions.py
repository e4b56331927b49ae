"""A tiny, safe expression language for block parameters: ``width * expansion``.

Expressions are parsed with :mod:`ast` and only a small whitelist of node types is accepted
(integer and float arithmetic, comparisons, ``a if cond else b``, calls of the pure functions in
:data:`FUNCTIONS`), then walked by hand. Nothing is ever passed to ``eval``. The accepted language
is a subset of Python, so the torch and flax backends can emit an expression verbatim into
generated source (``log2`` as ``math.log2``, ``make_divisible`` defined in the generated file).
"""

from __future__ import annotations

import ast
import inspect
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

Value = int | float | str | bool
Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
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


def make_divisible(v: float, divisor: float = 8, min_value: float | None = None, round_limit: float = 0.9) -> float:
    """timm's ``make_divisible`` (timm/layers/helpers.py), line for line: ``v`` rounded to the
    nearest multiple of ``divisor``, at least ``min_value`` (default: ``divisor``), and moved up
    one multiple where rounding lost more than ``1 - round_limit`` of ``v``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


MAKE_DIVISIBLE_SOURCE = inspect.getsource(make_divisible).strip()
"""Written into generated torch and Flax files that call it: they compute what the compiler did."""


def _min(first: Number, second: Number, /, *more: Number) -> Number:
    return min(first, second, *more)


def _max(first: Number, second: Number, /, *more: Number) -> Number:
    return max(first, second, *more)


def _abs(x: Number, /) -> Number:
    return abs(x)


def _int(x: Number, /) -> int:
    return int(x)  # truncation toward zero, as Python's int()


def _round(number: Number, ndigits: int | None = None) -> Number:
    # Python's round(5, -10**8) computes 10**(10**8): its time grows with ndigits. Values are at
    # most 2**40 (13 digits), so a wider ndigits changes nothing a spec could mean.
    if ndigits is not None and isinstance(ndigits, int) and not -MAX_NDIGITS <= ndigits <= MAX_NDIGITS:
        raise ExpressionError(f"round's ndigits lies within ±{MAX_NDIGITS}, got {ndigits:,}")
    return round(number, ndigits)  # Python's: halves to even, an int without ndigits


def _log2(x: Number, /) -> float:
    if x <= 0:
        raise ExpressionError(f"log2 needs a positive number, got {x!r}")
    return math.log2(x)


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "abs": _abs,
    "int": _int,
    "log2": _log2,
    "make_divisible": make_divisible,
    "max": _max,
    "min": _min,
    "round": _round,
}
"""The pure functions an expression may call, by name; each takes arguments as its Python
namesake does (positional-only where Python's builtin is)."""
FUNCTION_LIST = (
    "abs(x), int(x), log2(x), make_divisible(v, divisor=8, min_value=None, round_limit=0.9), "
    "max(a, b, ...), min(a, b, ...), round(number, ndigits=None)"
)
ALLOWED_SYNTAX = (
    "numbers, parameter names, + - * / // %, comparisons, 'a if condition else b' and the functions "
    + ", ".join(FUNCTIONS)
)
# Bounds on an expression's size and on every number it computes: Python's parser recurses (a
# long chain is a RecursionError or MemoryError there), and squaring in a chain of derived values
# (a = width * width, b = a * a, ...) doubles the digits each time.
MAX_LENGTH = 1_000
MAX_DEPTH = 32
MAX_MAGNITUDE = 2**40
MAX_NDIGITS = 32
"""The widest ``ndigits`` of ``round``: every function's work is bounded by its arguments' bounds."""


_SYNTAX_NAMES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Lambda: "a lambda",
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

    @cached_property  # read at every evaluation while unrolling: walking the tree each time was most of it
    def names(self) -> frozenset[str]:
        """The parameters and derived values it reads (not the functions it calls)."""
        called = {id(node.func) for node in ast.walk(self.tree) if isinstance(node, ast.Call)}
        return frozenset(
            node.id for node in ast.walk(self.tree) if isinstance(node, ast.Name) and id(node) not in called
        )

    @cached_property
    def functions(self) -> frozenset[str]:
        """The functions of :data:`FUNCTIONS` it calls."""
        return frozenset(
            node.func.id
            for node in ast.walk(self.tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        )

    def evaluate(self, bindings: Mapping[str, Value]) -> Value:
        return _evaluate(self.tree, bindings)


def parse_expression(value: Value) -> Expression:
    """Parse a YAML value (a number, a boolean or an expression string) into an :class:`Expression`."""
    if isinstance(value, bool | int | float):
        if not isinstance(value, bool):
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
        ast.Call,
        ast.keyword,
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
    if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | str | bool):
        raise ExpressionError(f"'{text}': only number, string and boolean constants are allowed")
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        _bounded(node.value)
    if isinstance(node, ast.Call):
        _check_call(node, text)


def _check_call(node: ast.Call, text: str) -> None:
    """A call names a function of :data:`FUNCTIONS` and passes it arguments it accepts."""
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        raise ExpressionError(
            f"'{text}' calls '{called}', which is not a function here; the functions: {FUNCTION_LIST}"
        )
    function = FUNCTIONS[node.func.id]
    if any(isinstance(argument, ast.Starred) for argument in node.args) or any(
        keyword.arg is None for keyword in node.keywords
    ):
        raise ExpressionError(f"'{text}': pass {node.func.id}'s arguments one by one, without * or **")
    try:
        inspect.signature(function).bind(
            *node.args, **{keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}
        )
    except TypeError as error:
        raise ExpressionError(
            f"'{text}': {node.func.id}() cannot take these arguments ({error}); the functions: {FUNCTION_LIST}"
        ) from None


def _evaluate(node: ast.expr, bindings: Mapping[str, Value]) -> Value:
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, int | float | str | bool):
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
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
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
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        name = node.func.id
        arguments = [_number(_evaluate(argument, bindings), f"{name}()") for argument in node.args]
        keywords = {
            keyword.arg: _number(_evaluate(keyword.value, bindings), f"{name}()")
            for keyword in node.keywords
            if keyword.arg is not None
        }
        try:
            return _bounded(FUNCTIONS[name](*arguments, **keywords))
        except (ArithmeticError, TypeError) as error:
            raise ExpressionError(f"{name}(): {error}") from None
    raise ExpressionError(f"unsupported expression node {type(node).__name__}")


def _number(value: Value, what: str = "arithmetic") -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExpressionError(f"{what} needs numbers, got {value!r}")
    return value


def _bounded(value: Number) -> Number:
    """Every number an expression computes is finite and at most 2**40 in magnitude."""
    if not math.isfinite(value):
        raise ExpressionError(f"a value is {value}; spec arithmetic needs finite numbers")
    if abs(value) > MAX_MAGNITUDE:
        raise ExpressionError(f"a value exceeds 2**40 ({MAX_MAGNITUDE:,}) in magnitude, the limit for spec arithmetic")
    return value
