"""The built-in module conv_norm_act is timm's ConvNormAct (keys conv, bn), used from a block, a
stem and a head alike; a use's values bound to numbers are written as numbers; an extension
inserts around a module use by its name; a network names its shortcut layer (naming.shortcuts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm.layers
import torch
from support import assert_is_reference
from torch import nn

from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import weight_shapes
from rescompile.spec import builtin_directory
from rescompile.spec.errors import RescompileError
from rescompile.spec.loader import load_part

NETWORK = """name: cna
input: {channels: 3, size: 33}
naming: {stages: "stages.{index}"}
stem: cna_stem
block: cna_block
shortcut: {where_shapes_match: identity, where_shapes_change: none}
stages:
  - {depth: 1, width: 16, stride: 2}
head: regnet_head
head_parameters: {classes: 5, features: 24, act: silu}
"""
STEM = """name: cna_stem
nodes:
  stem.conv1: {module: conv_norm_act, parameters: {out_channels: 8, kernel: 7, stride: 2, act: "'leaky_relu'"}}
  stem.conv2: {module: conv_norm_act, parameters: {out_channels: 12, groups: 4, act: "'hardswish'"}}
"""
BLOCK = """name: cna_block
out_channels: width
nodes:
  conv: {module: conv_norm_act, parameters: {out_channels: width, kernel: 5, stride: stride, act: "'silu'"}}
  add: {op: add, inputs: [conv, shortcut]}
"""


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = timm.layers.ConvNormAct(12, 16, 5, stride=2, act_layer="silu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # type: ignore[no-any-return]


class _Reference(nn.Module):
    """The network above built of timm's ConvNormAct layers (timm's padding, 'same' for odd kernels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential()
        self.stem.add_module("conv1", timm.layers.ConvNormAct(3, 8, 7, stride=2, act_layer="leaky_relu"))
        self.stem.add_module("conv2", timm.layers.ConvNormAct(8, 12, 3, groups=4, act_layer="hardswish"))
        self.stages = nn.Sequential(nn.Sequential(_Block()))
        self.final_conv = timm.layers.ConvNormAct(16, 24, 1, act_layer="silu")
        self.head = timm.layers.ClassifierHead(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_conv(self.stages(self.stem(x))))  # type: ignore[no-any-return]


def _write(folder: Path) -> Path:
    for kind, text in (("stems", STEM), ("blocks", BLOCK)):
        (folder / kind).mkdir()
        (folder / kind / f"{text.split()[1]}.yaml").write_text(text)
    (folder / "net.yaml").write_text(NETWORK)
    return folder / "net.yaml"


def test_conv_norm_act_in_a_stem_a_block_and_a_head_is_timms_conv_norm_act(tmp_path: Path) -> None:
    torch.manual_seed(0)
    assert_is_reference(_write(tmp_path), _Reference(), size=33)


def test_a_use_bound_to_numbers_is_written_with_numbers(tmp_path: Path) -> None:
    source = torch_backend.emit_source(compile_spec(_write(tmp_path)))
    assert "padding=2" in source and "// 2" not in source  # kernel: 5 makes padding: kernel // 2 a 2


def test_a_stem_uses_a_module_as_nested_layers(tmp_path: Path) -> None:
    keys = set(weight_shapes(compile_spec(_write(tmp_path))))
    assert {"stem.conv1.conv.weight", "stem.conv2.bn.running_var", "final_conv.conv.weight"} <= keys


def test_a_shortcut_using_a_module_that_chooses_its_layers_is_a_located_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shortcuts").mkdir()
    path = tmp_path / "shortcuts" / "cna.yaml"
    path.write_text("name: cna\nnodes:\n  proj: {module: conv_norm_act, parameters: {out_channels: out_channels}}\n")
    with pytest.raises(RescompileError, match=r"^shortcuts/cna.yaml:2:1: shortcut 'cna' uses a template") as error:
        load_part(path, "shortcuts")
    assert "templates work in stems, blocks, transitions and heads only" in str(error.value)


EXTENSION = """name: ext
extends: byob_bottleneck
insert_before: {conv2_kxk: {before: {op: relu}}}
insert_after: {conv2_kxk: {after: {op: relu}}, conv1_1x1.act: {after_act: {op: relu}}}
"""


def test_an_extension_inserts_around_a_module_use_by_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ext.yaml").write_text(EXTENSION)
    names = [name.replace("{''}", "") for name in load_part(tmp_path / "ext.yaml", "blocks").spec.nodes]
    # Before the module's first node, after its last; an op a parameter chooses is one anchor.
    assert names.index("after_act") == names.index("before") - 1 == names.index("conv2_kxk.conv") - 2
    assert names.index("after") - 1 == max(i for i, name in enumerate(names) if name == "conv2_kxk.act")


def test_naming_shortcuts_names_every_blocks_shortcut_layer(tmp_path: Path) -> None:
    network = (builtin_directory() / "resnet18.yaml").read_text()
    (tmp_path / "net.yaml").write_text(network.replace("name: resnet18", "name: net\nnaming: {shortcuts: proj}"))
    keys = set(weight_shapes(compile_spec(tmp_path / "net.yaml")))
    assert "layer2.0.proj.0.weight" in keys and not any("downsample" in key for key in keys)


def test_a_shortcut_name_that_is_not_an_identifier_is_a_located_error(tmp_path: Path) -> None:
    network = (builtin_directory() / "resnet18.yaml").read_text()
    (tmp_path / "net.yaml").write_text(network.replace("name: resnet18", 'name: net\nnaming: {shortcuts: "a.b"}'))
    with pytest.raises(RescompileError, match=r"net.yaml:3:21: naming.shortcuts: expected a Python-style identifier"):
        compile_spec(tmp_path / "net.yaml")
