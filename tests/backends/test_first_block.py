"""A stage's first block may differ from its other blocks (first_block, first_block_parameters):
the IR, the generated _make_stage and all three backends agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import assert_backends_agree, layer

from rescompile.backends import flax_backend, torch_backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler import compile_spec
from rescompile.compiler.cost import cost
from rescompile.compiler.weights import random_weights
from rescompile.spec.errors import RescompileError
from rescompile.testing import assert_close

# The first unit reads the stem's activation as it is (He et al. 2016b's first unit after conv1):
# no BN-ReLU of its own; the others are full pre-activation basic units.
FIRST = """name: first_unit
description: Two 3×3 convolutions, no pre-activation of its own.
parameters: {scale: 1}
out_channels: width * scale
nodes:
  conv1: {op: conv, out_channels: width * scale, kernel: 3, stride: stride, padding: 1}
  norm2: {op: batch_norm}
  relu2: {op: relu}
  conv2: {op: conv, out_channels: width * scale, kernel: 3, padding: 1}
  add: {op: add, inputs: [conv2, shortcut]}
"""
PREACT = """name: preact_basic
description: BN-ReLU, 3×3, BN-ReLU, 3×3; a projection reads the pre-activation.
out_channels: width
shortcut_input: preact
nodes:
  norm1: {op: batch_norm}
  preact: {op: relu}
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  norm2: {op: batch_norm}
  relu2: {op: relu}
  conv2: {op: conv, out_channels: width, kernel: 3, padding: 1}
  add: {op: add, inputs: [conv2, shortcut]}
"""
NETWORK = """name: net
description: Pre-activation units whose first one reads the stem as it is.
input: {channels: 3, size: 17}
stem: cifar
stem_parameters: {width: 8}
block: preact_basic
shortcut: {where_shapes_match: identity, where_shapes_change: preact_projection}
stages:
  - {depth: 2, width: 8, first_block: first_unit, first_block_parameters: {scale: 1}}
  - {depth: 2, width: 16, stride: 2}
  - {depth: 3, width: 16, block: bottleneck, block_parameters: {expansion: 1}, first_block_parameters: {groups: 2}}
head: preact_classifier
head_parameters: {classes: 4}
"""


@pytest.fixture
def network(tmp_path: Path) -> Path:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "first_unit.yaml").write_text(FIRST)
    (tmp_path / "blocks" / "preact_basic.yaml").write_text(PREACT)
    (tmp_path / "net.yaml").write_text(NETWORK)
    return tmp_path / "net.yaml"


def test_the_first_block_of_a_stage_has_its_own_type_and_parameters(network: Path) -> None:
    graph = compile_spec(network)
    assert [module.type_name for module in graph.blocks] == ["first_unit", "preact_basic"] + ["preact_basic"] * 2 + [
        "bottleneck"
    ] * 3
    groups = [dict(module.parameters)["groups"] for module in graph.blocks[4:]]
    assert groups == [2, 1, 1]  # the stage's block_parameters and the first block's own on top
    assert dict(graph.blocks[4].parameters)["expansion"] == 1
    assert [definition.name for definition in graph.definitions if definition.role == "block"] == [
        "first_unit",
        "preact_basic",
        "bottleneck",
    ]
    source = torch_backend.emit_source(graph)
    assert "first_block=FirstUnitBlock" in source and 'first_options={"expansion": 1, "groups": 2}' in source
    model = torch_backend.build_module(graph)
    assert (
        type(layer(model, "layer1.0")).__name__ == "FirstUnitBlock"
        and type(layer(model, "layer1.1")).__name__ == "PreactBasicBlock"
    )
    assert sum(parameter.numel() for parameter in model.parameters()) == cost(graph).parameters
    assert flax_backend.count_parameters(flax_backend.build_module(graph)) == cost(graph).parameters


def test_all_backends_agree_with_first_blocks(network: Path) -> None:
    graph = compile_spec(network)
    weights = random_weights(graph, seed=0)
    inputs = np.random.default_rng(0).standard_normal((2, *graph.input_shape)).astype(np.float32)
    outputs = {name: backend.module_outputs(graph, weights, inputs) for name, backend in BACKENDS.items()}
    for name in ("flax", "onnx"):
        for module, value in outputs["torch"].items():
            assert_close(outputs[name][module], value, tolerance="network", what=f"{name} {module}")


def test_a_bad_first_block_parameter_is_located(network: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    network.write_text(NETWORK.replace("{scale: 1}", "{scal: 1}"))
    monkeypatch.chdir(network.parent)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert str(raised.value).startswith("net.yaml:9:76: block 'first_unit' has no parameter 'scal' (did you mean")


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_generated_source_with_first_blocks_is_ruff_formatted(backend: str, network: Path) -> None:
    emit = {"torch": torch_backend.emit_source, "flax": flax_backend.emit_source}[backend]
    source = emit(compile_spec(network))
    ruff = [sys.executable, "-m", "ruff"]
    settings = ["--isolated", "--line-length", "120", "--stdin-filename", "model.py"]
    formatted = subprocess.run([*ruff, "format", *settings, "-"], input=source, capture_output=True, text=True)
    assert formatted.stdout == source
    lint = subprocess.run([*ruff, "check", *settings, "-"], input=source, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


OTHER_CHANNELS = """name: n
input: {channels: 3, size: 8}
stem: cifar
block: basic
shortcut: B
stages:
  - {depth: 3, width: 4, first_block: bottleneck}
  - {depth: 2, width: 8, stride: 2, first_block: bottleneck, first_block_parameters: {expansion: 2}}
head: classifier
head_parameters: {classes: 3}
"""


def test_a_first_block_of_other_output_channels_agrees_in_every_backend(tmp_path: Path) -> None:
    """A bottleneck (4 × width channels) first in a stage of basic blocks: the second block reads 16
    channels and projects them to 4. torch and flax built it for 4 (no projection) and failed at
    forward; the stage is now built from its per-block layout."""
    (tmp_path / "net.yaml").write_text(OTHER_CHANNELS)
    graph = compile_spec(tmp_path / "net.yaml")
    assert [block.out_shape[0] for block in graph.blocks if block.out_shape] == [16, 4, 4, 16, 8]
    assert [block.shortcut for block in graph.blocks] == ["identity", "projection", "identity"] + ["projection"] * 2
    source = torch_backend.emit_source(graph)
    assert "layout=[(BottleneckBlock, 16, {}), (BasicBlock, 4, {}), (BasicBlock, 4, {})]" in source
    for backend in (torch_backend, flax_backend):
        assert backend.count_parameters(backend.build_module(graph)) == cost(graph).parameters
    assert_backends_agree(graph)
