"""Multi-branch blocks (issue 11): the ops ``split`` (``channel_slice``), ``concat``, ``softmax`` and
the sum of several branches, and the templates that write them (``repeat``, ``when``,
placeholders, comprehensions). Variants the presets do not cover are compared with timm at small
sizes: Res2Net at two scales and as Res2NeXt, ResNeSt with cardinality 2 and radix 4 (where the
radix softmax's transposed layout matters) and with radix 1 (a sigmoid gate), SK-ResNeXt (the
selective-kernel bottleneck, grouped paths reading the whole input), and across every backend."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from support import assert_backends_agree, count_macs, randomise_normalisation
from torch.utils.flop_counter import FlopCounterMode

from rescompile.backends import flax_backend, torch_backend
from rescompile.backends.onnx_backend import SUPPORTED_OPSETS, emit_model, run_onnxruntime
from rescompile.backends.source import class_name, load_source
from rescompile.compiler import compile_spec, cost
from rescompile.compiler.ops import ChannelSlice, Concat, ShapeError, Softmax
from rescompile.compiler.weights import random_weights
from rescompile.spec.errors import RescompileError
from rescompile.testing import assert_close

SIZE = 64


def softmax_reference(values: np.ndarray, over: int, groups: int, transpose: bool) -> np.ndarray:
    """The stated semantics, by hand: channels viewed as (groups, over, rest), normalised across
    ``over``, laid out (over, groups, rest) when transposed."""
    batch, channels, height, width = values.shape
    viewed = values.reshape(batch, groups, over, channels // (groups * over), height, width).astype(np.float64)
    exponentials = np.exp(viewed - viewed.max(axis=2, keepdims=True))
    normalised = exponentials / exponentials.sum(axis=2, keepdims=True)
    if transpose:
        normalised = normalised.transpose(0, 2, 1, 3, 4, 5)
    result: np.ndarray = normalised.reshape(values.shape)
    return result


def test_shape_rules_of_the_new_ops() -> None:
    assert ChannelSlice(26, 52).output_shape(((104, 5, 5),)) == (26, 5, 5)
    assert Concat().output_shape(((26, 5, 5), (26, 5, 5), (52, 5, 5))) == (104, 5, 5)
    assert Softmax(over=2, groups=2, transpose=True).output_shape(((12, 1, 1),)) == (12, 1, 1)
    with pytest.raises(ShapeError, match="not a part"):
        ChannelSlice(100, 110).output_shape(((104, 5, 5),))
    with pytest.raises(ShapeError, match="one height and width"):
        Concat().output_shape(((26, 5, 5), (26, 3, 3)))
    with pytest.raises(ShapeError, match="divisible by 6"):
        Softmax(over=3, groups=2, transpose=False).output_shape(((8, 1, 1),))


@pytest.mark.parametrize("transpose", [False, True])
def test_generated_softmax_is_the_stated_semantics(transpose: bool) -> None:
    values = np.random.default_rng(0).standard_normal((2, 24, 3, 2)).astype(np.float32)
    namespace: dict[str, object] = {}
    exec(torch_backend.CHANNEL_SOFTMAX_CLASS, {"torch": torch, "nn": torch.nn}, namespace)
    layer = namespace["ChannelSoftmax"](3, 2, transpose)  # type: ignore[operator]
    actual = layer(torch.from_numpy(values)).numpy()
    assert_close(actual, softmax_reference(values, 3, 2, transpose), tolerance="same_framework", what="softmax")


def test_timms_radix_softmax_is_the_transposed_softmax() -> None:
    values = np.random.default_rng(1).standard_normal((2, 24, 1, 1)).astype(np.float32)
    radix_softmax = timm.layers.split_attn.RadixSoftmax(radix=4, cardinality=2)
    expected = radix_softmax(torch.from_numpy(values)).reshape(values.shape).numpy()
    assert_close(softmax_reference(values, 4, 2, True), expected, tolerance="same_framework", what="rsoftmax")


def test_the_new_ops_cost_no_macs_as_torchs_counter_counts_them() -> None:
    values = torch.randn(1, 8, 4, 4)
    namespace: dict[str, object] = {}
    exec(torch_backend.CHANNEL_SOFTMAX_CLASS, {"torch": torch, "nn": torch.nn}, namespace)
    with FlopCounterMode(display=False) as counter:
        torch.cat([values[:, :4], values[:, 4:]], 1)
        namespace["ChannelSoftmax"](2)(values)  # type: ignore[operator]
        values + values + values
    assert counter.get_total_flops() == 0
    assert ChannelSlice(0, 4).macs(((8, 4, 4),), (4, 4, 4)) == 0
    assert Softmax(2, 1, False).macs(((8, 4, 4),), (8, 4, 4)) == 0


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "skresnet18", "resnest50d"])
def test_macs_equal_forward_hook_counts_on_timms_module(name: str) -> None:
    reference = timm.create_model(name, pretrained=False)
    assert count_macs(reference.eval(), torch.zeros(1, 3, SIZE, SIZE)) == cost(compile_spec(name, size=SIZE)).macs


VARIANTS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    # A name for the test, the built-in it extends with overrides, timm's model and its overrides.
    "res2net_48w_2s": (
        "res2net50_26w_4s",
        "block_parameters: {base_width: 48, scale: 2}",
        "res2net50_48w_2s",
        {"layers": [2, 1, 1, 1]},
    ),
    "res2next_8x4_4s": (
        "res2net50_26w_4s",
        "block_parameters: {base_width: 4, cardinality: 8, scale: 4}",
        "res2next50",
        {"layers": [2, 1, 1, 1]},
    ),
    "resnest_4x24_1s_avd_first": (
        "resnest50d",
        "block_parameters: {radix: 1, cardinality: 4, base_width: 24, avd_first: true}",
        "resnest14d",
        {
            "layers": [2, 1, 1, 1],
            "cardinality": 4,
            "base_width": 24,
            "block_args": {"radix": 1, "avd": True, "avd_first": True},
        },
    ),
    "skresnext_32x4d": (
        "skresnet18",
        "block: selective_kernel_bottleneck\nblock_parameters: {cardinality: 32, base_width: 4, split_input: false, "
        "attention_ratio: 0.0625, attention_divisor: 32}",
        "skresnext50_32x4d",
        {"layers": [2, 1, 1, 1]},
    ),
    "resnest_2x40_4s_avd_first": (
        "resnest50d",
        "block_parameters: {radix: 4, cardinality: 2, base_width: 40, avd_first: true}",
        "resnest14d",
        {
            "layers": [2, 1, 1, 1],
            "cardinality": 2,
            "base_width": 40,
            "block_args": {"radix": 4, "avd": True, "avd_first": True},
        },
    ),
}
STAGES = """stages:
  - {depth: 2, width: 64}
  - {depth: 1, width: 128, stride: 2}
  - {depth: 1, width: 256, stride: 2}
  - {depth: 1, width: 512, stride: 2}
"""


def variant(tmp_path: Path, key: str) -> Path:
    base, overrides, _, _ = VARIANTS[key]
    path = tmp_path / f"{key}.yaml"
    path.write_text(f"name: {key}\nextends: {base}\n{overrides}\n{STAGES}")
    return path


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_variants_written_by_parameters_are_timms(tmp_path: Path, key: str) -> None:
    _, _, timm_name, timm_overrides = VARIANTS[key]
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, pretrained=False, **timm_overrides)
    randomise_normalisation(reference, seed=1)
    graph = compile_spec(variant(tmp_path, key), size=SIZE)
    model = torch_backend.build_module(graph)
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    assert cost(graph).parameters == sum(parameter.numel() for parameter in reference.parameters())
    assert count_macs(reference.eval(), torch.zeros(1, 3, SIZE, SIZE)) == cost(graph).macs
    inputs = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    for mode in ("eval", "train"):
        with torch.no_grad():
            expected = getattr(reference, mode)()(inputs)
            actual = getattr(model, mode)()(inputs)
        assert_close(actual.numpy(), expected.numpy(), tolerance="same_framework", what=f"{key} {mode}")


SMALL_RESNEST = """name: small_resnest
input: {channels: 3, size: 11}
stem: cifar
stem_parameters: {width: 8}
block: resnest_bottleneck
block_parameters: {radix: 4, cardinality: 2, avd_first: true}
shortcut: {where_shapes_match: identity, where_shapes_change: avg_down}
stages:
  - {depth: 1, width: 8}
  - {depth: 1, width: 16, stride: 2}
head: classifier
head_parameters: {classes: 3}
"""


def test_the_transposed_radix_softmax_agrees_in_every_backend(tmp_path: Path) -> None:
    (tmp_path / "net.yaml").write_text(SMALL_RESNEST)
    assert_backends_agree(compile_spec(tmp_path / "net.yaml"))


@pytest.mark.parametrize(
    ("name", "block", "container", "attribute"),
    [
        ("resnest50d", "ResnestBottleneckBlock", "SplitAttn", "conv2"),
        ("skresnet18", "SelectiveKernelBasicBlock", "SelectiveKernel", "conv1"),
    ],
)
def test_a_blocks_classes_are_written_as_timm_names_them(name: str, block: str, container: str, attribute: str) -> None:
    graph = compile_spec(name, size=SIZE)
    torch_source = torch_backend.emit_source(graph)
    assert f"class {container}(nn.Module):" in torch_source
    assert f"self.{attribute} = {container}(" in torch_source
    assert torch_source.count(f"class {container}(") == 1  # shared by the block's variants
    assert f"class {container}(nnx.Module):" in flax_backend.emit_source(graph)
    model = torch_backend.build_module(graph)
    assert type(model.get_submodule(f"layer1.0.{attribute}")).__name__ == container
    assert type(model.get_submodule("layer1.0")).__name__ == block


def test_a_class_that_is_not_self_contained_is_an_error(tmp_path: Path) -> None:
    block = BLOCK.replace("READ", "concat").replace(
        "out_channels: width\n", "out_channels: width\nclasses: {convs: Convs}\n"
    )
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "branches.yaml").write_text(block)  # convs.0 and convs.1 are both read outside
    (tmp_path / "net.yaml").write_text(NETWORK)
    with pytest.raises(RescompileError, match=r"branches\.yaml:4:\d+: .*only its last node"):
        compile_spec(tmp_path / "net.yaml")  # refused when validating, before any backend


def test_first_blocks_unroll_to_classes_of_their_own() -> None:
    source = torch_backend.emit_source(compile_spec("res2net50_26w_4s", size=SIZE))
    assert "class Bottle2neckBlock(nn.Module)" in source
    assert "class Bottle2neckFirstBlock(nn.Module)" in source
    assert "first_block=Bottle2neckFirstBlock" in source


BLOCK = """name: branches
parameters: {paths: 2}
out_channels: width
nodes:
  split: {op: split, parts: paths}
  each:
    op: repeat
    index: p
    count: paths
    nodes:
      convs.{p}: {op: conv, input: "split.{p}", out_channels: width // paths, kernel: 3, padding: 1}
  concat: {op: concat, inputs: ["convs.{p} for p in range(paths)"]}
  extra: {op: relu, input: concat, when: paths > 2}
  add: {op: add, inputs: [READ, shortcut]}
"""
NETWORK = """name: net
input: {channels: 3, size: 9}
stem: cifar
stem_parameters: {width: 8}
block: branches
shortcut: B
stages:
  - {depth: 1, width: 8}
head: classifier
head_parameters: {classes: 3}
"""


def test_reading_a_node_that_a_when_removed_is_a_located_error(tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "branches.yaml").write_text(BLOCK.replace("READ", "extra"))
    (tmp_path / "net.yaml").write_text(NETWORK)
    with pytest.raises(RescompileError) as raised:
        compile_spec(tmp_path / "net.yaml")
    assert "branches.yaml:14:" in str(raised.value)  # the add's line
    assert "reads 'extra', which is not an earlier node" in str(raised.value)


def test_a_repeat_and_a_split_unroll_to_named_nodes(tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "branches.yaml").write_text(BLOCK.replace("READ", "concat"))
    (tmp_path / "net.yaml").write_text(NETWORK)
    block = compile_spec(tmp_path / "net.yaml").blocks[0]
    assert [node.name for node in block.nodes] == ["split.0", "split.1", "convs.0", "convs.1", "concat", "add"]
    assert block.nodes[2].inputs == ("split.0",)
    assert [node.op for node in block.nodes[:2]] == [ChannelSlice(0, 4), ChannelSlice(4, 8)]


LISTED = """name: listed
out_channels: width
nodes:
  parts: {op: split, sizes: [2, width - 2], names: [narrow, wide]}
  narrow: {op: conv, input: parts.narrow, out_channels: 2, kernel: 1}
  wide: {op: conv, input: parts.wide, out_channels: width - 2, kernel: 3, padding: 1}
  joined: {op: concat, inputs: [narrow, wide]}
  add: {op: add, inputs: [joined, shortcut]}
"""


def test_a_split_into_listed_sizes_agrees_in_every_backend(tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "listed.yaml").write_text(LISTED)
    (tmp_path / "net.yaml").write_text(NETWORK.replace("block: branches", "block: listed"))
    graph = compile_spec(tmp_path / "net.yaml")
    assert [node.op for node in graph.blocks[0].nodes[:2]] == [ChannelSlice(0, 2), ChannelSlice(2, 8)]
    assert_backends_agree(graph)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("parts: paths}", "parts: paths, sizes: [4, 4]}", "a split states either parts (equal parts) or sizes"),
        ('input: "split.{p}"', 'input: "split.{p / 2}"', "gives 0.0; expected an integer or a string"),
        ("count: paths", "count: paths - 3", "gives -1; expected an integer of at least 0"),
        ("parts: paths}", "sizes: [3, 4]}", "split sizes add up to 7 channels; the input has 8"),
        ("parts: paths}", "parts: paths, names: [a]}", "a split into 2 parts names 1"),
        ("when: paths > 2", "when: widht > 2", "unknown name 'widht'"),
    ],
)
def test_template_mistakes_are_located_errors(tmp_path: Path, old: str, new: str, message: str) -> None:
    block = BLOCK.replace("READ", "concat")
    assert old in block
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "branches.yaml").write_text(block.replace(old, new))
    (tmp_path / "net.yaml").write_text(NETWORK)
    with pytest.raises(RescompileError) as raised:
        compile_spec(tmp_path / "net.yaml")
    assert message in str(raised.value)
    assert re.match(r"\S*blocks/branches\.yaml:\d+:\d+: ", str(raised.value))  # located in the block file


@pytest.mark.parametrize("opset", [SUPPORTED_OPSETS[0], SUPPORTED_OPSETS[-1]])
def test_the_new_ops_lower_exactly_in_the_oldest_and_newest_opsets(tmp_path: Path, opset: int) -> None:
    """Softmax normalised over its last axis only (before opset 13 it flattens from ``axis`` on),
    Slice on channels, Concat, and Sum for a sum of four splits."""
    (tmp_path / "net.yaml").write_text(SMALL_RESNEST)
    graph = compile_spec(tmp_path / "net.yaml")
    weights = random_weights(graph, seed=0)
    inputs = np.random.default_rng(1).standard_normal((2, *graph.input_shape)).astype(np.float32)
    model = emit_model(graph, weights, opset=opset)
    expected = torch_backend.module_outputs(graph, weights, inputs)["head"]
    assert_close(run_onnxruntime(model, inputs), expected, tolerance="network", what=f"opset {opset}")


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "resnest50d", "skresnet18"])
def test_what_a_class_was_unrolled_for_is_fixed_in_it_not_a_parameter(name: str) -> None:
    """Res2Net's Bottle2neckBlock took ``scale: int = 4`` with a body unrolled for 4 (scale=2 failed
    with a size mismatch): every parameter the unrolling read is a constant of the class, and every
    constructor parameter left is its body's to honour."""
    graph = compile_spec(name, size=SIZE)
    generated = load_source(torch_backend.emit_source(graph), "torch", name)
    for definition in (item for item in graph.definitions if item.role == "block"):
        assert definition.fixed, definition.name
        block = next(module for module in graph.blocks if module.type_name == definition.name)
        cls = getattr(generated, class_name(definition.name, "Block"))
        signature = inspect.signature(cls)
        assert not {key for key, _ in definition.fixed} & set(signature.parameters)
        for key, value in definition.fixed:
            with pytest.raises(TypeError):
                cls(block.in_shape[0], block.parameter("width"), **{key: value})
        # The parameters it keeps are honoured: a block built with other values runs.
        kept = {key: value for key, value in definition.parameters if key in signature.parameters}
        changed = {key: value * 2 for key, value in kept.items() if type(value) is int}
        for key, value in changed.items():
            # A shortcut of 0 (it broadcasts): the branch alone is under test.
            zero = torch.nn.Module()
            zero.forward = lambda x: torch.zeros(())
            stride = block.parameter("stride")
            other = cls(block.in_shape[0], block.parameter("width"), stride, zero, **{key: value}).eval()
            with torch.no_grad():
                output = other(torch.zeros((1, block.in_shape[0], 8, 8)))
            assert output.shape[0] == 1, key


SCALED = """name: scaled
parameters: {k: 2}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width * k, kernel: 1, stride: stride}
  bn1: {op: batch_norm}
  extra: {op: relu, when: k > 1}
  conv2: {op: conv, out_channels: width, kernel: 1}
  add: {op: add, inputs: [conv2, shortcut]}
  relu: {op: relu}
"""


def test_unrollings_for_different_values_are_classes_of_their_own(tmp_path: Path) -> None:
    """Two stages unroll ``scaled`` to the same nodes for k = 2 and k = 3: the class is made for its
    k, so each value gets a class (k a constant in it) and all backends agree."""
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "scaled.yaml").write_text(SCALED)
    network = NETWORK.replace("block: branches", "block: scaled").replace(
        "  - {depth: 1, width: 8}\n",
        "  - {depth: 2, width: 8}\n  - {depth: 2, width: 8, stride: 2, block_parameters: {k: 3}}\n",
    )
    (tmp_path / "net.yaml").write_text(network)
    graph = compile_spec(tmp_path / "net.yaml")
    assert [definition.fixed for definition in graph.definitions if definition.role == "block"] == [
        (("k", 2),),
        (("k", 3),),
    ]
    source = torch_backend.emit_source(graph)
    assert "k: int" not in source and "        k = 2\n" in source and "        k = 3\n" in source
    assert_backends_agree(graph)
