"""The network's naming scheme and a block's shortcut_input: what they name, and their located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescompile.compiler import compile_spec
from rescompile.compiler.cost import cost
from rescompile.compiler.weights import weight_shapes
from rescompile.spec.errors import RescompileError
from rescompile.spec.loader import load_network

NETWORK = """name: net
input: {channels: 3, size: 16}
naming: {stages: "stages.{index}.blocks"}
stem: cifar
block: mine
shortcut: {where_shapes_match: identity, where_shapes_change: preact_projection}
stages:
  - {depth: 2, width: 8}
  - {depth: 1, width: 16, stride: 2}
head_parameters: {classes: 10}
"""
BLOCK = """name: mine
out_channels: width
shortcut_input: preact
nodes:
  norm1: {op: batch_norm}
  preact: {op: relu}
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  add: {op: add, inputs: [conv1, shortcut]}
"""


def _compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, network: str = NETWORK, block: str = BLOCK) -> object:
    (tmp_path / "blocks").mkdir(exist_ok=True)
    (tmp_path / "blocks" / "mine.yaml").write_text(block)
    (tmp_path / "net.yaml").write_text(network)
    monkeypatch.chdir(tmp_path)
    return compile_spec("net.yaml")


def test_the_naming_scheme_names_stages_blocks_and_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = _compile(tmp_path, monkeypatch)
    names = list(weight_shapes(graph))  # type: ignore[arg-type]
    assert "stages.0.blocks.1.conv1.weight" in names
    assert "stages.1.blocks.0.downsample.conv.weight" in names
    assert not any(name.startswith("layer") for name in names)
    numbered = _compile(tmp_path, monkeypatch, NETWORK.replace("stages.{index}.blocks", "stage{number}"))
    assert [module.path for module in numbered.blocks] == ["stage1.0", "stage1.1", "stage2.0"]  # type: ignore[attr-defined]


def test_a_projection_reads_the_shortcut_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = _compile(tmp_path, monkeypatch)
    projecting = graph.blocks[2]  # type: ignore[attr-defined]
    shortcut = next(node for node in projecting.nodes if node.name == "downsample.conv")
    assert shortcut.inputs == ("preact",)
    identity = graph.blocks[1]  # type: ignore[attr-defined]
    assert next(node for node in identity.nodes if node.name == "add").inputs == ("conv1", "input")


@pytest.mark.parametrize(
    ("network", "block", "expected"),
    [
        (
            NETWORK.replace("stages.{index}.blocks", "stages.{index}.{number}"),
            BLOCK,
            "net.yaml:3:18: naming.stages: a stage path holds at most one of {index} (0, 1, ...) or {number} (1, 2, "
            "...); without one, the stages share it (features), their blocks numbered across the network "
            "({network_number}) (got 'stages.{index}.{number}')",
        ),
        (
            NETWORK.replace("stages.{index}.blocks", "{index}.blocks"),
            BLOCK,
            "net.yaml:3:18: naming.stages: a stage path is a module path: Python-style identifiers or numbers joined "
            "by '.', starting with an identifier (layer{number}, stages.{index}.blocks)",
        ),
        (
            NETWORK.replace("stages.{index}.blocks", "conv1.{index}"),
            BLOCK,
            "stems/cifar.yaml:7:3: stem node 'conv1' would share the network module's attribute 'conv1' with a stage "
            "of the network; rename the node or change the network's naming.stages",
        ),
        (
            NETWORK,
            BLOCK.replace("shortcut_input: preact", "shortcut_input: preakt"),
            "blocks/mine.yaml:3:17: shortcut_input 'preakt' is not a node of block 'mine' (did you mean 'preact'?); "
            "the shortcut reads the block input or a node before the residual add 'add': 'conv1', 'input', 'norm1' "
            "or 'preact'",
        ),
        (
            NETWORK,
            BLOCK.replace("shortcut_input: preact", "shortcut_input: add"),
            "blocks/mine.yaml:3:17: shortcut_input 'add' is a later node of block 'mine'; the shortcut reads the "
            "block input or a node before the residual add 'add': 'conv1', 'input', 'norm1' or 'preact'",
        ),
        (
            NETWORK,
            BLOCK.replace("shortcut_input: preact", "shortcut_input: conv1"),
            "blocks/mine.yaml:3:17: stages.0.blocks.0: shortcut_input 'conv1' has shape 8×16×16, but a shortcut reads "
            "a value of the block input's shape (16×16×16)",
        ),
    ],
)
def test_bad_naming_and_shortcut_inputs_are_located_errors(
    network: str, block: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RescompileError) as raised:
        _compile(tmp_path, monkeypatch, network, block)
    # A built-in part is named by its installed path: compare from the part's folder on.
    assert str(raised.value) == expected or str(raised.value).endswith(f"/architectures/{expected}")


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (  # a typo in the add's inputs: the branch's last BatchNorm is computed and dropped
            BLOCK + "  bn: {op: batch_norm, input: conv1}\n  merged: {op: add, inputs: [add, conv1]}\n",
            "blocks/mine.yaml:9:3: nothing reads node 'bn' of block 'mine': only the last node ('merged') is the "
            "part's output; read it (input: or inputs:) or remove it",
        ),
        (
            BLOCK.replace("  conv1:", "  spare: {op: relu}\n  conv1:").replace(
                "stride, padding: 1}", "stride, padding: 1, input: preact}"
            ),
            "blocks/mine.yaml:7:3: nothing reads node 'spare' of block 'mine': only the last node ('add') is the "
            "part's output; read it (input: or inputs:) or remove it",
        ),
    ],
)
def test_a_node_nothing_reads_is_a_located_error(
    block: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RescompileError) as raised:
        _compile(tmp_path, monkeypatch, NETWORK, block)
    assert str(raised.value) == expected


def test_the_shortcut_input_counts_as_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = BLOCK.replace("stride, padding: 1}", "stride, padding: 1, input: norm1}")
    graph = _compile(tmp_path, monkeypatch, NETWORK, block)  # preact is read by the shortcut alone
    assert graph.blocks[2].nodes[2].name == "conv1"  # type: ignore[attr-defined]


def _write(tmp_path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)


def test_extends_overrides_keys_and_merges_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, {"x.yaml": "extends: resnet50_v1\nname: x\nblock_parameters: {groups: 32, base_width: 4}\n"})
    monkeypatch.chdir(tmp_path)
    network = load_network("x.yaml")
    assert network.spec.name == "x" and network.spec.extends == "resnet50_v1"
    assert network.spec.block_parameters == {"stride_at": "conv1", "groups": 32, "base_width": 4}  # merged
    assert cost(compile_spec("x.yaml")).parameters == cost(compile_spec("resnext50_32x4d")).parameters
    _write(tmp_path, {"y.yaml": "extends: x.yaml\nname: y\nstages:\n  - {depth: 1, width: 64}\n"})
    graph = compile_spec("y.yaml")
    assert [module.path for module in graph.blocks] == ["layer1.0"]  # stages replaced as a whole
    assert dict(graph.blocks[0].parameters)["groups"] == 32  # the chain's parameters kept
    assert {path.name for path in graph.files} >= {"y.yaml", "x.yaml", "resnet50_v1.yaml"}  # no output replaces them


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"a.yaml": "extends: a.yaml\nname: a\n"},
            "a.yaml:1:10: extends makes a cycle: a.yaml -> a.yaml",
        ),
        (
            {"a.yaml": "extends: b.yaml\nname: a\n", "b.yaml": "extends: a.yaml\nname: b\n"},
            "b.yaml:1:10: extends makes a cycle: a.yaml -> b.yaml -> a.yaml",
        ),
        (
            {"a.yaml": "extends: resnet5\nname: a\n"},
            "a.yaml:1:10: extends: 'resnet5' is not a built-in network (did you mean 'resnet56'?); built-ins: ",
        ),
        ({"a.yaml": "extends: c.yaml\nname: a\n"}, "a.yaml:1:10: extends: no such network file: c.yaml"),
        ({"a.yaml": "extends: resnet50\n"}, "a.yaml:1:1: a network that extends 'resnet50' needs a name of its own"),
        (  # the bad value is located in the file that set it, however deep the chain
            {
                "a.yaml": "extends: b.yaml\nname: a\n",
                "b.yaml": "extends: resnet50\nname: b\nstem_parameters: {wdth: 3}\n",
            },
            "b.yaml:3:19: stem 'imagenet' has no parameter 'wdth' (did you mean 'width'?)",
        ),
    ],
)
def test_bad_extends_are_located_errors(
    files: dict[str, str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("a.yaml")
    assert str(raised.value).startswith(expected)


def test_a_stem_node_named_like_a_module_value_is_a_located_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stems").mkdir()
    (tmp_path / "stems" / "mine.yaml").write_text(
        "name: mine\nnodes:\n  stem: {op: conv, out_channels: 16, kernel: 3, padding: 1}\n  relu: {op: relu}\n"
    )
    network = NETWORK.replace("stem: cifar", "stem: mine")
    with pytest.raises(RescompileError) as raised:
        _compile(tmp_path, monkeypatch, network)
    assert str(raised.value).startswith("stems/mine.yaml:3:3: stem node 'stem' is named like a value between modules")
