"""Stem and head nodes may live in the stages' container (torchvision's ``features``: the stem at
``features.0``, the stages at ``features.1`` ..., the head's conv after them): every backend builds
the one container once, the keys keep the nodes' order, and the backends agree. A node at a stage's
path or inside it stays a located error (one holding it: tests/spec/test_structure_features.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import assert_backends_agree

from rescompile import create_model
from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec
from rescompile.spec.errors import RescompileError

NETWORK = """name: shared
input: {channels: 3, size: 33}
naming: {stages: "features.{number}"}
stem: shared
block: basic
shortcut: B
stages:
  - {depth: 1, width: 8}
  - {depth: 1, width: 16, stride: 2}
head: shared
"""
STEM = """name: shared
nodes:
  features.0.0: {op: conv, out_channels: 8, kernel: 3, stride: 2, padding: 1}
  features.0.1: {op: batch_norm}
  features.0.2: {op: relu}
"""
HEAD = """name: shared
nodes:
  features.3.0: {op: conv, out_channels: 32, kernel: 1}
  features.3.1: {op: batch_norm}
  pool: {op: global_average_pool}
  flatten: {op: flatten}
  classifier.1: {op: linear, out_features: 10}
"""


def write(folder: Path, stem: str = STEM, head: str = HEAD) -> Path:
    for kind, text in (("stems", stem), ("heads", head)):
        (folder / kind).mkdir(exist_ok=True)
        (folder / kind / "shared.yaml").write_text(text)
    (folder / "net.yaml").write_text(NETWORK)
    return folder / "net.yaml"


def test_stem_stages_and_head_share_one_container_in_node_order(tmp_path: Path) -> None:
    graph = compile_spec(write(tmp_path))
    keys = list(torch_backend.build_module(graph).state_dict())
    prefixes = list(dict.fromkeys(".".join(key.split(".")[:2]) for key in keys))
    assert prefixes == ["features.0", "features.1", "features.2", "features.3", "classifier.1"]
    assert_backends_agree(graph)


def test_the_stems_feature_map_is_named_by_its_item_of_the_shared_container() -> None:
    model = create_model("tv_efficientnet_b0", features_only=True, out_indices=(0, 1))
    assert model.feature_info.module_name() == ["features.0", "features.1"]
    assert [tuple(map(int, out.shape)) for out in model(torch.zeros(1, 3, 64, 64))] == [
        (1, 32, 32, 32),
        (1, 16, 32, 32),
    ]


@pytest.mark.parametrize(
    ("stem", "message"),
    [
        (
            STEM.replace("features.0.0", "features.1"),
            "stems/shared.yaml:3:3: stem node 'features.1' would share the network module's attribute 'features' "
            "with a stage of the network; rename the node or change the network's naming.stages",
        ),
        (
            STEM.replace("features.0.0", "features.2.conv"),
            "stems/shared.yaml:3:3: stem node 'features.2.conv' would share the network module's attribute "
            "'features' with a stage of the network; rename the node or change the network's naming.stages",
        ),
    ],
)
def test_a_node_at_a_stage_or_inside_it_is_a_located_error(
    stem: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, stem=stem)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert str(raised.value) == message


def test_a_head_node_inside_a_stem_node_is_a_located_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, head=HEAD.replace("features.3.1", "features.0.0.bn"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert str(raised.value) == (
        "heads/shared.yaml:4:3: head node 'features.0.0.bn' would share the network module's attribute 'features' "
        "with a node of the stem; rename the node"
    )
