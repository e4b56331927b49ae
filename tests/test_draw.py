"""``rescompile draw``: the SVG is rendered by a real renderer (MuPDF, from PyPI) to pixels that are
not blank and to text that carries every stage's label; block graphs are laid out as layered DAGs
(branches side by side, edges between boxes, an arrowhead per edge), every op labelled from its
fields; the docs' pictures are the current ones."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from itertools import combinations, pairwise
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from conftest import builtin_params

from rescompile.api import list_models
from rescompile.cli import main
from rescompile.compiler import compile_spec
from rescompile.draw import block_layout, draw_block, draw_network, format_macs, select_module

DOCS = Path(__file__).parent.parent / "docs"
SVG = "{http://www.w3.org/2000/svg}"


def render(svg: str) -> tuple[np.ndarray, str]:
    """(RGB pixels, the text MuPDF finds on the page)."""
    page = pymupdf.open(stream=svg.encode(), filetype="svg")[0]
    pixmap = page.get_pixmap(dpi=72)
    pixels = np.frombuffer(pixmap.samples, np.uint8).reshape(pixmap.height, pixmap.width, pixmap.n)
    return pixels[..., :3], page.get_text()


def texts(svg: str) -> list[str]:
    return [element.text or "" for element in ElementTree.fromstring(svg).iter(f"{SVG}text")]


def arrowheads(svg: str) -> int:
    return sum(element.get("class") == "arrowhead" for element in ElementTree.fromstring(svg).iter(f"{SVG}path"))


def test_the_network_picture_renders_with_every_stage_label() -> None:
    pixels, text = render(draw_network(compile_spec("resnet50")))
    drawn = (pixels < 200).any(axis=2).mean()
    assert 0.02 < drawn < 0.5, f"{drawn:.1%} of the pixels are drawn"
    for label in ["input 3×224×224", "stem: imagenet", "head: classifier", "resnet50: 25,557,032 parameters"]:
        assert label in text
    assert "7×7 conv, 64, /2 → bn → relu → max pool 3×3, /2" in text
    for stage, depth, width, shape in [(1, 3, 64, "256×56×56"), (2, 4, 128, "512×28×28"), (4, 3, 512, "2048×7×7")]:
        assert f"layer{stage}: bottleneck × {depth}" in text
        assert f"width {width}, stride {1 if stage == 1 else 2}, output {shape}" in text
        assert f"projection shortcut in block 0, identity in 1–{depth - 1}" in text


def test_the_network_picture_draws_convnext_transitions_and_their_strides() -> None:
    lines = texts(draw_network(compile_spec("convnext_tiny")))
    for stage, width in [(1, 192), (2, 384), (3, 768)]:
        index = lines.index(f"stages.{stage}.downsample: convnext_downsample")
        assert lines[index + 1] == f"ln → 2×2 conv, {width}, /2"
        assert lines[index + 4] == f"stages.{stage}.blocks: convnext × {9 if stage == 2 else 3}", "then its stage"
        assert lines[index + 5].startswith(f"width {width}, stride 2 (in stages.{stage}.downsample)")
    assert "width 96, stride 1, output 96×56×56" in lines
    assert "4×4 conv, 96, /4 → ln" in lines, "the stem's ops"
    assert "identity shortcut in every block" in lines


def test_a_long_stem_summary_wraps_over_lines() -> None:
    lines = texts(draw_network(compile_spec("resnest50d")))
    stem = lines.index("stem: deep")
    assert lines[stem + 1 : stem + 3] == [
        "3×3 conv, 32, /2 → bn → relu → 3×3 conv, 32 → bn → relu →",
        "3×3 conv, 64 → bn → relu → max pool 3×3, /2",
    ]


def test_macs_are_written_in_g_m_or_k_units_never_as_zero_gmacs() -> None:
    assert [format_macs(value) for value in (4_089_184_256, 2_049_000, 12_480, 640)] == [
        "4.09 GMACs",
        "2.05 MMACs",
        "12.5 KMACs",
        "640 MACs",
    ]
    svg = draw_network(compile_spec("resnet20"))
    assert "0.000 GMACs" not in svg and "KMACs" in svg and "MMACs" in svg


@pytest.mark.parametrize(
    ("network", "block", "labels"),
    [
        ("resnet50", "layer2.0", ["1×1 conv, 128", "3×3 conv, 128, /2", "1×1 conv, 512, /2", "bn", "relu", "add"]),
        ("resnext50_32x4d", "layer3.0", ["3×3 conv, 512, /2, g32"]),
        ("convnext_tiny", "stages.1.blocks.0", ["7×7 conv, 192, depthwise", "ln", "linear, 768", "gelu"]),
        ("resnest50d", "layer2.0", ["avg pool 2×2, /2", "avg pool 3×3, /2", "3×3 conv, 256, g2", "softmax over 2"]),
        ("convnext_tiny", "stages.1.downsample", ["ln", "2×2 conv, 192, /2"]),
    ],
)
def test_block_ops_are_labelled_with_kernel_width_stride_and_groups(
    network: str, block: str, labels: list[str]
) -> None:
    lines = texts(draw_block(compile_spec(network), block))
    for label in labels:
        assert label in lines


def test_every_edge_ends_in_an_arrowhead() -> None:
    module = select_module(compile_spec("res2net50_26w_4s"), "layer2.1")
    edges = sum(len(node.inputs) for node in module.nodes)
    assert arrowheads(draw_block(compile_spec("res2net50_26w_4s"), "layer2.1")) == edges == 29
    network = draw_network(compile_spec("convnext_tiny"))
    boxes = sum(1 for _ in ElementTree.fromstring(network).iter(f"{SVG}rect")) - 1  # less the background
    assert arrowheads(network) == boxes - 1 == 9


@pytest.mark.parametrize(
    ("network", "block", "branches"),
    [
        ("res2net50_26w_4s", "layer2.1", ["split.0", "split.1", "split.2", "split.3"]),
        ("resnest50d", "layer2.0", ["conv2.splits.0", "conv2.splits.1"]),
        ("resnest50d", "layer2.0", ["conv2.weighted.0", "conv2.weighted.1"]),
        ("resnet50", "layer2.0", ["conv1", "downsample.0"]),
    ],
)
def test_parallel_branches_are_drawn_side_by_side(network: str, block: str, branches: list[str]) -> None:
    placed, _ = block_layout(select_module(compile_spec(network), block))
    boxes = {box.name: box for box in placed}
    assert len({boxes[name].y for name in branches}) == 1, "one layer"
    for left, right in pairwise(branches):
        gap = boxes[right].x - boxes[left].x
        assert gap >= (boxes[left].width + boxes[right].width) / 2, f"{left} and {right} overlap"


@pytest.mark.parametrize(("network", "block"), [("res2net50_26w_4s", "layer2.1"), ("resnest50d", "layer2.0")])
def test_edges_bend_between_boxes_never_through_one(network: str, block: str) -> None:
    placed, routes = block_layout(select_module(compile_spec(network), block))
    assert routes and all(len(route.points) >= 2 for route in routes)
    for route in routes:
        for x, y in route.points[1:-1]:
            inside = [box.name for box in placed if abs(x - box.x) < box.width / 2 and abs(y - box.y) < box.height / 2]
            assert not inside, f"{route.source} → {route.target} passes through {inside}"


@pytest.mark.parametrize("network", builtin_params(list_models()))
def test_every_built_in_block_is_laid_out_without_overlaps(network: str) -> None:
    """Each distinct module (role, type, shortcut) of every built-in network: no two boxes overlap,
    no edge bends inside a box, and the SVG parses."""
    graph = compile_spec(network)
    ElementTree.fromstring(draw_network(graph))
    seen: set[tuple[str, str, str | None]] = set()
    for module in graph.modules:
        if (module.role, module.type_name, module.shortcut) in seen:
            continue
        seen.add((module.role, module.type_name, module.shortcut))
        placed, routes = block_layout(module)
        for a, b in combinations(placed, 2):
            apart = abs(a.x - b.x) >= (a.width + b.width) / 2 or abs(a.y - b.y) >= (a.height + b.height) / 2
            assert apart, f"{module.path or module.role}: {a.name} overlaps {b.name}"
        for route in routes:
            for x, y in route.points[1:-1]:
                assert not any(abs(x - box.x) < box.width / 2 and abs(y - box.y) < box.height / 2 for box in placed)
        ElementTree.fromstring(
            draw_block(graph, module.path if module.role in ("block", "transition") else module.role)
        )


def test_the_block_picture_draws_each_shortcut_in_red() -> None:
    svg = draw_block(compile_spec("seresnet50"), "layer1.0")
    pixels, text = render(svg)
    assert "layer1.0: se_bottleneck, projection shortcut" in text and "se.scale" in text
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    assert red.sum() > 100, "the shortcut is drawn in red"
    assert "layer1.1: se_bottleneck, identity shortcut" in texts(draw_block(compile_spec("seresnet50"), "layer1.1"))


def test_block_chooses_the_instance_by_path_and_a_type_name_its_first_projecting_one() -> None:
    graph = compile_spec("resnet50")
    assert select_module(graph, "layer3.4").path == "layer3.4"
    assert select_module(graph, "bottleneck").path == "layer1.0"
    assert select_module(graph, "stem").role == "stem" and select_module(graph, "head").role == "head"
    assert draw_block(graph, "layer3.4") != draw_block(graph, "layer3.0")


def test_drawing_is_deterministic() -> None:
    for network, block in [("res2net50_26w_4s", "layer2.1"), ("resnest50d", "layer2.0")]:
        assert draw_block(compile_spec(network), block) == draw_block(compile_spec(network), block)
    assert draw_network(compile_spec("convnext_tiny")) == draw_network(compile_spec("convnext_tiny"))


PICTURES = [
    ("resnet50.svg", "resnet50", None),
    ("res2net50_26w_4s_block.svg", "res2net50_26w_4s", "layer2.1"),
    ("convnext_tiny.svg", "convnext_tiny", None),
]


@pytest.mark.parametrize(("file", "network", "block"), PICTURES)
def test_the_docs_pictures_are_the_current_drawings(file: str, network: str, block: str | None) -> None:
    """Regenerate with: ./dev rescompile draw NETWORK [--block PATH] -o docs/FILE"""
    assert f"]({file})" in (DOCS / "pictures.md").read_text()
    graph = compile_spec(network)
    assert (DOCS / file).read_text() == (draw_network(graph) if block is None else draw_block(graph, block))


def test_draw_writes_the_file_and_refuses_an_unknown_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["draw", "resnet18", "-o", str(tmp_path / "net.svg")]) == 0
    assert (tmp_path / "net.svg").read_text() == draw_network(compile_spec("resnet18"))
    assert main(["draw", "resnet18", "--block", "layer2.3", "-o", str(tmp_path / "block.svg")]) == 1
    assert capsys.readouterr().err == (
        "--block layer2.3: resnet18 has no block layer2.3 (did you mean 'layer2.1'?); its blocks are "
        "layer1.0–1, layer2.0–1, layer3.0–1, layer4.0–1 (or stem, head, a block type: basic)\n"
    )
    assert not (tmp_path / "block.svg").exists()
    assert main(["draw", "resnet18", "--block", "layer2.0", "-o", str(tmp_path / "block.svg")]) == 0
    assert (tmp_path / "block.svg").read_text() == draw_block(compile_spec("resnet18"), "layer2.0")
