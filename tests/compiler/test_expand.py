"""expand is pure: the loader reads every file first (load_parts), and expansion reads none."""

from __future__ import annotations

import builtins
import os
import re
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescompile.backends import flax_backend, torch_backend
from rescompile.backends.torch_backend import count_parameters
from rescompile.cli import main
from rescompile.compiler.cost import cost
from rescompile.compiler.expand import expand
from rescompile.compiler.ops import MAX_BLUR_TAPS, BlurPool
from rescompile.compiler.pipeline import compile_spec
from rescompile.compiler.weights import weight_shapes
from rescompile.spec.errors import RescompileError
from rescompile.spec.loader import load_network, load_parts, resolve_network


def test_expand_reads_no_file_and_gives_the_compiled_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    path = resolve_network("resnet50")
    network = load_network(path)
    parts = load_parts(network, path)

    def refuse(*arguments: object, **keywords: object) -> None:
        raise AssertionError(f"expand opened a file: {arguments}")

    with monkeypatch.context() as patched:
        for owner, name in ((builtins, "open"), (os, "open"), (Path, "open"), (Path, "read_text")):
            patched.setattr(owner, name, refuse)
        graph = expand(network, parts)
    assert graph == compile_spec("resnet50")


def test_load_parts_reads_each_stage_block_once_per_name() -> None:
    path = resolve_network("resnet18")
    parts = load_parts(load_network(path), path)
    assert len(parts.blocks) == 4
    assert all(block is parts.blocks[0] for block in parts.blocks)
    assert parts.policy == ("identity", "projection")
    assert list(parts.shortcuts) == ["projection"]


NETWORK = "name: net\ninput: {channels: 3, size: 32}\nstem: cifar\nblock: mine\nshortcut: B\n"
NETWORK += "stages:\n  - {depth: 1, width: 16}\n  - {depth: 1, width: 32, stride: 2}\n"
BLOCK = "name: mine\nout_channels: width\nnodes:\n"
BLOCK += "  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}\n"
BLOCK += "  add: {op: add, inputs: [conv1, shortcut]}\n"


@pytest.mark.parametrize(
    ("network", "parts", "expected"),
    [
        (
            # One block ending with flat features, read by a head of one linear layer: every node is read.
            NETWORK.replace("  - {depth: 1, width: 32, stride: 2}\n", "head: flat\n"),
            {
                "blocks/mine.yaml": BLOCK
                + "  pool: {op: global_average_pool}\n  flat: {op: flatten}\n  fc: {op: linear, out_features: width}\n",
                "heads/flat.yaml": "name: flat\nnodes:\n  fc: {op: linear, out_features: 10}\n",
            },
            "blocks/mine.yaml:8:3: block 'mine': node 'fc' is a linear layer, which the torch and flax backends "
            "cannot write in a block class",
        ),
        (
            NETWORK.replace("shortcut: B", "shortcut: {where_shapes_match: identity, where_shapes_change: odd}"),
            {
                "blocks/mine.yaml": BLOCK,
                "shortcuts/odd.yaml": "name: odd\nnodes:\n  '1': {op: conv, out_channels: out_channels, kernel: 1, "
                "stride: stride}\n  '0': {op: batch_norm}\n",
            },
            "shortcuts/odd.yaml:3:3: shortcut 'odd': node '1' is numbered, which only a chain of nodes named 0, 1, 2",
        ),
        (
            NETWORK.replace("shortcut: B", "shortcut: {where_shapes_match: other, where_shapes_change: projection}"),
            {
                "blocks/mine.yaml": BLOCK,
                "shortcuts/other.yaml": "name: other\nmodule: proj\nnodes:\n  conv: {op: conv, out_channels: "
                "out_channels, kernel: 1, stride: stride}\n",
            },
            "net.yaml:5:11: the network's shortcut kinds keep their layers under different names (downsample, proj)",
        ),
    ],
    ids=["linear-in-a-block", "numbered-shortcut-not-a-chain", "two-shortcut-modules"],
)
def test_what_a_source_backend_would_refuse_is_a_located_error_at_validate_time(
    network: str, parts: dict[str, str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "net.yaml").write_text(network)
    for name, text in parts.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert str(raised.value).startswith(expected), str(raised.value)


@pytest.mark.parametrize(
    ("setting", "expected_start", "expected_end"),
    [
        (
            "head_parameters: {classes: 0}",
            "net.yaml:9:28: head: nodes.fc.out_features = classes gives 0; it must be at least 1 (computed at ",
            "heads/classifier.yaml:9:34)",
        ),
        (
            # Through a derived value: inner_width = width * base_width // 64 * groups.
            "block_parameters: {base_width: 0}",
            "net.yaml:9:32: layer1.0: nodes.conv1.out_channels = inner_width gives 0; it must be at least 1 "
            "(computed at ",
            "blocks/bottleneck.yaml:22:35)",
        ),
    ],
    ids=["head-parameter", "derived-from-a-block-parameter"],
)
def test_an_error_in_a_built_in_part_is_located_at_the_users_line_that_set_the_value(
    setting: str, expected_start: str, expected_end: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = "name: net\ninput: {channels: 3, size: 32}\nstem: cifar\nblock: bottleneck\nshortcut: B\n"
    network += "stages:\n  - {depth: 1, width: 16}\nhead: classifier\n" + setting + "\n"
    (tmp_path / "net.yaml").write_text(network)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    message = str(raised.value)
    assert message.startswith(expected_start) and message.endswith(expected_end), message


def test_a_drop_path_rate_out_of_range_is_located_at_the_users_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """timm's schedule gives the last block the full rate: 1.5 is refused there, at the network's line."""
    network = "name: net\ninput: {channels: 3, size: 32}\nstem: cifar\nblock: basic\nshortcut: B\n"
    network += "stages:\n  - {depth: 2, width: 16}\nhead: classifier\nblock_parameters: {drop_path_rate: 1.5}\n"
    (tmp_path / "net.yaml").write_text(network)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    message = str(raised.value)
    start = (
        "net.yaml:9:36: layer1.1: nodes.drop_path.rate = block_drop_rate gives 1.5; it must be a number in [0.0, 1.0)"
    )
    assert message.startswith(start) and message.endswith("blocks/basic.yaml:17:36)"), message


def test_block_index_counts_blocks_over_the_whole_network() -> None:
    graph = compile_spec("resnet50", size=32)
    assert [block.parameter("block_index") for block in graph.blocks] == list(range(16))
    assert {block.parameter("block_count") for block in graph.blocks} == {16}


BLURRED = """name: t
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  blur: {op: blur_pool, taps: TAPS, padding: (TAPS - 1) // 2}
  add: {op: add, inputs: [blur, shortcut]}
"""
SMALL_NETWORK = """name: net
input: {channels: 3, size: 8}
stem: cifar
block: t
shortcut: B
stages:
  - {depth: 1, width: 4}
head: classifier
head_parameters: {classes: 10}
"""


@settings(max_examples=20, deadline=None)
@given(taps=st.one_of(st.integers(1, 100), st.integers(1, 10_000), st.just(MAX_BLUR_TAPS), st.just(4_001)))
def test_a_blur_pools_taps_are_capped_where_it_is_written(taps: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    """4,001 taps wrote a 1.5 GB ONNX file, 6,001 an EncodeError traceback: the filter is a constant
    no weight limit bounds."""
    folder = tmp_path_factory.mktemp("blur")
    (folder / "blocks").mkdir()
    (folder / "blocks" / "t.yaml").write_text(BLURRED.replace("TAPS", str(taps)))
    (folder / "net.yaml").write_text(SMALL_NETWORK)
    try:
        graph = compile_spec(folder / "net.yaml")
    except RescompileError as error:
        assert re.fullmatch(r"\S+:\d+:\d+: .+", str(error)), str(error)
        if taps > MAX_BLUR_TAPS:
            assert re.fullmatch(r"\S+blocks/t\.yaml:5:\d+: .+", str(error)), str(error)
            assert str(error).endswith(f"layer1.0: nodes.blur.taps = {taps} gives {taps:,}; it must be at most 64")
    else:
        assert taps <= MAX_BLUR_TAPS
        blur = graph.blocks[0].nodes[1].op
        assert isinstance(blur, BlurPool) and blur.taps == taps


IMAGE_NODES = (
    "{op: group_norm, groups: 1}",
    "{op: layer_norm}",
    "{op: conv, out_channels: 4, kernel: 1}",
    "{op: max_pool, kernel: 1}",
    "{op: blur_pool, taps: 1}",
    "{op: global_average_pool}",
    "{op: layer_scale}",
    "{op: pointwise_linear, out_channels: 4}",
    "{op: channel_conv, kernel: 3}",
    "{op: softmax, over: 2}",
)
FLAT_HEAD = """name: h
nodes:
  pool: {op: global_average_pool}
  flatten: {op: flatten}
  probe: NODE
  fc: {op: linear, out_features: 3}
"""


@settings(max_examples=15, deadline=None)
@given(node=st.sampled_from(IMAGE_NODES), where=st.sampled_from(["head", "block"]))
def test_a_nodes_shape_error_points_at_the_node(
    node: str, where: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An op given a value of the wrong rank is refused at its own line, whichever op it is and
    whether its op or its shape rule finds it (group_norm's pointed at the network's head: line,
    layer_norm's at the node)."""
    folder = tmp_path_factory.mktemp("shapes")
    (folder / "heads").mkdir()
    (folder / "blocks").mkdir()
    (folder / "heads" / "h.yaml").write_text(FLAT_HEAD.replace("NODE", node if where == "head" else "{op: relu}"))
    block = BLURRED.replace(
        "  blur: {op: blur_pool, taps: TAPS, padding: (TAPS - 1) // 2}", "  flat: {op: flatten}\n  probe: NODE"
    )
    (folder / "blocks" / "t.yaml").write_text(
        block.replace("NODE", node).replace("[blur, shortcut]", "[probe, shortcut]")
    )
    network = SMALL_NETWORK.replace("head: classifier", "head: h").replace("{classes: 10}", "{}")
    (folder / "net.yaml").write_text(network if where == "block" else network.replace("block: t", "block: basic"))
    with pytest.raises(RescompileError) as raised:
        compile_spec(folder / "net.yaml")
    file, label = ("heads/h.yaml:5:", "head") if where == "head" else ("blocks/t.yaml:6:", "layer1.0")
    assert re.fullmatch(rf"\S+{file}\d+: {label}: probe: .+", str(raised.value)), str(raised.value)


SHORTCUT_NAMED_APART = """\
name: NAME
nodes:
  '0': {op: conv, out_channels: out_channels, kernel: 1, stride: stride}
  '1': {op: batch_norm}
"""
NETWORK_WITH_PROJ = """\
name: n
input: {channels: 3, size: 8}
stem: cifar
block: basic
shortcut: {where_shapes_match: identity, where_shapes_change: proj}
stages:
  - {depth: 1, width: 4}
  - {depth: 2, width: 8, stride: 2}
head: classifier
head_parameters: {classes: 3}
"""


@pytest.mark.parametrize("name", ["other_name", "projection", "identity"])
def test_a_shortcut_named_apart_from_its_file_is_the_network_s_name_for_it(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shortcut file proj.yaml saying ``name: other_name``: its definition is the policy's 'proj',
    the name each block's shortcut has, so every backend finds it (torch and flax died with KeyError)."""
    (tmp_path / "shortcuts").mkdir()
    (tmp_path / "shortcuts" / "proj.yaml").write_text(SHORTCUT_NAMED_APART.replace("NAME", name))
    (tmp_path / "net.yaml").write_text(NETWORK_WITH_PROJ)
    graph = compile_spec(tmp_path / "net.yaml")
    assert [definition.name for definition in graph.definitions if definition.role == "shortcut"] == ["proj"]
    assert {block.shortcut for block in graph.blocks} == {"identity", "proj"}
    if name == "other_name":
        assert main(["check", str(tmp_path / "net.yaml")]) == 0
        assert "all backends agree" in capsys.readouterr().out
    else:
        for backend in (torch_backend, flax_backend):
            assert backend.count_parameters(backend.build_module(graph)) == cost(graph).parameters


CONVNEXT_NAMED = """\
name: n
input: {channels: 3, size: 16}
stem: convnext_patch
stem_parameters: {width: 8}
block: convnext
shortcut: identity
transition: convnext_downsample
naming: {stages: "STAGES", transitions: "TRANSITIONS"}
stages:
  - {depth: 1, width: 8}
  - {depth: 1, width: 16, stride: 2}
  - {depth: 1, width: 16, stride: 2}
head: convnext_head
head_parameters: {classes: 3}
"""
STAGE_PATTERNS = [
    "layer{number}",
    "layer{index}",
    "stages.{index}.blocks",
    "stages.{index}",
    "s{number}",
    "head{index}",
]
TRANSITION_PATTERNS = [*STAGE_PATTERNS, "layer{index}.down", "stages.{index}.downsample", "stem.{index}", "norm{index}"]


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(STAGE_PATTERNS), st.sampled_from(TRANSITION_PATTERNS))
def test_naming_either_places_every_attribute_apart_or_is_refused_located(stages: str, transitions: str) -> None:
    """A transition at another stage's path (stages layer{number}, transitions layer{index}) built
    self.layer1 twice in torch and flax: validate refuses it at the naming key."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "net.yaml"
        path.write_text(CONVNEXT_NAMED.replace("STAGES", stages).replace("TRANSITIONS", transitions))
        try:
            graph = compile_spec(path)
        except RescompileError as error:
            # At the naming key, or at a stem or head node the naming would share a path with.
            assert re.match(r"\S+\.yaml:\d+:\d+: ", str(error)), error
            return
    model = torch_backend.build_module(graph)
    keys = {key for key in model.state_dict() if not key.endswith("num_batches_tracked")}
    assert keys == set(weight_shapes(graph))
    assert count_parameters(model) == cost(graph).parameters


def test_a_transition_at_another_stage_s_path_is_refused_located(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(CONVNEXT_NAMED.replace("STAGES", "layer{number}").replace("TRANSITIONS", "layer{index}"))
    with pytest.raises(RescompileError) as raised:
        compile_spec(path)
    assert str(raised.value) == (
        f"{path}:8:9: stage 'layer1' and the transition 'layer1' of stage 'layer2' are both at 'layer1'; give "
        "naming.stages, naming.transitions and the stem's and head's nodes distinct paths"
    )


DISTINCT = """name: t
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  r{block_index}: {op: relu}
  add: {op: add, inputs: ["r{block_index}", shortcut]}
"""


@pytest.mark.slow
def test_blocks_that_each_unroll_differently_are_told_apart_in_linear_time(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Each instance was compared with every earlier kind: 3,000 blocks took 7.8 s, 10,000 far more."""
    folder = tmp_path_factory.mktemp("distinct")
    (folder / "blocks").mkdir()
    (folder / "blocks" / "t.yaml").write_text(DISTINCT)
    (folder / "net.yaml").write_text(SMALL_NETWORK.replace("depth: 1,", "depth: 3000,"))
    started = time.process_time()
    graph = compile_spec(folder / "net.yaml")
    assert len({block.type_name for block in graph.blocks}) == 3000
    assert time.process_time() - started < 30


ORDERED = """name: t
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  each:
    op: repeat
    index: i
    count: 2
    nodes:
      "r{i if block_index == 0 else 1 - i}": {op: relu}
  add: {op: add, inputs: ["r1 if block_index == 0 else r0", shortcut]}
"""


def test_two_unrollings_of_the_same_nodes_in_another_order_are_two_classes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The nodes' order is the data flow (a node without input reads the one before it)."""
    folder = tmp_path_factory.mktemp("ordered")
    (folder / "blocks").mkdir()
    (folder / "blocks" / "t.yaml").write_text(ORDERED)
    (folder / "net.yaml").write_text(SMALL_NETWORK.replace("depth: 1,", "depth: 2,"))
    graph = compile_spec(folder / "net.yaml")
    assert [block.type_name for block in graph.blocks] == ["t", "t_2"]


def test_two_block_types_of_identical_nodes_stay_two_classes(tmp_path: Path) -> None:
    """Block variants are told apart within a block type: a copy of a block under another name,
    with the same nodes and policy, is its own class (the variants of both were once one table)."""
    (tmp_path / "blocks").mkdir()
    basic = (Path(__file__).parents[2] / "architectures" / "blocks" / "basic.yaml").read_text()
    (tmp_path / "blocks" / "basic_copy.yaml").write_text(basic.replace("name: basic", "name: basic_copy"))
    (tmp_path / "net.yaml").write_text(
        "name: net\ninput: {channels: 3, size: 16}\nstem: cifar\nblock: basic\nshortcut: B\nstages:\n"
        "  - {depth: 1, width: 16}\n  - {depth: 1, width: 16, block: basic_copy}\nhead: classifier\n"
    )
    graph = compile_spec(tmp_path / "net.yaml")
    assert [block.type_name for block in graph.blocks] == ["basic", "basic_copy"]
    assert [definition.name for definition in graph.definitions if definition.role == "block"] == [
        "basic",
        "basic_copy",
    ]
