"""The expression language: integer arithmetic and conditionals, parsed safely, never eval'd."""

import pytest

from rescompile.spec.expressions import ExpressionError, parse_expression


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
        ("__import__('os').system('true')", "a function call"),
        ("width.real", "attribute access"),
        ("width / 2", "true division"),
        ("width ** 2", "'**'"),
        ("[1, 2][0]", "indexing"),
        ("lambda: 1", "a lambda"),
        ("1 < width < 3", "chained comparisons"),
        ("1.5 * width", "only integer, string and boolean constants"),
        ("width *", "cannot parse"),
    ],
)
def test_rejects_everything_outside_the_whitelist(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError, match=fragment.replace("*", r"\*").replace("(", r"\(")):
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
    assert str(raised.value) == "a comparison needs integers, got 'wide'"
    assert parse_expression("mode == 3").evaluate({"mode": "wide"}) is False
