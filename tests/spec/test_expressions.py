"""The expression language: arithmetic, conditionals and a few pure functions, parsed safely, never eval'd."""

import contextlib
import math
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers.helpers import make_divisible as timm_make_divisible

from rescompile.spec.expressions import FUNCTIONS, MAKE_DIVISIBLE_SOURCE, ExpressionError, parse_expression


@pytest.mark.parametrize(
    ("text", "bindings", "expected"),
    [
        ("width * 4", {"width": 64}, 256),
        ("width * base_width // 64 * groups", {"width": 128, "base_width": 4, "groups": 32}, 256),
        ("out_channels - in_channels", {"out_channels": 32, "in_channels": 16}, 16),
        ("stride if stride_at == 'conv1' else 1", {"stride": 2, "stride_at": "conv1"}, 2),
        ("stride if stride_at == 'conv1' else 1", {"stride": 2, "stride_at": "conv2"}, 1),
        ("-(3 % 2) + 7", {}, 6),
    ],
)
def test_evaluates_like_python(text: str, bindings: dict[str, int | str], expected: int) -> None:
    assert parse_expression(text).evaluate(bindings) == expected


def test_constants_parse_from_yaml_numbers() -> None:
    assert parse_expression(3).evaluate({}) == 3
    assert parse_expression(True).evaluate({}) is True


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("__import__('os').system('true')", "calls '__import__('os').system', which is not a function here"),
        ("width.real", "attribute access"),
        ("width ** 2", "'**'"),
        ("[1, 2][0]", "indexing"),
        ("lambda: 1", "a lambda"),
        ("1 < width < 3", "chained comparisons"),
        ("1j * width", "only number, string and boolean constants"),
        ("1e400", "a value is inf; spec arithmetic needs finite numbers"),
        ("width *", "cannot parse"),
    ],
)
def test_rejects_everything_outside_the_whitelist(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(fragment)):
        parse_expression(text)


def test_unknown_name_and_division_by_zero_are_errors() -> None:
    with pytest.raises(ExpressionError, match="unknown name 'depth'"):
        parse_expression("depth + 1").evaluate({})
    with pytest.raises(ExpressionError, match="division by zero"):
        parse_expression("width // 0").evaluate({"width": 2})


def test_names_lists_referenced_parameters() -> None:
    assert parse_expression("a * b if c == 'x' else d").names == {"a", "b", "c", "d"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1" + " + 1" * 100_000, "an expression has at most 1,000 characters; this one has 400,001"),
        ("-" * 33 + "1", f"'{'-' * 33}1' nests more than 32 operations deep; that is the limit"),
        ("(" * 300 + "1" + ")" * 300, "cannot parse expression"),  # Python's own parser limit, not a crash
        ("2199023255552", "a value exceeds 2**40 (1,099,511,627,776) in magnitude, the limit for spec arithmetic"),
    ],
)
def test_expressions_are_bounded_in_size_and_constants(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as raised:
        parse_expression(text)
    assert str(raised.value).startswith(message)


def test_every_intermediate_value_is_bounded() -> None:
    """Squaring twice from 2**20 would pass 2**80; the product past 2**40 is refused at once."""
    with pytest.raises(ExpressionError) as raised:
        parse_expression("a * a * a").evaluate({"a": 2**20})
    assert str(raised.value) == "a value exceeds 2**40 (1,099,511,627,776) in magnitude, the limit for spec arithmetic"
    assert parse_expression("a * a").evaluate({"a": 2**20}) == 2**40


def test_order_comparisons_need_integers() -> None:
    with pytest.raises(ExpressionError) as raised:
        parse_expression("mode < 3").evaluate({"mode": "wide"})
    assert str(raised.value) == "a comparison needs numbers, got 'wide'"
    assert parse_expression("mode == 3").evaluate({"mode": "wide"}) is False


@pytest.mark.parametrize(
    ("text", "bindings", "expected"),
    [
        ("width / 4", {"width": 6}, 1.5),
        ("rate * index / (count - 1)", {"rate": 0.1, "index": 3, "count": 16}, 0.1 * 3 / 15),
        ("0.25 * width", {"width": 6}, 1.5),
        ("width // 4.0", {"width": 6}, 1.0),
        ("1.5 < width", {"width": 2}, True),
        ("min(width, 3, 7)", {"width": 5}, 3),
        ("max(width, 3.5)", {"width": 2}, 3.5),
        ("abs(-width)", {"width": 5}, 5),
        ("int(-7 / 2)", {}, -3),  # truncation, as Python
        ("round(2.5) + round(3.5)", {}, 2 + 4),  # halves to even, as Python
        ("round(width / 3, ndigits=2)", {"width": 2}, 0.67),
        ("log2(width)", {"width": 64}, 6.0),
        ("make_divisible(width * 0.25, 8, round_limit=0.0)", {"width": 200}, 48),
        ("make_divisible(v=width, divisor=16)", {"width": 100}, 96),
    ],
)
def test_floats_and_functions_evaluate_like_python(text: str, bindings: dict[str, float], expected: object) -> None:
    value = parse_expression(text).evaluate(bindings)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("channels", [8, 16, 24, 64, 72, 96, 128, 256, 512, 1000, 1024, 2048])
def test_ecas_kernel_rule_is_timms(channels: int) -> None:
    """timm's EcaModule (gamma=2, beta=1): t = int(abs(log(channels, 2) + 1) / 2), odd, at least 3."""
    t = parse_expression("int(abs(log2(channels) + 1) / 2)").evaluate({"channels": channels})
    kernel = parse_expression("max(t if t % 2 else t + 1, 3)").evaluate({"t": t})
    timm_t = int(abs(math.log(channels, 2) + 1) / 2)
    assert kernel == max(timm_t if timm_t % 2 else timm_t + 1, 3)


@pytest.mark.parametrize("value", [1, 3.5, 7.9, 8, 12, 13.3, 16, 31.99, 48, 100, 127.5, 250, 1000.0, 2048])
@pytest.mark.parametrize(("divisor", "keywords"), [(8, ""), (16, ""), (8, ", round_limit=0.0"), (4, ", min_value=12")])
def test_make_divisible_is_timms(value: float, divisor: int, keywords: str) -> None:
    ours = parse_expression(f"make_divisible(v, {divisor}{keywords})").evaluate({"v": value})
    extra = {"round_limit": 0.0} if "round_limit" in keywords else {"min_value": 12} if "min_value" in keywords else {}
    expected = timm_make_divisible(value, divisor, **extra)
    assert ours == expected and type(ours) is type(expected)
    # The copy written into generated source is the same function.
    namespace: dict[str, object] = {}
    exec(MAKE_DIVISIBLE_SOURCE, namespace)  # our own source, as generated files hold it
    assert namespace["make_divisible"](value, divisor, **extra) == expected  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("floor(width)", "'floor(width)' calls 'floor', which is not a function here; the functions: abs(x), int(x),"),
        ("min(width)", "'min(width)': min() cannot take these arguments (missing a required argument: 'second')"),
        ("abs(x=width)", "'abs(x=width)': abs() cannot take these arguments ('x' parameter is positional only"),
        ("log2(width, 2)", "'log2(width, 2)': log2() cannot take these arguments (too many positional arguments)"),
        ("make_divisible(width, limit=1)", "'make_divisible(width, limit=1)': make_divisible() cannot take these"),
        ("max(*sizes)", "'max(*sizes)': pass max's arguments one by one, without * or **"),
    ],
)
def test_unknown_functions_and_wrong_arguments_are_refused_when_parsed(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as raised:
        parse_expression(text)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "bindings", "message"),
    [
        ("width / 0", {"width": 2}, "division by zero"),
        ("log2(width - 2)", {"width": 2}, "log2 needs a positive number, got 0"),
        ("min(width, mode)", {"width": 2, "mode": "wide"}, "min() needs numbers, got 'wide'"),
        ("width * 1e12", {"width": 2}, "a value exceeds 2**40"),
    ],
)
def test_float_and_function_errors(text: str, bindings: dict[str, object], message: str) -> None:
    with pytest.raises(ExpressionError) as raised:
        parse_expression(text).evaluate(bindings)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)


def test_called_functions_are_not_names() -> None:
    expression = parse_expression("make_divisible(width * 0.25, 8) + min(block_index, 2)")
    assert expression.names == {"width", "block_index"}
    assert expression.functions == {"make_divisible", "min"}


_ARGUMENTS = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(-(2.0**40), 2.0**40, allow_nan=False),
    st.sampled_from([-(2**40), -(10**8), -33, -32, 0, 32, 33, 10**8, 2**40]),
)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(FUNCTIONS)), arguments=st.lists(_ARGUMENTS, min_size=1, max_size=4))
def test_every_function_is_quick_for_any_arguments_in_range(name: str, arguments: list[float]) -> None:
    """A function's work may not grow with an argument's value (round(5, -10**8) computed
    10**(10**8)): any numbers within the spec's bounds give a value or an ExpressionError, quickly."""
    text = f"{name}({', '.join(repr(argument) for argument in arguments)})"
    started = time.process_time()
    with contextlib.suppress(ExpressionError):
        parse_expression(text).evaluate({})
    assert time.process_time() - started < 0.5, text


def test_round_refuses_ndigits_beyond_its_bound() -> None:
    assert parse_expression("round(123456, -32)").evaluate({}) == 0
    with pytest.raises(ExpressionError, match=re.escape("round's ndigits lies within ±32, got -100,000,000")):
        parse_expression("round(5, -100000000)").evaluate({})
