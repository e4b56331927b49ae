"""Architecture pictures as SVG, written by hand (no dependency): ``rescompile draw SPEC -o net.svg``.

The network figure stacks input, stem, each stage (block type × repeat count, width, stride, output
shape, parameters and MACs) and head, in the manner of the paper's Table 1. ``--block NAME`` draws a
block's op graph instead, as the paper's Figures 2 and 5: the residual path down the middle, the
shortcut (with its kind) as a curve on the right into the addition, any other value read out of
order (a squeeze-and-excitation gate) as a curve on the left. Output is deterministic: the same
spec gives the same bytes, so a committed picture can be checked for staleness.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from xml.sax.saxutils import escape

from rescompile.compiler.cost import cost
from rescompile.compiler.ir import Add, Graph, Module
from rescompile.spec.errors import RescompileError

WIDTH = 520
BOX_WIDTH = 380
LINE_HEIGHT = 17
GAP = 22
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"
_PEN = "stroke='#444' stroke-width='1.5'"
COLOURS = {"input": "#eeeeee", "stem": "#dbe9f6", "stage": "#fde9c8", "head": "#dff0d8", "op": "#f4f4f4"}


@dataclass(frozen=True)
class Box:
    lines: tuple[str, ...]
    """The first line is the title (bold)."""
    colour: str


def _shape(shape: tuple[int, ...] | None) -> str:
    return "×".join(map(str, shape)) if shape else "?"


def _count(value: int) -> str:
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value:,}"


def network_boxes(graph: Graph) -> list[Box]:
    """Input, stem, one box per stage, head: what the network figure stacks."""
    totals = {row.name: row for row in cost(graph).group_by("stage")}
    boxes = [Box((f"input {_shape(graph.input_shape)}",), COLOURS["input"])]
    stem, head = graph.modules[0], graph.modules[-1]
    boxes.append(_part_box("stem", stem, totals["stem"].parameters, totals["stem"].macs, COLOURS["stem"]))
    stages: dict[str, list[Module]] = {}
    for module in graph.blocks:
        stages.setdefault(module.stage, []).append(module)
    for stage, blocks in stages.items():
        first = blocks[0]
        types = Counter(block.type_name for block in blocks)
        kinds = " + ".join(f"{name} × {count}" for name, count in types.items())
        row = totals[stage]
        boxes.append(
            Box(
                (
                    f"{stage}: {kinds}",
                    f"width {first.parameter('width')}, stride {first.parameter('stride')}, "
                    f"shortcut {first.shortcut or 'none'}",
                    f"output {_shape(row.output_shape)}",
                    f"{_count(row.parameters)} parameters, {row.macs / 1e9:.3f} GMACs",
                ),
                COLOURS["stage"],
            )
        )
    boxes.append(_part_box("head", head, totals["head"].parameters, totals["head"].macs, COLOURS["head"]))
    return boxes


def _part_box(role: str, module: Module, parameters: int, macs: int, colour: str) -> Box:
    return Box(
        (
            f"{role}: {module.type_name}",
            f"output {_shape(module.out_shape)}",
            f"{_count(parameters)} parameters, {macs / 1e9:.3f} GMACs",
        ),
        colour,
    )


def draw_network(graph: Graph) -> str:
    """The network figure as SVG text."""
    report = cost(graph)
    title = f"{graph.name}: {report.parameters:,} parameters, {report.macs / 1e9:.3f} GMACs"
    return _column(title, network_boxes(graph))


def draw_block(graph: Graph, block: str) -> str:
    """The op graph of the block type ``block`` as SVG text, drawn from its first instance with a
    shortcut that has layers (else its first): the residual path in a column, the shortcut (its kind
    and layers) as a red curve from the value it reads into the addition."""
    instances = [module for module in graph.blocks if module.type_name == block]
    if not instances:
        used = sorted({module.type_name for module in graph.blocks})
        raise RescompileError(f"--block {block}: {graph.name} has no block of that type; it has {', '.join(used)}")
    module = next((m for m in instances if m.shortcut not in (None, "identity")), instances[0])
    prefix = f"{module.shortcut_module}." if module.shortcut_module else None
    shortcut_nodes = [node for node in module.nodes if prefix is not None and node.name.startswith(prefix)]
    residual = [node for node in module.nodes if node not in shortcut_nodes]
    positions = {"input": 0, **{node.name: index + 1 for index, node in enumerate(residual)}}
    shortcut_source = positions[shortcut_nodes[0].inputs[0]] if shortcut_nodes else 0
    boxes = [Box((f"input {_shape(module.in_shape)}",), COLOURS["input"])]
    edges: list[Edge] = []
    for index, node in enumerate(residual):
        target = index + 1
        boxes.append(Box((f"{node.name}: {node.op.kind}", _shape(node.shape)), COLOURS["op"]))
        for position, value in enumerate(node.inputs):
            is_shortcut = bool(shortcut_nodes) and value == shortcut_nodes[-1].name
            is_shortcut |= isinstance(node.op, Add) and node.op.shortcut_input == position and not shortcut_nodes
            if is_shortcut:
                edges.append(Edge(shortcut_source, target, "shortcut"))
            else:
                edges.append(Edge(positions[value], target, "next" if positions[value] == target - 1 else "skip"))
    layers = f": {', '.join(node.op.kind for node in shortcut_nodes)}" if shortcut_nodes else ""
    label = f"shortcut {module.shortcut or 'none'}{layers}"
    title = f"{block} ({module.path})"
    return _column(title, boxes, edges, label)


@dataclass(frozen=True)
class Edge:
    source: int
    target: int
    kind: str
    """``next`` (straight down), ``skip`` (a value read out of order: a curve on the left) or
    ``shortcut`` (a red curve on the right)."""


def _column(title: str, boxes: list[Box], edges: list[Edge] | None = None, shortcut_label: str = "") -> str:
    heights = [LINE_HEIGHT * len(box.lines) + 10 for box in boxes]
    tops = []
    y = 50
    for height in heights:
        tops.append(y)
        y += height + GAP
    total_height = y + 10
    left = (WIDTH - BOX_WIDTH) // 2
    right = left + BOX_WIDTH
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{total_height}' "
        f"viewBox='0 0 {WIDTH} {total_height}' {FONT} font-size='13'>",
        f"<rect width='{WIDTH}' height='{total_height}' fill='white'/>",
        f"<text x='{WIDTH // 2}' y='28' text-anchor='middle' font-size='15' font-weight='bold'>{escape(title)}</text>",
    ]
    for box, top, height in zip(boxes, tops, heights, strict=True):
        parts.append(
            f"<rect x='{left}' y='{top}' width='{BOX_WIDTH}' height='{height}' rx='6' fill='{box.colour}' "
            "stroke='#555'/>"
        )
        for line_index, line in enumerate(box.lines):
            weight = " font-weight='bold'" if line_index == 0 else ""
            baseline = top + 18 + line_index * LINE_HEIGHT
            parts.append(f"<text x='{WIDTH // 2}' y='{baseline}' text-anchor='middle'{weight}>{escape(line)}</text>")
    if edges is None:  # a plain stack: each box feeds the next
        edges = [Edge(index, index + 1, "next") for index in range(len(boxes) - 1)]
    for edge in edges:
        y0 = tops[edge.source] + heights[edge.source] // 2
        y1 = tops[edge.target] + heights[edge.target] // 2
        if edge.kind == "next":
            top = tops[edge.source] + heights[edge.source]
            parts.append(f"<line x1='{WIDTH // 2}' y1='{top}' x2='{WIDTH // 2}' y2='{tops[edge.target]}' {_PEN}/>")
        elif edge.kind == "skip":
            x = left - 30
            parts.append(f"<path d='M {left} {y0} C {x} {y0}, {x} {y1}, {left} {y1}' fill='none' {_PEN}/>")
        else:
            x, middle = right + 45, (y0 + y1) // 2
            parts.append(
                f"<path d='M {right} {y0} C {x} {y0}, {x} {y1}, {right} {y1}' fill='none' stroke='#c0392b' "
                "stroke-width='2.5'/>"
            )
            parts.append(
                f"<text x='{x - 8}' y='{middle}' fill='#c0392b' text-anchor='middle' "
                f"transform='rotate(90 {x - 8} {middle})'>{escape(shortcut_label)}</text>"
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
