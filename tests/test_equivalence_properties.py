"""Property suite over every backend (issue 5): for generated specs across all block and shortcut
kinds, every backend has the IR's shapes and the cost pass's parameter count, all backends agree
numerically, and zero-initialised residual branches reduce blocks to the identity everywhere.

Bounded by the `ci` Hypothesis profile; `HYPOTHESIS_PROFILE=thorough` draws many more examples.
"""

import json
import re
import tempfile
from pathlib import Path
from typing import TypedDict

import numpy as np
import numpy.typing as npt
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rescompile.backends.interface import Outputs, module_names
from rescompile.backends.registry import BACKENDS
from rescompile.check import check
from rescompile.compiler import Graph, compile_spec, cost, lower_spec
from rescompile.compiler.weights import Weights, initial_weights, random_weights, weight_shapes
from rescompile.spec import load_network
from rescompile.spec.errors import RescompileError
from rescompile.spec.models import InputSpec, NetworkSpec
from rescompile.testing import TOLERANCES, network_specs


class Sizes(TypedDict):
    widths: tuple[int, ...]
    max_size: int
    max_depth: int


SMALL: Sizes = {"widths": (4, 8), "max_size": 24, "max_depth": 2}
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
    assert_ir_shapes_and_agreement(graph, weights, inputs)


def assert_ir_shapes_and_agreement(graph: Graph, weights: Weights, inputs: npt.NDArray[np.float32]) -> None:
    """Every backend gives every module the IR's output shape, and all agree module by module."""
    for backend, modules in run_all(graph, weights, inputs).items():
        assert list(modules) == module_names(graph), backend
        for module, name in zip(graph.modules, module_names(graph), strict=True):
            assert module.out_shape is not None and modules[name].shape == (2, *module.out_shape), (backend, name)
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


# Issue 24 / issue 20: whatever validate accepts, every backend computes the IR, with parts, classes,
# naming, first blocks, transitions and variant-producing whens drawn, under names shaped like the
# ones generated code uses for itself. A drawn network is either refused with a location or agrees.

TRICKY_PART_NAMES: tuple[str, ...] = ("x", "x_2", "x_first", "a_b", "a-b", "ab", "Ab", "basicBlock", "downsample")
TRICKY_PART_NAMES += ("block", "sum", "build", "make_divisible", "layers", "lambda", "class", "ResNet", "OrderedDict")
TRICKY_PART_NAMES += ("projection",)
TRICKY_CLASS_NAMES = ("OrderedDict", "F", "Any", "Callable", "Tensor", "SE", "XBlockish")
CONDITIONS = ("stride == 2", "block_index % 2 == 1", "in_channels != width", "PARAMETER > 2")
NODE_NAMES = ("conv2", "_make_stage", "downsample", "forward", "layers", "sum", "class", "x", "out", "XBlock", "F")
PARAMETER_NAMES = ("k", "depth", "downsample", "index", "blocks", "block_stride", "sum", "options", "layers")
NAMINGS = (
    None,
    {"stages": "stages.{index}.blocks", "transitions": "stages.{index}.downsample"},
    {"stages": "s{number}", "blocks": "b{number}"},
    {"stages": "layer{number}", "transitions": "layer{index}"},
    {"stages": "layer{number}", "transitions": "down{number}", "blocks": "b{index}"},
)


@st.composite
def drawn_block(draw: st.DrawFn, name: str, parameter: str) -> str:
    kernel = draw(st.sampled_from([1, 3]))
    lines = [f"name: {name}", f"parameters: {{{parameter}: 2}}", "out_channels: width"]
    se = draw(st.booleans())
    if se and draw(st.booleans()):
        lines.append(f"classes: {{se: {draw(st.sampled_from(TRICKY_CLASS_NAMES))}}}")
    lines += [
        "nodes:",
        f"  conv1: {{op: conv, out_channels: width * {parameter}, kernel: {kernel}, stride: stride, "
        f"padding: {kernel // 2}}}",
        "  bn1: {op: batch_norm}",
        f"  {draw(st.just('conv2') | st.sampled_from(NODE_NAMES))}: {{op: conv, out_channels: width, kernel: 1}}",
        "  bn2: {op: batch_norm}",
    ]
    last = "bn2"
    if se:
        lines += [
            "  se.pool: {op: global_average_pool}",
            "  se.fc: {op: conv, out_channels: width, kernel: 1, bias: true}",
            "  se.gate: {op: sigmoid}",
            "  se.mul: {op: mul, inputs: [bn2, se.gate]}",
        ]
        last = "se.mul"
    condition = draw(st.sampled_from((None, *CONDITIONS)))
    condition = None if condition is None else condition.replace("PARAMETER", parameter)
    if condition is not None:
        lines.append(f"  extra: {{op: relu, input: {last}, when: {condition}}}")
        last = f"extra if {condition} else {last}"
    lines += [f'  add: {{op: add, inputs: ["{last}", shortcut]}}', "  relu: {op: relu}"]
    return "\n".join(lines) + "\n"


@st.composite
def drawn_networks(draw: st.DrawFn) -> dict[str, str]:
    """Files (relative path -> text) of a network with drawn parts; ``net.yaml`` is the network."""
    names = draw(st.lists(st.sampled_from(TRICKY_PART_NAMES), min_size=1, max_size=3, unique=True))
    parameter = draw(st.sampled_from(PARAMETER_NAMES))
    files = {f"blocks/{name}.yaml": draw(drawn_block(name, parameter)) for name in names}
    shortcut: object = "B"
    if draw(st.booleans()):
        file_name = draw(st.sampled_from(TRICKY_PART_NAMES))
        own_name = draw(st.sampled_from((file_name, *TRICKY_PART_NAMES)))
        files[f"shortcuts/{file_name}.yaml"] = (
            f"name: {own_name}\nnodes:\n"
            "  '0': {op: conv, out_channels: out_channels, kernel: 1, stride: stride}\n"
            "  '1': {op: batch_norm}\n"
        )
        shortcut = {"where_shapes_match": "identity", "where_shapes_change": file_name}
    stages = []
    for _ in range(draw(st.integers(1, 3))):
        stage: dict[str, object] = {
            "depth": draw(st.integers(1, 3)),
            "width": draw(st.sampled_from([4, 8])),
            "stride": draw(st.sampled_from([1, 2])),
        }
        if draw(st.booleans()):
            stage["block"] = draw(st.sampled_from(names))
        if draw(st.booleans()):
            stage["first_block"] = draw(st.sampled_from([*names, "bottleneck", "basic"]))
        if draw(st.booleans()):
            stage["block_parameters"] = {parameter: draw(st.sampled_from([1, 3]))}
        stages.append(stage)
    network: dict[str, object] = {
        "name": "drawn",
        "input": {"channels": 3, "size": 8},
        "stem": "cifar",
        "stem_parameters": {"width": 8},
        "block": names[0],
        "shortcut": shortcut,
        "stages": stages,
        "head": "classifier",
        "head_parameters": {"classes": 3},
    }
    naming = draw(st.sampled_from(NAMINGS))
    if naming is not None:
        network["naming"] = naming
    if draw(st.booleans()):
        network["transition"] = "convnext_downsample"
    files["net.yaml"] = json.dumps(network)  # JSON is YAML
    return files


@settings(max_examples=max(4, settings().max_examples // 4))
@given(drawn_networks(), st.integers(0, 2**16))
def test_drawn_parts_names_and_layouts_compile_to_the_ir_in_every_backend(files: dict[str, str], seed: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for relative, text in files.items():
            (Path(folder) / relative).parent.mkdir(parents=True, exist_ok=True)
            (Path(folder) / relative).write_text(text)
        try:
            graph = compile_spec(Path(folder) / "net.yaml")
        except RescompileError as error:
            assert re.match(r"\S+\.yaml:\d+:\d+: ", str(error)), error  # refused: located, one line
            assert "\n" not in str(error)
            return
    inputs = inputs_for(graph, seed)
    weights = random_weights(graph, seed)
    for name, backend in BACKENDS.items():
        assert backend.count_parameters(backend.build(graph)) == cost(graph).parameters, name
    assert_ir_shapes_and_agreement(graph, weights, inputs)
