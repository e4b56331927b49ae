"""timm's interface read from the graph: the head's sections and the feature maps, by hand for the
stems timm has no model of (timm's own are compared in tests/test_api.py)."""

from __future__ import annotations

import dataclasses

from support import infer_shapes

from rescompile.backends import torch_backend
from rescompile.backends.source import load_source
from rescompile.backends.surface import feature_points, forward_paths, head_sections
from rescompile.compiler.ir import AvgPool
from rescompile.compiler.pipeline import compile_spec


def test_a_cifar_net_maps_its_stem_and_stages() -> None:
    """resnet20's stem never downsamples: its map is the stem's output at reduction 1."""
    graph = compile_spec("resnet20")
    assert [point.as_dict() for point in feature_points(graph)] == [
        {"num_chs": 16, "reduction": 1, "module": "relu"},
        {"num_chs": 16, "reduction": 1, "module": "layer1"},
        {"num_chs": 32, "reduction": 2, "module": "layer2"},
        {"num_chs": 64, "reduction": 4, "module": "layer3"},
    ]
    assert forward_paths(graph) == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3"]


def test_a_pre_activation_head_ends_forward_features() -> None:
    sections = head_sections(compile_spec("preact_resnet110"))
    assert sections is not None
    assert [node.name for node in sections.features] == ["final_bn", "final_relu"]
    assert (sections.pool.name, sections.classifier.name, sections.num_features) == ("avgpool", "fc", 64)


def test_a_head_without_a_global_pool_has_no_timm_interface() -> None:
    """An 8×8 average pool for the global one: the model is written as before, forward alone."""
    graph = compile_spec("resnet20")
    head = graph.modules[-1]
    pool = AvgPool(kernel=(8, 8), stride=(8, 8), padding=((0, 0), (0, 0)), ceil_mode=False, count_include_pad=True)
    nodes = tuple(
        dataclasses.replace(node, op=pool) if node.op.kind == "global_average_pool" else node for node in head.nodes
    )
    graph = infer_shapes(
        dataclasses.replace(graph, modules=(*graph.modules[:-1], dataclasses.replace(head, nodes=nodes)))
    )
    assert head_sections(graph) is None and forward_paths(graph) is None
    source = torch_backend.emit_source(graph)
    assert "def forward_features" not in source and "def forward(self" in source
    assert load_source(source, "torch", "no_global_pool").ResNet().fc.out_features == 10
