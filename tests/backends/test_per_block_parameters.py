"""A stage's per_block_parameters give each of its blocks its own parameters (MobileNetV3's expansion
ratios 6, 2.5, 2.3, 2.3 within one stage): the IR binds them, generated torch and Flax code build each
block with them, all three backends agree, and a wrong count or parameter is a located error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import assert_backends_agree, layer

from rescompile.backends import flax_backend, torch_backend
from rescompile.compiler import compile_spec
from rescompile.compiler.cost import cost
from rescompile.spec.errors import RescompileError

NETWORK = """name: net
description: Inverted residuals whose expansion and kernel differ block by block.
input: {channels: 3, size: 19}
stem: cifar
stem_parameters: {width: 8}
block: timm_inverted_residual
block_parameters: {act: relu6}
shortcut: {where_shapes_match: identity, where_shapes_change: none}
stages:
  - {depth: 1, width: 8, block: timm_depthwise_separable}
  - depth: 4
    width: 16
    stride: 2
    block_parameters: {kernel: 5}
    per_block_parameters: [{expansion: 6}, {expansion: 2.5}, {expansion: 2.3, kernel: 3}, {}]
head: classifier
head_parameters: {classes: 5}
"""


@pytest.fixture
def network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.yaml").write_text(NETWORK)
    return tmp_path / "net.yaml"


def test_each_block_has_its_own_parameters_over_the_stages(network: Path) -> None:
    graph = compile_spec(network)
    blocks = [dict(module.parameters) for module in graph.blocks[1:]]
    assert [block["expansion"] for block in blocks] == [6, 2.5, 2.3, 6]  # the last: the block's default
    assert [block["kernel"] for block in blocks] == [5, 5, 3, 5]  # the stage's, but where the block sets its own
    model = torch_backend.build_module(graph)
    hidden = [layer(model, f"layer2.{index}.conv_pw").out_channels for index in range(4)]
    assert hidden == [48, 40, 40, 96]  # make_divisible(8 * 6), (16 * 2.5), (16 * 2.3 = 36.8), (16 * 6)
    assert [layer(model, f"layer2.{index}.conv_dw").kernel_size for index in range(4)] == [
        (5, 5),
        (5, 5),
        (3, 3),
        (5, 5),
    ]
    assert sum(parameter.numel() for parameter in model.parameters()) == cost(graph).parameters
    assert model(torch.randn(2, 3, 19, 19)).shape == (2, 5)


def test_all_backends_agree_with_per_block_parameters(network: Path) -> None:
    assert_backends_agree(compile_spec(network))


PER_BLOCK = "[{expansion: 6}, {expansion: 2.5}, {expansion: 2.3, kernel: 3}, {}]"
AS_LISTS = "{expansion: [6, 2.5, 2.3, 6], kernel: [5, 5, 3, 5]}"
BAD = {
    "too_few_mappings": (
        (PER_BLOCK, "[{expansion: 6}, {}]"),
        "net.yaml:15:27: stage 1 has depth 4 but per_block_parameters lists 2 mappings: give one per block, in "
        "order ({} for a block that changes nothing)",
    ),
    "unknown_parameter": (
        ("{expansion: 2.5}", "{expanson: 2.5}"),
        "net.yaml:15:45: block 'timm_inverted_residual' has no parameter 'expanson' (did you mean 'expansion'?)",
    ),
    "value_out_of_bounds": (
        ("{expansion: 2.5}", "{expansion: -1}"),
        "net.yaml:15:56: expansion = -1 is out of bounds for block 'timm_inverted_residual': it must be greater than 0",
    ),
    "too_few_values_in_a_list": (
        (PER_BLOCK, "{expansion: [6, 2.5]}"),
        "net.yaml:15:39: stage 1 has depth 4 but per_block_parameters.expansion lists 2 values: give one per "
        "block, in order",
    ),
    "a_value_of_a_list_out_of_bounds": (
        (PER_BLOCK, "{expansion: [6, -1, 2.3, 6]}"),
        "net.yaml:15:43: expansion = -1 is out of bounds for block 'timm_inverted_residual': it must be greater than 0",
    ),
}


def test_per_block_parameters_as_one_list_per_parameter_build_the_same_network(network: Path) -> None:
    by_block = compile_spec(network)
    network.write_text(NETWORK.replace(PER_BLOCK, AS_LISTS))
    by_parameter = compile_spec(network)
    assert [module.parameters for module in by_parameter.blocks] == [module.parameters for module in by_block.blocks]
    assert cost(by_parameter) == cost(by_block)


@pytest.mark.parametrize(("change", "message"), BAD.values(), ids=BAD)
def test_bad_per_block_parameters_are_located_errors(network: Path, change: tuple[str, str], message: str) -> None:
    network.write_text(NETWORK.replace(*change))
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_generated_source_with_per_block_parameters_is_ruff_formatted(backend: str, network: Path) -> None:
    emit = {"torch": torch_backend.emit_source, "flax": flax_backend.emit_source}[backend]
    source = emit(compile_spec(network))
    assert "layout=[\n" in source  # the layout too long for one line: one block per line, as ruff writes it
    ruff = [sys.executable, "-m", "ruff"]
    settings = ["--isolated", "--line-length", "120", "--stdin-filename", "model.py"]
    formatted = subprocess.run([*ruff, "format", *settings, "-"], input=source, capture_output=True, text=True)
    assert formatted.stdout == source
    lint = subprocess.run([*ruff, "check", *settings, "-"], input=source, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
