"""Stages that share one container, their blocks numbered across the network (naming.stages with no
{index} or {number}, naming.blocks {network_number} or {network_index}: torchvision's MobileNets,
features.1 ... features.17): the paths, the IR's stages, the backends' agreement, and the located
errors. Exactness against torchvision: tests/backends/test_tv_mobilenets.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support import assert_backends_agree

from rescompile import create_model
from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec, cost
from rescompile.spec.errors import RescompileError

NETWORK = """name: flat
input: {channels: 3, size: 33}
naming: {stages: features, blocks: "{network_number}"}
stem: flat
block: basic
shortcut: B
stages:
  - {depth: 2, width: 8}
  - {depth: 2, width: 16, stride: 2}
head: flat
"""
STEM = """name: flat
nodes:
  features.0.0: {op: conv, out_channels: 8, kernel: 3, stride: 2, padding: 1}
  features.0.1: {op: batch_norm}
"""
HEAD = """name: flat
nodes:
  features.5.0: {op: conv, out_channels: 32, kernel: 1}
  pool: {op: global_average_pool}
  flatten: {op: flatten}
  classifier: {op: linear, out_features: 10}
"""


def write(folder: Path, network: str = NETWORK, stem: str = STEM) -> Path:
    for kind, text in (("stems", stem), ("heads", HEAD)):
        (folder / kind).mkdir(exist_ok=True)
        (folder / kind / "flat.yaml").write_text(text)
    (folder / "net.yaml").write_text(network)
    return folder / "net.yaml"


def test_blocks_are_numbered_across_stages_in_the_one_container(tmp_path: Path) -> None:
    """Basic blocks with a projection where shapes change (features.3.downsample), beside the stem's
    features.0 and the head's features.5; each stage's path is its last block, where its output is read."""
    graph = compile_spec(write(tmp_path))
    assert [block.path for block in graph.blocks] == ["features.1", "features.2", "features.3", "features.4"]
    assert [(stage.path, stage.blocks, stage.container) for stage in graph.stages] == [
        ("features.2", ("features.1", "features.2"), "features"),
        ("features.4", ("features.3", "features.4"), "features"),
    ]
    keys = list(torch_backend.build_module(graph).state_dict())
    assert list(dict.fromkeys(".".join(key.split(".")[:2]) for key in keys)) == [
        *("features.0", "features.1", "features.2", "features.3", "features.4", "features.5"),
        *("classifier.weight", "classifier.bias"),
    ]
    assert "features.3.downsample.0.weight" in keys
    assert [totals.name for totals in cost(graph).group_by("stage")] == ["stem", "features.2", "features.4", "head"]
    assert_backends_agree(graph)


def test_network_index_counts_from_0_and_a_name_may_wrap_it(tmp_path: Path) -> None:
    network = NETWORK.replace('"{network_number}"', '"b{network_index}"')
    graph = compile_spec(write(tmp_path, network=network))
    assert [block.path for block in graph.blocks] == ["features.b0", "features.b1", "features.b2", "features.b3"]
    assert_backends_agree(graph)


def test_a_transition_stays_its_stages_own_attribute(tmp_path: Path) -> None:
    network = NETWORK.replace(
        "shortcut: B\n",
        "shortcut: {where_shapes_match: identity, where_shapes_change: projection}\ntransition: convnext_downsample\n",
    )
    graph = compile_spec(write(tmp_path, network=network))
    assert [(stage.path, stage.transition) for stage in graph.stages] == [
        ("features.2", None),
        ("features.4", "transition2"),
    ]
    assert [module.path for module in graph.modules[1:-1]] == [
        *("features.1", "features.2", "transition2", "features.3", "features.4"),
    ]
    assert_backends_agree(graph)


def test_a_stages_feature_map_is_its_last_block() -> None:
    model = create_model("tv_mobilenet_v2", features_only=True, out_indices=(1, 2))
    assert model.feature_info.module_name() == ["features.1", "features.3"]
    outputs = model(torch.zeros(1, 3, 64, 64))
    assert [tuple(map(int, out.shape)) for out in outputs] == [(1, 16, 32, 32), (1, 24, 16, 16)]


@pytest.mark.slow
def test_a_stages_flax_feature_map_is_its_last_block_in_network_order() -> None:
    """Flax finds the stages in network order though its model holds features.10 before features.3
    (by default tests/test_check.py runs tv_mobilenet_v2's blocks in flax)."""
    flax_model = create_model("tv_mobilenet_v2", "flax", features_only=True, out_indices=(2, 5))
    flax_outputs = flax_model(np.zeros((1, 64, 64, 3), np.float32))
    assert [tuple(map(int, out.shape)) for out in flax_outputs] == [(1, 16, 16, 24), (1, 4, 4, 96)]


@pytest.mark.parametrize(
    ("network", "stem", "message"),
    [
        (
            NETWORK.replace('blocks: "{network_number}"', 'blocks: "{index}"'),
            STEM,
            "net.yaml:3:9: naming: stages 'features' is one container every stage's blocks share: number them "
            "across the network, blocks '{network_number}' (or '{network_index}')",
        ),
        (
            NETWORK.replace("stages: features", 'stages: "layer{number}"'),
            STEM,
            "net.yaml:3:9: naming: blocks '{network_number}' numbers blocks across the network, which only blocks "
            "that share one container need: give stages a path without {index} or {number} (features)",
        ),
        (
            NETWORK.replace('"{network_number}"', '"{network_number}{index}"'),
            STEM,
            "net.yaml:3:36: naming.blocks: a block name holds exactly one of {index} (0, 1, ...), {number} (1, 2, "
            "...) or, counted across the network, {network_index} or {network_number}, and is one path segment: a "
            "number ({index}) or an identifier (b{number}) (got '{network_number}{index}')",
        ),
        (
            NETWORK,
            STEM.replace("features.0.1", "features.2.bn"),
            "stems/flat.yaml:4:3: stem node 'features.2.bn' would share the network module's attribute 'features' "
            "with a stage of the network; rename the node or change the network's naming.stages",
        ),
    ],
)
def test_bad_shared_numbering_is_a_located_error(
    network: str, stem: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, network=network, stem=stem)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert str(raised.value) == message
