"""Names in generated source: module paths nest exactly as written (so a part can reproduce a
foreign state_dict's keys), local variables are handed out legal and unique, and a name that
cannot be honoured is a located error at validate time."""

from __future__ import annotations

import keyword
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rescompile.backends import flax_backend, torch_backend
from rescompile.backends.names import Namespace, attribute_access, containers
from rescompile.cli import main
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import weight_shapes
from rescompile.spec.errors import RescompileError

# timm's keys: a deep stem conv1.0 … conv1.6 (ResNet-C/D) and an SE module se.fc1 / se.fc2.
DEEP_STEM = """\
name: deep
parameters: {width: 8}
nodes:
  conv1.0: {op: conv, out_channels: width, kernel: 3, stride: 2, padding: 1}
  conv1.1: {op: batch_norm}
  conv1.2: {op: relu}
  conv1.3: {op: conv, out_channels: width, kernel: 3, padding: 1}
  conv1.4: {op: batch_norm}
  conv1.5: {op: relu}
  conv1.6: {op: conv, out_channels: width * 2, kernel: 3, padding: 1}
  bn1: {op: batch_norm}
  act1: {op: relu}
"""

SE_BLOCK = """\
name: se_basic
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn1: {op: batch_norm}
  act1: {op: relu}
  conv2: {op: conv, out_channels: width, kernel: 3, padding: 1}
  bn2: {op: batch_norm, zero_init: true}
  se.pool: {op: global_average_pool}
  se.fc1: {op: conv, out_channels: width // 4, kernel: 1, bias: true}
  se.act: {op: relu}
  se.fc2: {op: conv, out_channels: width, kernel: 1, bias: true}
  se.gate: {op: sigmoid}
  se.scale: {op: mul, inputs: [bn2, se.gate]}
  add: {op: add, inputs: [se.scale, shortcut]}
  act2: {op: relu}
"""

NETWORK = """\
name: nested
input: {channels: 3, size: 16}
stem: deep
block: se_basic
shortcut: B
stages:
  - {depth: 1, width: 16}
  - {depth: 1, width: 32, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""


def _write(folder: Path, stem: str = DEEP_STEM, block: str = SE_BLOCK) -> Path:
    for kind, text, name in (("stems", stem, "deep"), ("blocks", block, "se_basic")):
        (folder / kind).mkdir(exist_ok=True)
        (folder / kind / f"{name}.yaml").write_text(text)
    (folder / "net.yaml").write_text(NETWORK)
    return folder / "net.yaml"


def test_nested_paths_are_the_state_dict_keys_in_torch(tmp_path: Path) -> None:
    graph = compile_spec(_write(tmp_path))
    model = torch_backend.build_module(graph)
    keys = set(model.state_dict()) - {key for key in model.state_dict() if key.endswith("num_batches_tracked")}
    assert keys == set(weight_shapes(graph))
    assert {"conv1.0.weight", "conv1.6.weight", "bn1.weight", "layer1.0.se.fc1.weight", "layer1.0.se.fc2.bias"} <= keys
    source = torch_backend.emit_source(graph)
    assert 'self.conv1 = nn.ModuleDict()\n        self.conv1["0"] = nn.Conv2d(' in source
    assert "self.se = nn.ModuleDict()" in source
    assert "out = self.se.fc1(out)" in source


def test_nested_paths_in_flax_and_all_backends_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    network = _write(tmp_path)
    source = flax_backend.emit_source(compile_spec(network))
    assert "self.se = nnx.Dict()" in source
    assert main(["check", str(network), "--backends", "torch,flax,onnx"]) == 0
    assert "all backends agree" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            SE_BLOCK.replace("se.pool:", "se:"),
            "blocks/se_basic.yaml:9:3: node 'se' cannot also hold node 'se.fc1': a module path is either a layer",
        ),
        (
            SE_BLOCK.replace("se.pool:", "se.class:").replace("inputs: [bn2, se.gate]", "inputs: [bn2, se.gate]"),
            "blocks/se_basic.yaml:9:3: node name 'se.class' must be a module path",
        ),
        (
            SE_BLOCK.replace("se.pool:", "downsample.pool:").replace(
                "se.fc1: {op: conv,", "se.fc1: {input: downsample.pool, op: conv,"
            ),
            "shortcut 'projection' is held in module 'downsample', which is also the container of node "
            "'downsample.pool' of block 'se_basic'; rename one of them",
        ),
    ],
)
def test_names_that_cannot_be_honoured_are_located_errors(
    block: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, block=block)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    message = str(raised.value)
    # The last case is located in the built-in shortcut's file, wherever the package is installed.
    assert message.startswith(expected) or message.endswith(f"projection.yaml:6:9: {expected}"), message


def test_attribute_access_and_containers() -> None:
    assert attribute_access("se.fc1") == ".se.fc1"
    assert attribute_access("conv1.0") == '.conv1["0"]'
    assert attribute_access("layer.0.conv") == '.layer["0"].conv'
    assert containers(["conv1", "se.fc1", "se.fc2", "a.0.b"]) == ["se", "a", "a.0"]


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=20))
def test_the_namespace_hands_out_legal_unique_names(candidates: list[str]) -> None:
    namespace = Namespace({"x", "out"})
    names = [namespace.create_name(candidate) for candidate in candidates]
    assert len(set(names)) == len(names)
    assert all(name.isidentifier() and not keyword.iskeyword(name) for name in names)
    assert not {"x", "out", "self", "print", "nn"} & set(names)
