"""Helpers only the test suite uses (``rescompile.testing`` holds what users test with too).

Test modules import it by name (``from support import ...``): pytest puts ``tests/``, the folder of
the root ``conftest.py``, on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from rescompile.backends.registry import BACKENDS
from rescompile.check import check, format_result
from rescompile.compiler.ir import MODULE_INPUT, Graph, Module, Node
from rescompile.compiler.ops import Shape, ShapeError
from rescompile.compiler.weights import random_weights
from rescompile.importer import randomise_normalisation as randomise_normalisation  # one for the suite and import
from rescompile.spec.errors import RescompileError
from rescompile.testing import TOLERANCES

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import torch


def assert_backends_agree(graph: Graph, seed: int = 0, batch: int = 2) -> None:
    """``check`` in a test: every registered backend, the same random weights and inputs
    (seeded), every pair compared module by module within :data:`TOLERANCES` ``"network"``, and
    every output finite."""
    weights = random_weights(graph, seed=seed)
    inputs = np.random.default_rng(seed + 1).standard_normal((batch, *graph.input_shape)).astype(np.float32)
    backends = tuple(BACKENDS)
    result = check(graph, backends, dict.fromkeys(backends, weights), inputs, TOLERANCES["network"])
    assert [pair.first_mismatch for pair in result.pairs] == [None] * math.comb(len(backends), 2), format_result(result)
    assert all(np.isfinite(pair.output_max_abs) for pair in result.pairs)


# --- shapes of hand-built graphs -----------------------------------------------------------------
# NOTE: `expand` computes a compiled graph's shapes as it builds it; these recompute them for
# modules a test writes by hand (or edits) without shapes.


def infer_module(module: Module, in_shape: Shape) -> Module:
    """Recompute every node's input and output shapes from ``in_shape``."""
    shapes: dict[str, Shape] = {MODULE_INPUT: in_shape}
    nodes: list[Node] = []
    for node in module.nodes:
        missing = [name for name in node.inputs if name not in shapes]
        if missing:
            raise RescompileError(
                f"{module.canonical(node.name)} reads {missing[0]!r}, which is not defined before it",
                node.source or module.source,
            )
        in_shapes = tuple(shapes[name] for name in node.inputs)
        try:
            shape = node.op.output_shape(in_shapes)
        except ShapeError as error:
            where = module.path or module.role
            raise RescompileError(f"{where}: {node.name}: {error}", module.source or node.source) from None
        shapes[node.name] = shape
        nodes.append(dataclasses.replace(node, in_shapes=in_shapes, shape=shape))
    return dataclasses.replace(module, nodes=tuple(nodes), in_shape=in_shape, out_shape=nodes[-1].shape)


def infer_shapes(graph: Graph) -> Graph:
    """Shape-inference pass: thread the graph input through every module."""
    shape = graph.input_shape
    modules: list[Module] = []
    for module in graph.modules:
        inferred = infer_module(module, shape)
        assert inferred.out_shape is not None
        shape = inferred.out_shape
        modules.append(inferred)
    return dataclasses.replace(graph, modules=tuple(modules))


# --- torch models ---------------------------------------------------------------------------------


def count_macs(model: torch.nn.Module, inputs: torch.Tensor) -> int:
    """Multiply-accumulates of the convolution and linear *modules* measured on a running model,
    with forward hooks (independent of the cost pass): a conv counts output elements × input
    channels per group × kernel area, a linear layer output elements × in features (in × out per
    sample on flat features; × pixels on a channels-last image, as ConvNeXt's MLP). This is
    torchvision's convention (and fvcore's for these layers); functional calls are not counted."""
    import torch

    total = 0

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d | torch.nn.Conv1d):
            kernel = math.prod(module.kernel_size)
            total += output[0].numel() * (module.in_channels // module.groups) * kernel
        elif isinstance(module, torch.nn.Linear):
            total += output[0].numel() * module.in_features

    handles = [module.register_forward_hook(hook) for module in model.modules()]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total


def layer(model: object, path: str) -> Any:
    """The layer at ``path`` (``layer2.1.drop_path``) of a built torch or Flax model. A generated
    class makes its attributes at run time, so to a type checker a layer of one is ``Any``; this
    is the one place the tests say so."""
    found: Any = model
    for part in path.split("."):
        found = found[int(part)] if part.isdigit() else getattr(found, part)
    return found


def assert_is_reference(spec: str | Path, reference: torch.nn.Module, size: int) -> None:
    """``spec`` at ``size`` is ``reference`` (given random normalisation statistics here): its
    state_dict loads strictly in the reference's key order, the parameter counts are equal, and eval
    and train-mode outputs agree within the same-framework tolerance."""
    import torch

    from rescompile.backends import torch_backend
    from rescompile.compiler import compile_spec, cost
    from rescompile.testing import assert_close

    randomise_normalisation(reference, seed=1)
    graph = compile_spec(spec, size=size)
    model = torch_backend.build_module(graph)
    model.load_state_dict(reference.state_dict(), strict=True)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert cost(graph).parameters == sum(parameter.numel() for parameter in reference.parameters())
    inputs = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for mode in ("eval", "train"):
            expected, actual = getattr(reference, mode)()(inputs), getattr(model, mode)()(inputs)
            assert_close(actual.numpy(), expected.numpy(), tolerance="same_framework", what=f"{spec} {mode}")


def assert_block_is_input_plus(network: Path, reference: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """The first block of ``network`` (conftest.elementwise_network: ``x + op(conv(x))``) computes
    ``x + reference(conv(x))`` in the torch backend, bit for bit."""
    import torch

    from rescompile.backends import torch_backend
    from rescompile.compiler import compile_spec

    graph = compile_spec(network)
    model = torch_backend.build_module(graph).eval()
    torch_backend.load_weights(model, graph, random_weights(graph, seed=5))
    block = layer(model, "layer1.0")
    x = 3 * torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + reference(block.conv(x)), rtol=0, atol=0)
