"""Node names that would replace an attribute of the generated modules are refused at validate
time, and the list of those attributes is complete for the installed torch and flax."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from flax import nnx

from rescompile.backends import flax_backend, torch_backend
from rescompile.compiler import compile_spec
from rescompile.spec.errors import RescompileError
from rescompile.spec.models import MODULE_ATTRIBUTES


def test_the_module_attribute_list_covers_torch_and_flax_modules() -> None:
    public = {name for owner in (torch.nn.Module, nnx.Module) for name in dir(owner) if not name.startswith("_")}
    assert public - MODULE_ATTRIBUTES == set()
    assert "training" in vars(torch.nn.Module())  # an instance attribute, so not in dir() of the class


@pytest.mark.parametrize("backend", [torch_backend, flax_backend], ids=["torch", "flax"])
def test_the_module_attribute_list_covers_the_generated_network_class(backend: object) -> None:
    """Every method and ``self.`` attribute the generated network class defines (the timm interface:
    num_classes, forward_head, ...) is a name no node may take."""
    source = backend.emit_source(compile_spec("resnet18"))  # type: ignore[attr-defined]
    network = next(
        statement
        for statement in ast.parse(source).body
        if isinstance(statement, ast.ClassDef) and statement.name == "ResNet"
    )
    defined = {statement.name for statement in network.body if isinstance(statement, ast.FunctionDef)}
    defined |= {
        node.attr
        for node in ast.walk(network)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and isinstance(node.ctx, ast.Store)
    }
    defined -= {name for name in defined if name.startswith("__")}
    own_nodes = {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "flatten", "fc"}
    assert defined - own_nodes - MODULE_ATTRIBUTES == set()


NETWORK = "name: net\ninput: {channels: 3, size: 32}\nstem: mine\nblock: mine\nshortcut: B\nhead: mine\n"
NETWORK += "stages:\n  - {depth: 1, width: 16}\n"
STEM = "name: mine\nnodes:\n  conv1: {op: conv, out_channels: 16, kernel: 3, padding: 1}\n"
BLOCK = "name: mine\nout_channels: width\nnodes:\n  conv1: {op: conv, out_channels: width, kernel: 3, padding: 1}\n"
BLOCK += "  add: {op: add, inputs: [conv1, shortcut]}\n"
HEAD = "name: mine\nparameters: {classes: 10}\nnodes:\n  pool: {op: global_average_pool}\n"
HEAD += "  flatten: {op: flatten}\n  fc: {op: linear, out_features: classes}\n"


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        (
            "blocks",
            BLOCK.replace("conv1", "forward"),
            "blocks/mine.yaml:4:3: node name 'forward' would replace the generated module's own 'forward' "
            "(an attribute of nn.Module, nnx.Module or the network); rename the node",
        ),
        (
            "stems",
            STEM.replace("conv1", "layer1"),
            "stems/mine.yaml:3:3: stem node 'layer1' would share the network module's attribute 'layer1' with a "
            "stage of the network; rename the node or change the network's naming.stages",
        ),
        (
            "heads",
            HEAD.replace("pool:", "_stem.pool:").replace("flatten}", "flatten, input: _stem.pool}"),
            "heads/mine.yaml:4:3: node name '_stem.pool' would replace the generated module's own '_stem' "
            "(an attribute of nn.Module, nnx.Module or the network); rename the node",
        ),
        (
            "heads",
            HEAD.replace("  fc:", "  conv1.fc:"),
            "heads/mine.yaml:6:3: head node 'conv1.fc' would share the network module's attribute 'conv1' with a "
            "node of the stem; rename the node",
        ),
    ],
)
def test_a_node_named_like_a_module_attribute_is_a_located_error(
    kind: str, text: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = {"stems": STEM, "blocks": BLOCK, "heads": HEAD, kind: text}
    for folder, part in parts.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mine.yaml").write_text(part)
    (tmp_path / "net.yaml").write_text(NETWORK)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert str(raised.value) == expected


def test_the_same_parts_with_ordinary_names_compile(tmp_path: Path) -> None:
    for folder, part in {"stems": STEM, "blocks": BLOCK, "heads": HEAD}.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mine.yaml").write_text(part)
    (tmp_path / "net.yaml").write_text(NETWORK)
    assert compile_spec(tmp_path / "net.yaml").output_shape == (10,)
