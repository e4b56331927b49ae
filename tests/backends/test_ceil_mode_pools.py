"""Pools with ceil_mode (ResNet-D's average-pool shortcut, Caffe-style stems) in every backend:
the last, partial window exists, and an average divides it exactly as torch does."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import infer_shapes

from rescompile.backends import flax_backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler import compile_spec
from rescompile.compiler.ir import AvgPool, Graph, MaxPool
from rescompile.compiler.weights import random_weights
from rescompile.testing import assert_close


def _with_stem_pool(graph: Graph, op: MaxPool | AvgPool) -> Graph:
    stem = graph.modules[0]
    nodes = tuple(dataclasses.replace(node, op=op) if node.name == "maxpool" else node for node in stem.nodes)
    return infer_shapes(
        dataclasses.replace(graph, modules=(dataclasses.replace(stem, nodes=nodes), *graph.modules[1:]))
    )


def _agree(graph: Graph) -> None:
    weights = random_weights(graph, seed=1)
    x = np.random.default_rng(0).standard_normal((2, *graph.input_shape)).astype(np.float32)
    outputs = {name: backend.module_outputs(graph, weights, x) for name, backend in BACKENDS.items()}
    for name, result in outputs.items():
        for module, value in result.items():
            assert_close(value, outputs["torch"][module], tolerance="block", what=f"{name} {module}")


def _pool(kind: str, kernel: int, stride: int, padding: int, count_include_pad: bool = True) -> MaxPool | AvgPool:
    pads = ((padding, padding), (padding, padding))
    if kind == "max":
        return MaxPool((kernel, kernel), (stride, stride), pads, ceil_mode=True)
    return AvgPool((kernel, kernel), (stride, stride), pads, ceil_mode=True, count_include_pad=count_include_pad)


@pytest.mark.parametrize(
    ("op", "size", "partial"),
    [
        # The stem's conv makes 16×16 of 32 and 17×17 of 34; each pool's last window is partial
        # where ``partial`` says so (ceil gives one more row and column than floor).
        (_pool("max", 3, 2, 1), 32, True),
        (_pool("max", 3, 2, 0), 32, True),
        (_pool("avg", 3, 2, 0, count_include_pad=True), 32, True),
        (_pool("avg", 3, 2, 1, count_include_pad=True), 32, True),  # the partial window counts its left pad
        (_pool("avg", 3, 2, 1, count_include_pad=False), 32, True),
        (_pool("avg", 2, 2, 0, count_include_pad=False), 34, True),  # ResNet-D's shortcut pool
        (_pool("avg", 2, 2, 0, count_include_pad=True), 32, False),
    ],
    ids=["max-p1", "max-p0", "avg-incl-p0", "avg-incl-p1", "avg-excl-p1", "avg-excl-k2", "avg-no-partial"],
)
def test_a_ceil_mode_pool_in_the_stem_agrees_across_backends(op: MaxPool | AvgPool, size: int, partial: bool) -> None:
    graph = _with_stem_pool(compile_spec("resnet18", size=size), op)
    pooled, floor = (
        graph.modules[0].out_shape,
        dataclasses.replace(op, ceil_mode=False).output_shape(graph.modules[0].nodes[-1].in_shapes),
    )
    assert pooled is not None and (pooled != floor) == partial, (pooled, floor)
    _agree(graph)


RESNET_D = """\
name: resnet_d_small
input: {channels: 3, size: 45}
stem: cifar
block: basic
shortcut: {where_shapes_match: identity, where_shapes_change: avg_down}
stages:
  - {depth: 1, width: 16}
  - {depth: 1, width: 32, stride: 2}
  - {depth: 1, width: 64, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""

AVG_DOWN = """\
name: avg_down
description: ResNet-D's shortcut (He et al. 2019), timm's downsample.0 / .1 / .2.
nodes:
  "0": {op: avg_pool, kernel: stride, stride: stride, ceil_mode: true, count_include_pad: false}
  "1": {op: conv, out_channels: out_channels, kernel: 1}
  "2": {op: batch_norm}
"""


@pytest.mark.parametrize("size", [45, 32])
def test_the_resnet_d_shortcut_agrees_across_backends(size: int, tmp_path: Path) -> None:
    (tmp_path / "shortcuts").mkdir()
    (tmp_path / "shortcuts" / "avg_down.yaml").write_text(AVG_DOWN)
    (tmp_path / "net.yaml").write_text(RESNET_D)
    graph = compile_spec(tmp_path / "net.yaml", size=size)
    # 45 -> 23 -> 12: both strided shortcuts pool a partial last window.
    assert [module.in_shape[1] for module in graph.blocks] == ([45, 45, 23] if size == 45 else [32, 32, 16])
    _agree(graph)


def test_the_generated_ceil_mode_helpers_are_ruff_formatted_and_lint_clean(tmp_path: Path) -> None:
    (tmp_path / "shortcuts").mkdir()
    (tmp_path / "shortcuts" / "avg_down.yaml").write_text(AVG_DOWN)
    (tmp_path / "stems").mkdir()
    (tmp_path / "stems" / "ceil.yaml").write_text(
        "name: ceil\nnodes:\n  conv1: {op: conv, out_channels: 16, kernel: 3, padding: 1}\n"
        "  maxpool: {op: max_pool, kernel: 3, stride: 2, padding: 1, ceil_mode: true}\n"
    )
    (tmp_path / "net.yaml").write_text(RESNET_D.replace("stem: cifar", "stem: ceil"))
    source = flax_backend.emit_source(compile_spec(tmp_path / "net.yaml"))
    assert "def avg_pool_ceil(" in source and "def max_pool_ceil(" in source
    settings = ["--isolated", "--line-length", "120", "--stdin-filename", "model.py"]
    ruff = [sys.executable, "-m", "ruff"]
    formatted = subprocess.run([*ruff, "format", *settings, "-"], input=source, capture_output=True, text=True)
    assert formatted.stdout == source
    lint = subprocess.run([*ruff, "check", *settings, "-"], input=source, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
