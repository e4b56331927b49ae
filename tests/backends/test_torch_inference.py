"""The torch backend's inference lowering (``--inference``): BatchNorm folded into the convs as
canonical weights load, channels_last. It computes what the unlowered module computes, for every
built-in, and loads torchvision's state_dict as it is."""

import pytest
import torch
import torchvision
from support import layer, randomise_normalisation

from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec
from rescompile.compiler.ir import BatchNorm
from rescompile.compiler.pipeline import lower_for_inference
from rescompile.compiler.weights import random_weights
from rescompile.spec import builtin_networks
from rescompile.testing import assert_close

LOWERING_DEFAULT = {"resnet20", "resnetblur50", "ecaresnet50d", "resnetv2_50x1_bit", "preact_resnet110", "resnet50d"}
"""Built-ins whose ops between them cover every op kind (as the compile test's): checked in the
default run, the rest in the slow tail."""


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=[] if name in LOWERING_DEFAULT else [pytest.mark.slow]) for name in builtin_networks()],
)
def test_the_lowered_module_loads_canonical_weights_and_computes_the_unlowered_function(name: str) -> None:
    graph = compile_spec(name, size=32)
    weights = random_weights(graph, seed=1)
    model = torch_backend.build_module(graph).eval()
    torch_backend.load_weights(model, graph, weights)
    lowered = torch_backend.build_module(graph, inference=True).eval()
    torch_backend.load_weights(lowered, graph, weights)  # strict: every canonical key consumed
    # Only BatchNorms that read no conv (pre-activation ones) stay.
    unfolded = sum(isinstance(node.op, BatchNorm) for _, node in lower_for_inference(graph).nodes())
    assert sum(isinstance(module, torch.nn.BatchNorm2d) for module in lowered.modules()) == unfolded
    inputs = torch.randn(2, *graph.input_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(inputs)
        actual = lowered(inputs)
    assert torch.isfinite(expected).all()
    assert actual.is_contiguous(memory_format=torch.channels_last) or actual.ndim == 2
    assert_close(actual.numpy(), expected.numpy(), tolerance="network", what=name)


def test_the_lowered_resnet50_loads_torchvision_state_dict_strictly_and_gives_its_outputs() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    randomise_normalisation(reference, seed=1)
    lowered = torch_backend.build_module(compile_spec("resnet50"), inference=True).eval()
    lowered.load_state_dict(reference.state_dict(), strict=True)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in lowered.modules())
    assert layer(lowered, "conv1.weight").is_contiguous(memory_format=torch.channels_last)
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(lowered(inputs).numpy(), reference(inputs).numpy(), tolerance="network")


def test_a_lowered_module_state_dict_is_folded_and_loads_back_unchanged() -> None:
    graph = compile_spec("resnet18", size=32)
    lowered = torch_backend.build_module(graph, inference=True).eval()
    torch_backend.load_weights(lowered, graph, random_weights(graph, seed=3))
    state = lowered.state_dict()
    assert "layer1.0.conv1.bias" in state and "layer1.0.bn1.weight" not in state
    again = torch_backend.build_module(graph, inference=True).eval()
    again.load_state_dict(state, strict=True)
    assert all(torch.equal(tensor, again.state_dict()[name]) for name, tensor in state.items())


def test_the_generated_file_says_what_was_lowered() -> None:
    source = torch_backend.emit_source(compile_spec("resnet50"), inference=True)
    docstring = source.split('"""')[1]
    assert "Lowered for inference" in docstring
    assert "BatchNorm" in docstring and "channels_last" in docstring
    assert "nn.BatchNorm2d(" not in source
    assert 'fold_batch_norms_on_load(self, {"conv1": ("bn1", 1e-05)})' in source


@pytest.mark.parametrize("name", ["resnet20", "resnet50d"])
def test_the_lowered_module_compiles_without_graph_breaks_and_exports(name: str) -> None:
    graph = compile_spec(name, size=32)
    lowered = torch_backend.build_module(graph, inference=True).eval()
    torch_backend.load_weights(lowered, graph, random_weights(graph, seed=1))
    inputs = torch.randn(2, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = lowered(inputs)
        compiled = torch.compile(lowered, fullgraph=True, backend="eager")(inputs)
        exported = torch.export.export(lowered, (inputs,)).module()(inputs)
    assert_close(compiled.numpy(), expected.numpy(), tolerance="same_framework", what="compiled")
    assert_close(exported.numpy(), expected.numpy(), tolerance="same_framework", what="exported")
