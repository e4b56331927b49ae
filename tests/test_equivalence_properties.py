"""Property suite over every backend (issue 5): for generated specs across all block and shortcut
kinds, every backend has the IR's shapes and the cost pass's parameter count, all backends agree
numerically, and zero-initialised residual branches reduce blocks to the identity everywhere.

Bounded by the `ci` Hypothesis profile; `HYPOTHESIS_PROFILE=thorough` draws many more examples.
"""

import numpy as np
import numpy.typing as npt
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rescompile.backends.interface import Outputs, module_names
from rescompile.backends.registry import BACKENDS
from rescompile.check import check
from rescompile.compiler import Graph, cost, lower_spec
from rescompile.compiler.weights import Weights, initial_weights, random_weights, weight_shapes
from rescompile.spec import load_network
from rescompile.spec.models import InputSpec, NetworkSpec
from rescompile.testing import TOLERANCES, network_specs

SMALL = {"widths": (4, 8), "max_size": 24, "max_depth": 2}
RESIDUAL_POLICIES = ("A", "B", "C", "projection_where_needed")


def inputs_for(graph: Graph, seed: int, batch: int = 2) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((batch, *graph.input_shape)).astype(np.float32)


def run_all(graph: Graph, weights: Weights, inputs: npt.NDArray[np.float32]) -> dict[str, Outputs]:
    return {name: backend.module_outputs(graph, weights, inputs) for name, backend in BACKENDS.items()}


@given(network_specs(**SMALL), st.integers(0, 2**16))
def test_every_backend_has_the_ir_shapes_and_all_agree(spec: NetworkSpec, seed: int) -> None:
    graph = lower_spec(spec)
    inputs = inputs_for(graph, seed)
    weights = random_weights(graph, seed)
    outputs = run_all(graph, weights, inputs)
    for backend, modules in outputs.items():
        assert list(modules) == module_names(graph), backend
        for module, name in zip(graph.modules, module_names(graph), strict=True):
            assert modules[name].shape == (2, *module.out_shape), (backend, name)
    result = check(graph, tuple(BACKENDS), dict.fromkeys(BACKENDS, weights), inputs, TOLERANCES["network"])
    assert result.agree, [pair for pair in result.pairs if not pair.agree]


@settings(max_examples=5)
@given(network_specs(**SMALL))
def test_every_backend_counts_the_cost_pass_parameters(spec: NetworkSpec) -> None:
    graph = lower_spec(spec)
    expected = cost(graph).parameters
    for name, backend in BACKENDS.items():
        # As each framework itself counts them.
        assert backend.count_parameters(backend.build(graph)) == expected, name


@given(network_specs(shortcuts=RESIDUAL_POLICIES, **SMALL), st.integers(0, 2**16))
def test_zero_initialised_branches_make_identity_blocks_the_identity_in_every_backend(
    spec: NetworkSpec, seed: int
) -> None:
    graph = lower_spec(spec)
    names = module_names(graph)
    identity = [index for index, module in enumerate(graph.modules) if module.shortcut == "identity"]
    assume(identity)
    weights = initial_weights(graph, seed, zero_init_residual=True)
    for backend, modules in run_all(graph, weights, inputs_for(graph, seed)).items():
        for index in identity:
            block_input, block_output = modules[names[index - 1]], modules[names[index]]
            # relu(x) == x here: block inputs come out of a ReLU. Exact, not within a tolerance.
            assert np.array_equal(block_output, np.maximum(block_input, 0)), (backend, names[index])
            assert np.array_equal(block_output, block_input), (backend, names[index])


def without_identity_blocks(spec: NetworkSpec, graph: Graph) -> NetworkSpec:
    """The same network minus every identity-shortcut block. Only a stage's first block can change
    shapes, so a stage keeps its first block (if that one projects or pads) or disappears."""
    stages = []
    for index, stage in enumerate(spec.stages):
        first = next(block for block in graph.blocks if block.path == f"layer{index + 1}.0")
        if first.shortcut != "identity":
            stages.append(stage.model_copy(update={"depth": 1}))
    return spec.model_copy(update={"stages": tuple(stages)})


def renamed_weights(weights: Weights, graph: Graph, reduced: Graph) -> Weights:
    """Carry weights over to the reduced network, whose stages and blocks are renumbered."""
    kept = [module for module in graph.modules if module.role != "block" or module.shortcut != "identity"]
    assert len(kept) == len(reduced.modules)
    mapping = {
        old.canonical(node.name): new.canonical(node.name)
        for old, new in zip(kept, reduced.modules, strict=True)
        for node in old.nodes
    }
    return {
        name.replace(prefix, mapping[prefix], 1): array
        for name, array in weights.items()
        for prefix in [name.rsplit(".", 1)[0]]
        if prefix in mapping
    }


@given(network_specs(shortcuts=RESIDUAL_POLICIES, **SMALL), st.integers(0, 2**16))
def test_all_zero_initialised_network_equals_it_with_identity_blocks_removed(spec: NetworkSpec, seed: int) -> None:
    graph = lower_spec(spec)
    assume(any(block.shortcut == "identity" for block in graph.blocks))
    reduced_spec = without_identity_blocks(spec, graph)
    assume(reduced_spec.stages)  # a network needs one stage; all-identity ones have nothing to compare
    reduced = lower_spec(reduced_spec)
    weights = initial_weights(graph, seed, zero_init_residual=True)
    reduced_weights = renamed_weights(weights, graph, reduced)
    inputs = inputs_for(graph, seed)
    for name, backend in BACKENDS.items():
        full = backend.module_outputs(graph, weights, inputs)["head"]
        short = backend.module_outputs(reduced, reduced_weights, inputs)["head"]
        assert np.array_equal(full, short), name


def test_removing_identity_blocks_from_resnet18_keeps_three_projecting_blocks() -> None:
    spec = load_network("resnet18").spec.model_copy(update={"input": InputSpec(channels=3, size=32)})
    graph = lower_spec(spec)
    reduced_spec = without_identity_blocks(spec, graph)
    # layer1 (stride 1, 64 -> 64 channels) is identity blocks only and disappears.
    assert [(stage.width, stage.depth) for stage in reduced_spec.stages] == [(128, 1), (256, 1), (512, 1)]
    reduced = lower_spec(reduced_spec)
    assert set(renamed_weights(initial_weights(graph), graph, reduced)) == set(weight_shapes(reduced))
