"""Architecture pictures as SVG: ``rescompile draw SPEC -o net.svg``.

The network figure stacks input, stem, each stage (block type × repeat count, width, stride, each
block's shortcut, output shape, parameters and MACs), ConvNeXt-style transitions between stages and
the head, in the manner of the paper's Table 1. ``--block PATH`` (``layer2.0``) draws one module's
op graph instead, as the paper's Figures 2 and 5, laid out as a layered DAG by grandalf's Sugiyama
layout: branches side by side (Res2Net's splits, ResNeSt's radix groups), every op labelled from its
typed fields (``3×3 conv, 64, /2, g32``), the shortcut in red. Output is deterministic: the same
spec gives the same bytes, so a committed picture can be checked for staleness.

NOTES for developers: grandalf positions node centres layer by layer and inserts one dummy vertex
per layer a long edge crosses; an edge is drawn through its dummies with vertical tangents, so it
passes between the boxes of the layers it crosses. Coordinates are rounded before writing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from xml.sax.saxutils import escape

from grandalf.graphs import Edge as LayoutEdge  # type: ignore[import-untyped]
from grandalf.graphs import Graph as LayoutGraph
from grandalf.graphs import Vertex
from grandalf.layouts import SugiyamaLayout  # type: ignore[import-untyped]

from rescompile.compiler.cost import CostReport, cost
from rescompile.compiler.ir import MODULE_INPUT, Add, Graph, Module
from rescompile.compiler.ops import (
    AvgPool,
    BlurPool,
    ChannelConv,
    ChannelSlice,
    Conv,
    DropPath,
    GroupNorm,
    Linear,
    MaxPool,
    Op,
    Pad,
    PadChannels,
    Pair,
    PointwiseLinear,
    Softmax,
    Subsample,
)
from rescompile.spec.errors import RescompileError, did_you_mean

WIDTH = 520
BOX_WIDTH = 400
LINE_HEIGHT = 17
GAP = 26
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"
INK = "#444"
SHORTCUT = "#c0392b"
COLOURS = {
    "input": "#eeeeee",
    "stem": "#dbe9f6",
    "transition": "#e8dcf4",
    "stage": "#fde9c8",
    "head": "#dff0d8",
}
OP_COLOURS = {
    "linear": "#dbe9f6",
    "norm": "#fdf2c8",
    "activation": "#dff0d8",
    "pool": "#e8dcf4",
    "join": "#e6e6e6",
    "data": "#f7f7f7",
    "shortcut": "#f8d7d3",
}


# ---------------------------------------------------------------------------------------------- labels


def format_macs(macs: int) -> str:
    """``4.09 GMACs``, ``2.05 MMACs``, ``12.5 KMACs``, ``640 MACs``: three significant figures."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if macs >= scale:
            return f"{macs / scale:.3g} {unit}MACs"
    return f"{macs} MACs"


def _count(value: int) -> str:
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value:,}"


def _shape(shape: tuple[int, ...] | None) -> str:
    return "×".join(map(str, shape)) if shape else "?"


def _window(kernel: Pair) -> str:
    return f"{kernel[0]}×{kernel[1]}"


def _stride(stride: Pair | int) -> list[str]:
    """``/2`` for a strided window, nothing for stride 1."""
    pair = (stride, stride) if isinstance(stride, int) else stride
    if pair == (1, 1):
        return []
    return [f"/{pair[0]}" if pair[0] == pair[1] else f"/{pair[0]}×{pair[1]}"]


def op_label(op: Op) -> str:
    """What a reader needs to tell two ops apart, from the op's typed fields: ``3×3 conv, 64, /2,
    g32`` (kernel, output channels, stride and groups where not 1, dilation), ``bn``, ``relu``,
    ``avg pool 2×2, /2``, ``add``."""
    match op:
        case Conv():
            parts = [f"{_window(op.kernel)} conv", str(op.out_channels), *_stride(op.stride)]
            if op.groups > 1:
                parts.append("depthwise" if op.groups == op.in_channels == op.out_channels else f"g{op.groups}")
            if op.dilation != (1, 1):
                parts.append(f"dilation {op.dilation[0]}")
            if op.standardize_weight:
                parts.append("ws")
            return ", ".join(parts)
        case MaxPool() | AvgPool():
            name = "max pool" if isinstance(op, MaxPool) else "avg pool"
            return ", ".join([f"{name} {_window(op.kernel)}", *_stride(op.stride)])
        case BlurPool():
            return ", ".join([f"blur pool {op.taps}", *_stride(op.stride)])
        case Subsample():
            return ", ".join(["subsample", *_stride(op.stride)])
        case Linear():
            return f"fc, {op.out_features}"
        case PointwiseLinear():
            return f"linear, {op.out_channels}"
        case ChannelConv():
            return f"channel conv {op.kernel}"
        case GroupNorm():
            return f"gn, {op.groups} groups"
        case ChannelSlice():
            return f"channels {op.start}:{op.stop}"
        case Softmax():
            return f"softmax over {op.over}" if op.over > 1 else "sigmoid"
        case Pad():
            return f"pad {op.padding}"
        case PadChannels():
            return f"pad channels +{op.before}, +{op.after}"
        case DropPath():
            return f"drop path {op.rate:g}" if op.rate else "drop path"
    return SHORT_NAMES.get(op.kind, op.kind.replace("_", " "))


SHORT_NAMES = {
    "batch_norm": "bn",
    "layer_norm": "ln",
    "layer_scale": "layer scale",
    "global_average_pool": "global avg pool",
    "mul": "× (mul)",
}


# ---------------------------------------------------------------------------------------------- choosing a module


def _stage_summary(paths: list[str], stage: str) -> str:
    """``layer1.0–2`` for a stage's block paths."""
    if len(paths) == 1:
        return paths[0]
    return f"{paths[0]}–{paths[-1][len(stage) + 1 :]}"


def select_module(graph: Graph, block: str) -> Module:
    """The module ``--block`` names: a block or transition path (``layer2.0``), ``stem`` or ``head``, or
    a block type (its first instance whose shortcut has layers, else its first)."""
    paths = {module.path: module for module in graph.modules if module.role in ("block", "transition")}
    paths |= {"stem": graph.modules[0], "head": graph.modules[-1]}
    if block in paths:
        return paths[block]
    instances = [module for module in graph.blocks if module.type_name == block]
    if instances:
        return next((m for m in instances if m.shortcut not in (None, "identity")), instances[0])
    stages: dict[str, list[str]] = {}
    for module in graph.modules:
        if module.role == "transition":
            stages.setdefault(module.path, []).append(module.path)
        elif module.role == "block":
            stages.setdefault(module.stage, []).append(module.path)
    listed = ", ".join(_stage_summary(found, stage) for stage, found in stages.items())
    types = ", ".join(dict.fromkeys(module.type_name for module in graph.blocks))
    raise RescompileError(
        f"--block {block}: {graph.name} has no block {block}{did_you_mean(block, paths)}; "
        f"its blocks are {listed} (or stem, head, a block type: {types})"
    )


# ---------------------------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class Box:
    lines: tuple[str, ...]
    """The first line is the title (bold)."""
    colour: str


def _shortcuts(blocks: list[Module]) -> str:
    """Each block's shortcut, runs of equal kinds together: ``projection shortcut in block 0,
    identity in 1–2``."""
    runs: list[tuple[str, int, int]] = []
    for index, block in enumerate(blocks):
        kind = block.shortcut or "no"
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1], index)
        else:
            runs.append((kind, index, index))
    if len(runs) == 1:
        return "no shortcut (a plain network)" if runs[0][0] == "no" else f"{runs[0][0]} shortcut in every block"
    where = [f"{kind} in {a}" if a == b else f"{kind} in {a}–{b}" for kind, a, b in runs]
    first = runs[0]
    where[0] = f"{first[0]} shortcut in block{'' if first[1] == first[2] else 's'} {where[0].split(' in ')[1]}"
    return ", ".join(where)


def network_boxes(graph: Graph) -> list[Box]:
    """Input, stem, each stage (after its transition, where it has one, and before its transition
    after its blocks), head: what the network figure stacks."""
    report = cost(graph)
    modules = {row.name: row for row in report.group_by("block")}
    stages = {row.name: row for row in report.group_by("stage")}
    boxes = [Box((f"input {_shape(graph.input_shape)}",), COLOURS["input"])]
    stem, head = graph.modules[0], graph.modules[-1]
    boxes.append(_part_box("stem", stem, report, COLOURS["stem"]))
    members: dict[str, list[Module]] = {}
    for module in graph.modules[1:-1]:
        members.setdefault(module.stage, []).append(module)
    height = graph.input_shape[-2] if len(graph.input_shape) == 3 else 0
    height = stem.out_shape[-2] if stem.out_shape and len(stem.out_shape) == 3 else height
    for stage, parts in members.items():
        transitions = [module for module in parts if module.role == "transition" and not module.after_blocks]
        after = [module for module in parts if module.role == "transition" and module.after_blocks]
        blocks = [module for module in parts if module.role == "block"]
        for transition in transitions:
            boxes.append(_part_box(transition.path, transition, report, COLOURS["transition"]))
        row = stages[stage]
        out_height = row.output_shape[-2] if len(row.output_shape) == 3 else height
        stride = f"stride {height // out_height if out_height else '?'}"
        if transitions and blocks and blocks[0].parameter("stride") == 1:
            stride += f" (in {transitions[0].path})"
        height = out_height
        types = Counter(block.type_name for block in blocks)
        kinds = " + ".join(f"{name} × {count}" for name, count in types.items())
        block_totals = [modules[block.path] for block in blocks]
        boxes.append(
            Box(
                (
                    f"{stage}: {kinds}",
                    f"width {blocks[0].parameter('width')}, {stride}, output {_shape(row.output_shape)}",
                    _shortcuts(blocks),
                    f"{_count(sum(t.parameters for t in block_totals))} parameters, "
                    f"{format_macs(sum(t.macs for t in block_totals))}",
                ),
                COLOURS["stage"],
            )
        )
        boxes += [_part_box(transition.path, transition, report, COLOURS["transition"]) for transition in after]
    boxes.append(_part_box("head", head, report, COLOURS["head"]))
    return boxes


SUMMARY_LENGTH = 56


def _wrap(labels: list[str], lines: int = 3) -> list[str]:
    """The ops joined by arrows in lines of at most SUMMARY_LENGTH characters, or no line at all
    where they need more than ``lines`` (``--block stem`` draws them)."""
    wrapped = [labels[0]]
    for label in labels[1:]:
        if len(wrapped[-1]) + 3 + len(label) <= SUMMARY_LENGTH:
            wrapped[-1] += f" → {label}"
        else:
            wrapped[-1] += " →"
            wrapped.append(label)
    return wrapped if len(wrapped) <= lines else []


def _part_box(role: str, module: Module, report: CostReport, colour: str) -> Box:
    totals = next(row for row in report.group_by("block") if row.name == (module.path or module.role))
    lines = [f"{role}: {module.type_name}"]
    lines += _wrap([op_label(node.op) for node in module.nodes])
    lines += [
        f"output {_shape(module.out_shape)}",
        f"{_count(totals.parameters)} parameters, {format_macs(totals.macs)}",
    ]
    return Box(tuple(lines), colour)


def draw_network(graph: Graph) -> str:
    """The network figure as SVG text."""
    report = cost(graph)
    title = f"{graph.name}: {report.parameters:,} parameters, {format_macs(report.macs)}"
    boxes = network_boxes(graph)
    heights = [LINE_HEIGHT * len(box.lines) + 10 for box in boxes]
    total_height = 50 + sum(heights) + GAP * (len(boxes) - 1) + 14
    left = (WIDTH - BOX_WIDTH) // 2
    parts = _header(WIDTH, total_height, title)
    y = 50
    for index, (box, height) in enumerate(zip(boxes, heights, strict=True)):
        if index:
            parts += _arrow(((WIDTH / 2, y - GAP), (WIDTH / 2, y)), INK)
        parts.append(
            f"<rect x='{left}' y='{y}' width='{BOX_WIDTH}' height='{height}' rx='6' fill='{box.colour}' stroke='#555'/>"
        )
        for line_index, line in enumerate(box.lines):
            weight = " font-weight='bold'" if line_index == 0 else ""
            baseline = y + 18 + line_index * LINE_HEIGHT
            parts.append(f"<text x='{WIDTH // 2}' y='{baseline}' text-anchor='middle'{weight}>{escape(line)}</text>")
        y += height + GAP
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- a block


@dataclass(frozen=True)
class Placed:
    """A node (or the module input) where the layout put it: ``x``, ``y`` is the box's centre."""

    name: str
    lines: tuple[str, str]
    colour: str
    x: float
    y: float
    width: float
    height: float
    shortcut: bool


@dataclass(frozen=True)
class Route:
    """An edge from ``source`` to ``target`` through ``points`` (the first on the source box's bottom,
    the last on the target box's top)."""

    source: str
    target: str
    points: tuple[tuple[float, float], ...]
    shortcut: bool


NODE_HEIGHT = 36
CHARACTER_WIDTH = 7.0
MARGIN = 24


class _View:
    """The size grandalf reads and the centre it writes."""

    def __init__(self, width: float, height: float) -> None:
        self.w = width
        self.h = height
        self.xy = (0.0, 0.0)


class _EdgeView:
    def setpath(self, points: list[tuple[float, float]]) -> None:
        self.points = list(points)


def block_layout(module: Module) -> tuple[list[Placed], list[Route]]:
    """The module's op graph laid out top to bottom: placed boxes (input first, then the nodes in
    order) and routed edges, in the module's own coordinates (the top-left box corner at 0, 0)."""
    prefix = f"{module.shortcut_module}." if module.shortcut_module else None
    in_shortcut = {node.name for node in module.nodes if prefix is not None and node.name.startswith(prefix)}
    labels: dict[str, tuple[str, str]] = {MODULE_INPUT: ("input", _shape(module.in_shape))}
    colours = {MODULE_INPUT: COLOURS["input"]}
    # The half of a transition after the blocks it holds also reads values of the half before them.
    for name, shape in module.carried:
        labels[name] = ("carried", f"{name}  {_shape(shape)}")
        colours[name] = COLOURS["input"]
    for node in module.nodes:
        labels[node.name] = (op_label(node.op), f"{node.name}  {_shape(node.shape)}")
        family = "shortcut" if node.name in in_shortcut else node.op.family
        colours[node.name] = OP_COLOURS[family]
    vertices: dict[str, Vertex] = {}
    for name, (label, detail) in labels.items():
        vertex = Vertex(name)
        vertex.view = _View(CHARACTER_WIDTH * max(len(label), len(detail) * 0.85) + 20, NODE_HEIGHT)
        vertices[name] = vertex
    edges: list[tuple[str, str, int, bool]] = []
    for node in module.nodes:
        for position, value in enumerate(node.inputs):
            shortcut = node.name in in_shortcut
            shortcut |= isinstance(node.op, Add) and node.op.shortcut_input == position
            edges.append((value, node.name, position, shortcut))
    layout_edges = []
    for source, target, _, _ in edges:
        edge = LayoutEdge(vertices[source], vertices[target])
        edge.view = _EdgeView()
        layout_edges.append(edge)
    layout = SugiyamaLayout(LayoutGraph(list(vertices.values()), layout_edges).C[0])
    layout.xspace, layout.yspace = 22, 30
    layout.init_all(roots=[vertices[MODULE_INPUT]], inverted_edges=[])
    layout.draw(3)
    bends = [point for edge in layout_edges for point in edge.view.points[1:-1]]
    left = min([v.view.xy[0] - v.view.w / 2 for v in vertices.values()] + [x - MARGIN / 2 for x, _ in bends])
    top = min(v.view.xy[1] - v.view.h / 2 for v in vertices.values())
    placed = [
        Placed(
            name,
            labels[name],
            colours[name],
            round(vertex.view.xy[0] - left, 1),
            round(vertex.view.xy[1] - top, 1),
            round(vertex.view.w, 1),
            vertex.view.h,
            name in in_shortcut,
        )
        for name, vertex in vertices.items()
    ]
    centres = {box.name: box for box in placed}
    bodies = []
    for (source, _, _, _), edge in zip(edges, layout_edges, strict=True):
        start = centres[source]
        middle = [(round(x - left, 1), round(y - top, 1)) for x, y in edge.view.points[1:-1]]
        bodies.append([(start.x, start.y + start.height / 2), *middle])
    # a node's inputs arrive side by side, ordered by where each comes from (left to right), so
    # that they do not cross just above it
    arrivals: dict[str, list[int]] = {}
    for index, (_, target, _, _) in enumerate(edges):
        arrivals.setdefault(target, []).append(index)
    slots: dict[int, float] = {}
    for target, indices in arrivals.items():
        ordered = sorted(indices, key=lambda index: (bodies[index][-1][0], edges[index][2]))
        spread = min(centres[target].width / (len(ordered) + 1), 24.0)
        for slot, index in enumerate(ordered):
            slots[index] = (slot - (len(ordered) - 1) / 2) * spread
    routes = []
    for index, (source, target, _, shortcut) in enumerate(edges):
        end = centres[target]
        points = (*bodies[index], (round(end.x + slots[index], 1), end.y - end.height / 2))
        routes.append(Route(source, target, points, shortcut))
    return placed, routes


def draw_block(graph: Graph, block: str) -> str:
    """The op graph of the module ``block`` names (see :func:`select_module`) as SVG text."""
    module = select_module(graph, block)
    placed, routes = block_layout(module)
    report = cost(graph)
    totals = next(row for row in report.group_by("block") if row.name == (module.path or module.role))
    shortcut = module.shortcut or "none"
    title = f"{module.path or module.role}: {module.type_name}"
    if module.role == "block":
        title += f", {shortcut} shortcut"
    subtitle = (
        f"{_shape(module.in_shape)} → {_shape(module.out_shape)}, {_count(totals.parameters)} parameters, "
        f"{format_macs(totals.macs)}"
    )
    bends = [x + MARGIN / 2 for route in routes for x, _ in route.points]
    content_width = max([box.x + box.width / 2 for box in placed] + bends)
    content_height = max(box.y + box.height / 2 for box in placed)
    width = round(max(content_width + 2 * MARGIN, CHARACTER_WIDTH * 1.1 * max(len(title), len(subtitle)) + 40))
    height = round(content_height + 84 + MARGIN)
    dx, dy = round((width - content_width) / 2), 84
    parts = _header(width, height, title)
    parts.append(f"<text x='{width // 2}' y='48' text-anchor='middle' font-size='12'>{escape(subtitle)}</text>")
    if module.role == "block" and module.shortcut is not None:
        parts.append(
            f"<text x='{width // 2}' y='66' text-anchor='middle' font-size='12' fill='{SHORTCUT}'>"
            f"red: the {escape(shortcut)} shortcut</text>"
        )
    for route in routes:
        points = tuple((x + dx, y + dy) for x, y in route.points)
        colour = SHORTCUT if route.shortcut else INK
        parts += _arrow(points, colour, f" data-edge='{_attribute(route.source)} {_attribute(route.target)}'")
    for box in placed:
        x, y = box.x + dx - box.width / 2, box.y + dy - box.height / 2
        stroke = SHORTCUT if box.shortcut else "#555"
        parts.append(f"<g data-node='{_attribute(box.name)}'>")
        parts.append(
            f"<rect x='{x:.1f}' y='{y:.1f}' width='{box.width:.1f}' height='{box.height:.1f}' rx='5' "
            f"fill='{box.colour}' stroke='{stroke}'/>"
        )
        centre = f"{box.x + dx:.1f}"
        parts.append(
            f"<text x='{centre}' y='{y + 15:.1f}' text-anchor='middle' font-weight='bold'>{escape(box.lines[0])}</text>"
        )
        parts.append(
            f"<text x='{centre}' y='{y + 29:.1f}' text-anchor='middle' font-size='10' fill='#555'>"
            f"{escape(box.lines[1])}</text>"
        )
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- SVG pieces


def _header(width: int, height: int, title: str) -> list[str]:
    return [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' {FONT} font-size='12'>",
        f"<rect width='{width}' height='{height}' fill='white'/>",
        f"<text x='{width // 2}' y='28' text-anchor='middle' font-size='15' font-weight='bold'>{escape(title)}</text>",
    ]


ARROW_LENGTH = 8.0


def _attribute(text: str) -> str:
    """``text`` safe inside a single-quoted SVG attribute."""
    return escape(text, {"'": "&apos;", '"': "&quot;"})


def _arrow(points: tuple[tuple[float, float], ...], colour: str, data: str = "") -> list[str]:
    """A downward edge through ``points`` with vertical tangents at each (so that it crosses a layer
    where the layout left room, between boxes) and an arrowhead drawn as a triangle at the last point
    (a triangle, not an SVG marker: every renderer draws it)."""
    *route, (x1, y1) = points
    route.append((x1, y1 - ARROW_LENGTH))
    path = f"M {route[0][0]:.1f} {route[0][1]:.1f}"
    for (xa, ya), (xb, yb) in pairwise(route):
        middle = (ya + yb) / 2
        path += f" C {xa:.1f} {middle:.1f}, {xb:.1f} {middle:.1f}, {xb:.1f} {yb:.1f}"
    width = 2.2 if colour == SHORTCUT else 1.4
    head = f"M {x1:.1f} {y1:.1f} L {x1 - 4:.1f} {y1 - ARROW_LENGTH:.1f} L {x1 + 4:.1f} {y1 - ARROW_LENGTH:.1f} Z"
    return [
        f"<path{data} d='{path}' fill='none' stroke='{colour}' stroke-width='{width}'/>",
        f"<path class='arrowhead' d='{head}' fill='{colour}'/>",
    ]
