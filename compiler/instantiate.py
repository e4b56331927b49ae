"""Instances from definitions: a module's nodes made from its part's :class:`~rescompile.compiler.ir.Definition`.

A definition states each node's op over its part's parameters, as the spec states it (expressions)
plus what the op derives from its input (a conv's ``in_channels``). An instance evaluates the
stated expressions under its parameters (:class:`Bindings`), builds each op with the op table's
:meth:`~rescompile.compiler.ops.OpBase.from_attributes` and computes its shape with
``output_shape``: this is where a graph's shapes are computed. Errors are located in the part's file,
or at the network's line that set a value the failing expression reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from rescompile.compiler.ir import MODULE_INPUT, Node, SymbolicNode
from rescompile.compiler.ops import SHORTCUT_VALUE, Add, Interval, Op, Shape, ShapeError, ShrinkError, show_shape
from rescompile.spec.errors import Location, RescompileError
from rescompile.spec.expressions import Expression, ExpressionError, Value
from rescompile.spec.loader import Loaded, is_builtin
from rescompile.spec.models import BlockSpec, PartSpec, real_problem
from rescompile.spec.yaml_source import YamlPath


class Bindings(dict[str, Value]):
    """A part's parameter values, remembering where the network set the ones it set: an error in
    an expression over them is located at the user's line, not inside a (built-in) part file."""

    def __init__(
        self,
        values: Mapping[str, Value],
        origins: Mapping[str, Location] | None = None,
        size_origin: Location | None = None,
    ) -> None:
        super().__init__(values)
        self.origins: dict[str, Location] = dict(origins or {})
        self.size_origin = size_origin
        """Where the network sets its input size: a feature map that shrinks away is located there."""

    def origin(self, expression: Expression) -> Location | None:
        return next((self.origins[name] for name in sorted(expression.names) if name in self.origins), None)


def located(message: str, part: Loaded[PartSpec], path: YamlPath, origin: Location | None) -> RescompileError:
    """An error in a part's expression: at the network's line that set a value it reads, where
    there is one (naming where the expression is), else at the expression."""
    at = part.source.locate(path)
    return RescompileError(message, at) if origin is None else RescompileError(f"{message} (computed at {at})", origin)


def _evaluate(
    expression: Expression, bindings: Bindings, part: Loaded[PartSpec], path: tuple[str, ...], where: str
) -> tuple[Value, Location | None]:
    """The expression's value, and the network's location of a value it reads (for messages); an
    expression that cannot be evaluated is a located error."""
    origin = bindings.origin(expression)
    try:
        return expression.evaluate(bindings), origin
    except ExpressionError as error:
        raise located(f"{where}: {'.'.join(path)} = {expression.text}: {error}", part, path, origin) from None


def evaluate_int(
    expression: Expression,
    bindings: Bindings,
    part: Loaded[PartSpec],
    path: tuple[str, ...],
    where: str,
    minimum: int,
    maximum: int | None = None,
) -> int:
    value, origin = _evaluate(expression, bindings, part, path, where)
    if isinstance(value, float):
        message = (
            f"{where}: {'.'.join(path)} = {expression.text} gives {value!r}, a float; it must be an integer "
            "(use //, int() or round())"
        )
        raise located(message, part, path, origin)
    if isinstance(value, bool) or not isinstance(value, int):
        message = f"{where}: {'.'.join(path)} = {expression.text} gives {value!r}; expected an integer"
        raise located(message, part, path, origin)
    if value < minimum:
        message = f"{where}: {'.'.join(path)} = {expression.text} gives {value}; it must be at least {minimum}"
        raise located(message, part, path, origin)
    if maximum is not None and value > maximum:
        message = f"{where}: {'.'.join(path)} = {expression.text} gives {value:,}; it must be at most {maximum:,}"
        raise located(message, part, path, origin)
    return value


def _evaluate_real(
    expression: Expression,
    bindings: Bindings,
    part: Loaded[PartSpec],
    path: tuple[str, ...],
    where: str,
    bounds: Interval,
) -> float:
    """A real-valued attribute (a rate, an epsilon): a number in ``bounds``, finite in float32."""
    value, origin = _evaluate(expression, bindings, part, path, where)
    problem = real_problem(value, bounds)
    if problem is not None:
        message = f"{where}: {'.'.join(path)} = {expression.text} gives {value!r}; {problem}"
        raise located(message, part, path, origin)
    assert isinstance(value, int | float)
    return float(value)


def instantiate(
    definition_nodes: Sequence[SymbolicNode],
    part: Loaded[PartSpec],
    bindings: Bindings,
    shapes: dict[str, Shape],
    label: str,
    location: Location,
    build_shortcut: Callable[[dict[str, Shape]], list[Node]] | None = None,
    declared_channels: int | None = None,
    prefix: str = "",
    input_value: str = MODULE_INPUT,
    aliases: Mapping[str, str] | None = None,
) -> list[Node]:
    """An instance's nodes, from its definition's (of ``part``, which locates errors) in order: each
    op evaluated under ``bindings`` (:func:`_instance_op`), its shape computed, its name under
    ``prefix``; ``input`` reads ``input_value``, and a value of ``aliases`` the value it names
    (``blocks``: the input of the half of a transition after its blocks). A block's shortcut nodes
    (``build_shortcut``) come right before its residual add."""
    nodes: list[Node] = []
    renamed: dict[str, str] = {MODULE_INPUT: input_value, **(aliases or {})}
    for node in definition_nodes:
        if SHORTCUT_VALUE in node.inputs and build_shortcut is not None:
            shortcut_nodes = build_shortcut(shapes)
            nodes += shortcut_nodes
            renamed[SHORTCUT_VALUE] = shortcut_nodes[-1].name if shortcut_nodes else MODULE_INPUT
        inputs = tuple(renamed.get(value, prefix + value) for value in node.inputs)
        in_shapes = tuple(shapes[value] for value in inputs)
        op = _instance_op(node, bindings, in_shapes, part, label)
        if isinstance(op, Add) and op.shortcut_input is not None and in_shapes[0] != in_shapes[1]:
            branch, shortcut = in_shapes[1 - op.shortcut_input], in_shapes[op.shortcut_input]
            raise _merge_error(part, node.name, branch, shortcut, declared_channels, label, location)
        try:
            shape = op.output_shape(in_shapes)
        except ShapeError as error:
            # At the node, as from_attributes's errors are (a group_norm on a flat value in a head
            # pointed at the network's head: line, a layer_norm's at the node).
            raise _node_error(f"{label}: {node.name}: {error}", part, node, bindings, error) from None
        full_name = prefix + node.name
        shapes[full_name] = shape
        nodes.append(Node(full_name, op, inputs, in_shapes, shape, node.source))
    if not nodes:
        raise RescompileError(f"{label}: part '{part.spec.name}' has no nodes left", part.locate("nodes"))
    return nodes


def _merge_error(
    part: Loaded[PartSpec],
    name: str,
    branch: Shape,
    shortcut: Shape,
    declared_channels: int | None,
    label: str,
    location: Location,
) -> RescompileError:
    """Explain a residual add whose inputs differ: the block's own declaration, or the shortcut."""
    if isinstance(part.spec, BlockSpec) and declared_channels is not None and branch[0] != declared_channels:
        return RescompileError(
            f"{label}: block '{part.spec.name}' declares out_channels = {part.spec.out_channels.text} "
            f"= {declared_channels}, but its branch reaching '{name}' produces {branch[0]} channels",
            part.locate("out_channels"),
        )
    return RescompileError(
        f"{label}: the residual add '{name}' needs the branch ({show_shape(branch)}) and the shortcut "
        f"({show_shape(shortcut)}) to have one shape; use a shortcut policy that projects or pads where shapes "
        "change (B, A or C), not the identity",
        location,
    )


def _stated(node: SymbolicNode) -> dict[str, object]:
    """The values its spec states for a definition's node, expressions unevaluated (none for an op
    without integer fields, which is its own symbolic form)."""
    return {} if isinstance(node.op, Op) else node.op_type.stated(node.op)


def _instance_op(
    node: SymbolicNode, bindings: Bindings, in_shapes: tuple[Shape, ...], part: Loaded[PartSpec], label: str
) -> Op:
    """The op of a definition's node in an instance: the expressions its spec states evaluated to
    integers (at least 1 unless the op states a smaller minimum) or reals, then
    :meth:`~rescompile.compiler.ops.OpBase.from_attributes`. An op without integer fields is the
    same in every instance."""
    if isinstance(node.op, Op):
        return node.op
    op_type = node.op_type
    attributes: dict[str, object] = {}
    for field, value in _stated(node).items():
        path = ("nodes", node.name, field)
        if isinstance(value, Expression) and field in op_type.real_ranges:
            value = _evaluate_real(value, bindings, part, path, label, op_type.real_ranges[field])
        elif isinstance(value, Expression):
            minimum, maximum = op_type.minimums.get(field, 1), op_type.maximums.get(field)
            value = evaluate_int(value, bindings, part, path, label, minimum, maximum)
        attributes[field] = value
    try:
        return op_type.from_attributes(attributes, in_shapes)
    except ShapeError as error:
        raise _node_error(f"{label}: {node.name}: {error}", part, node, bindings, error) from None


def _node_error(
    message: str, part: Loaded[PartSpec], node: SymbolicNode, bindings: Bindings, error: ShapeError
) -> RescompileError:
    """A node's shape error, at the node; in a built-in part, at the user's line that caused it
    where there is one (the input size for a feature map that shrinks away, else a parameter value
    the node reads), naming the node in the built-in file."""
    at = part.locate("nodes", node.name)
    if not is_builtin(at):
        return RescompileError(message, at)
    read = [bindings.origin(value) for value in _stated(node).values() if isinstance(value, Expression)]
    candidates = [bindings.size_origin] if isinstance(error, ShrinkError) else []
    origin = next((where for where in [*candidates, *read] if where is not None and not is_builtin(where)), None)
    if origin is None:
        return RescompileError(message, at)
    kind = type(part.spec).__name__.removesuffix("Spec").lower()
    return RescompileError(f"{message} (in built-in {kind} '{part.spec.name}', {at})", origin)


__all__ = ["Bindings", "evaluate_int", "instantiate", "located"]
