"""The torch backend against the real torchvision, and its properties on generated specs."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import COMPILE_TEST_PRESETS, builtin_params, compiled, network_params, network_source
from hypothesis import assume, given
from support import count_macs, randomise_normalisation
from torch.utils.flop_counter import FlopCounterMode

from rescompile.backends import torch_backend
from rescompile.backends.interface import module_names
from rescompile.compiler import compile_spec, cost, lower_spec
from rescompile.compiler.weights import random_weights
from rescompile.spec import builtin_networks
from rescompile.spec.models import NetworkSpec
from rescompile.testing import assert_close, network_specs

GOLDEN = Path(__file__).parent.parent / "golden"
TORCHVISION_MODELS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
]


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_loads_torchvision_state_dict_strictly_and_gives_its_outputs(name: str) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    randomise_normalisation(reference, seed=1)
    model = torch_backend.build_module(compile_spec(name)).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    assert list(model.state_dict()) == list(reference.state_dict())
    inputs = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(model(inputs).numpy(), reference(inputs).numpy(), tolerance="same_framework", what=name)


@pytest.mark.parametrize("size", [224, 97])
def test_tv_efficientnet_b0_is_torchvisions_efficientnet_b0(size: int) -> None:
    """Keys in torchvision's order (features.0.0 stem, features.1.0.block.0.0, features.8.0 head
    conv, classifier.1), its parameters and MACs, eval and train-mode outputs. Like every built-in,
    it has no stochastic depth by default, and torchvision's classifier dropout is not written: the
    reference is built with both off (test_efficientnet.py checks torchvision's 0.2 stochastic depth)."""
    torch.manual_seed(0)
    reference = torchvision.models.efficientnet_b0(weights=None, dropout=0.0, stochastic_depth_prob=0.0)
    randomise_normalisation(reference, seed=1)
    graph = compile_spec("tv_efficientnet_b0", size=size)
    model = torch_backend.build_module(graph)
    model.load_state_dict(reference.state_dict(), strict=True)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert cost(graph).parameters == sum(parameter.numel() for parameter in reference.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference.eval()(torch.zeros(1, 3, size, size))
    assert counter.get_total_flops() == 2 * cost(graph).macs
    inputs = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for mode in ("eval", "train"):
            expected, actual = getattr(reference, mode)()(inputs), getattr(model, mode)()(inputs)
            assert_close(actual.numpy(), expected.numpy(), tolerance="same_framework", what=f"{mode} at {size}")


@pytest.mark.parametrize("name", builtin_params(builtin_networks()))
def test_built_module_has_the_cost_pass_parameters_and_macs(name: str) -> None:
    """Costs are counted op by op, so the part-covering built-ins prove it by default; all in the slow tail."""
    graph = compiled(name, size=32)
    report = cost(graph)
    model = torch_backend.build_module(graph).eval()
    assert torch_backend.count_parameters(model) == report.parameters
    inputs = torch.zeros(1, *graph.input_shape)
    # torch's own FLOP counter (2 per multiply-accumulate) sees functional convolutions too: the
    # blur pools' fixed filters, which no module hook sees.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(inputs)
    assert counter.get_total_flops() == 2 * report.macs


def test_torchvision_macs_at_224_match_the_cost_pass() -> None:
    graph = compile_spec("resnet50")
    reference = torchvision.models.resnet50(weights=None).eval()
    assert count_macs(reference, torch.zeros(1, 3, 224, 224)) == cost(graph).macs


def test_generated_resnet50_source_matches_the_golden_file() -> None:
    """Regenerate after an intended change with RESCOMPILE_UPDATE_GOLDEN=1."""
    source = torch_backend.emit_source(compile_spec("resnet50"))
    golden = GOLDEN / "resnet50_torch.py"
    if os.environ.get("RESCOMPILE_UPDATE_GOLDEN"):
        golden.write_text(source)
    assert source == golden.read_text()
    assert source == torch_backend.emit_source(compile_spec("resnet50")), "emission must be deterministic"


def test_written_file_runs_with_torch_alone(tmp_path: Path) -> None:
    graph = compile_spec("resnet20")
    (tmp_path / "model.py").write_text(torch_backend.emit_source(graph))
    weights = random_weights(graph, seed=3)
    reference = torch_backend.build_module(graph).eval()
    torch_backend.load_weights(reference, graph, weights)
    torch.save(reference.state_dict(), tmp_path / "state.pt")
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.save(inputs, tmp_path / "inputs.pt")
    script = (
        "import sys, torch, model\n"
        "net = model.build().eval()\n"
        "net.load_state_dict(torch.load('state.pt'), strict=True)\n"
        "torch.save(net(torch.load('inputs.pt')).detach(), 'outputs.pt')\n"
        "assert not any(name.startswith('rescompile') for name in sys.modules), 'imported rescompile'\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    with torch.no_grad():
        expected = reference(inputs)
    assert torch.equal(torch.load(tmp_path / "outputs.pt"), expected)


def test_zero_init_residual_zeroes_exactly_the_marked_batch_norms() -> None:
    model = torch_backend.build_module(compile_spec("resnet50"), zero_init_residual=True)
    state = model.state_dict()
    zeroed = sorted(name for name, tensor in state.items() if name.endswith(".weight") and tensor.abs().sum() == 0)
    assert zeroed == sorted(
        f"layer{stage}.{index}.bn3.weight"
        for stage, depth in zip(range(1, 5), [3, 4, 6, 3], strict=True)
        for index in range(depth)
    )


@given(network_specs())
def test_torch_shapes_equal_the_inferred_shapes(spec: NetworkSpec) -> None:
    graph = lower_spec(spec)
    model = torch_backend.build_module(graph).eval()
    inputs = np.random.default_rng(0).standard_normal((2, *graph.input_shape), np.float32)
    outputs = torch_backend.block_outputs(model, graph, inputs)
    for module, name in zip(graph.modules, module_names(graph), strict=True):
        assert module.out_shape is not None
        assert outputs[name].shape == (2, *module.out_shape), name
    assert torch_backend.count_parameters(model) == cost(graph).parameters


@given(network_specs(shortcuts=("A", "B", "C", "projection_where_needed")))
def test_zero_initialised_branch_makes_identity_blocks_relu_of_their_input(spec: NetworkSpec) -> None:
    graph = lower_spec(spec)
    identity_blocks = [block for block in graph.blocks if block.shortcut == "identity"]
    assume(identity_blocks)  # the property is about identity-shortcut blocks: never pass vacuously
    model = torch_backend.build_module(graph, zero_init_residual=True)
    inputs = np.random.default_rng(0).standard_normal((3, *graph.input_shape), np.float32)
    names = module_names(graph)
    for mode in ("eval", "train"):
        model.train(mode == "train")
        outputs = torch_backend.block_outputs(model, graph, inputs)
        for block in identity_blocks:
            block_input = outputs[names[names.index(block.path) - 1]]
            block_output = outputs[block.path]
            assert np.array_equal(block_output, np.maximum(block_input, 0)), (mode, block.path)
            # Block inputs come out of a ReLU, so they are >= 0 and the block is exactly the identity.
            assert np.array_equal(block_output, block_input), (mode, block.path)


@pytest.mark.parametrize(
    "name",
    network_params(
        # resnet1202's fresh eval-mode activations overflow float32 (NaN in any mode of running).
        [name for name in builtin_networks() if name != "resnet1202"],
        COMPILE_TEST_PRESETS,
    ),
)
def test_the_generated_module_compiles_without_graph_breaks_and_exports(name: str, tmp_path: Path) -> None:
    """torch.compile(fullgraph=True) refuses any graph break (dynamo's tracing; the "eager" backend
    skips code generation, which needs a C++ compiler); torch.export gives the AOT route to ONNX."""
    graph = compile_spec(network_source(name, tmp_path), size=32)
    model = torch_backend.build_module(graph).eval()
    inputs = torch.randn(2, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(inputs)
        compiled = torch.compile(model, fullgraph=True, backend="eager")(inputs)
        exported = torch.export.export(model, (inputs,)).module()(inputs)
    assert_close(compiled.numpy(), expected.numpy(), tolerance="same_framework", what="compiled")
    assert_close(exported.numpy(), expected.numpy(), tolerance="same_framework", what="exported")


@pytest.mark.parametrize(
    "name",
    network_params(builtin_networks(), COMPILE_TEST_PRESETS),
)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_the_built_module_scripts_and_pickles(name: str, tmp_path: Path) -> None:
    """torch.jit.script reads every generated class's source (kept in linecache) and compiles it
    (no super().forward, which TorchScript refuses); pickling reduces each class to its source. The
    inference lowering too: its BatchNorm-folding load hook is a partial, not a closure."""
    graph = compile_spec(network_source(name, tmp_path), size=32)
    inputs = torch.randn(2, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # A freshly initialised 1202-layer network overflows float32 in eval mode (as torchvision's
        # would: each block adds its branch at full scale); NaN equals nothing, so such a network is
        # compared with its residual branches zero-initialised, every layer still run.
        zero_init = not bool(torch.isfinite(torch_backend.build_module(graph).eval()(inputs)).all())
    trained_form = torch_backend.build_module(graph, zero_init).eval()
    lowered = torch_backend.build_module(graph, inference=True).eval()
    lowered.load_state_dict(trained_form.state_dict())  # canonical weights, folded on load
    for model in (trained_form, lowered):
        with torch.no_grad():
            expected = model(inputs).numpy()
            assert np.isfinite(expected).all(), name
            for copy in (torch.jit.script(model), pickle.loads(pickle.dumps(model))):
                assert_close(copy(inputs).numpy(), expected, tolerance="same_framework", what=name)
