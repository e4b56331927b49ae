"""The canonical weights: a flat mapping of canonical names to float32 numpy arrays, torch layout.

Convolutions are ``OIHW`` (``layer1.0.conv1.weight``), linear weights ``(out, in)``, BatchNorm has
``weight``, ``bias``, ``running_mean`` and ``running_var``. Every backend converts to and from this
one form; torch's ``num_batches_tracked`` counters are not part of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rescompile.compiler.files import write_atomically
from rescompile.compiler.ir import BatchNorm, Conv, Graph, Linear
from rescompile.spec.errors import RescompileError

Array = npt.NDArray[np.float32]
Weights = dict[str, Array]


def weight_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Every canonical weight name with its shape, in network order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for module, node in graph.nodes():
        name = module.canonical(node.name)
        op = node.op
        if isinstance(op, Conv):
            shapes[f"{name}.weight"] = (op.out_channels, op.in_channels // op.groups, *op.kernel)
            if op.bias:
                shapes[f"{name}.bias"] = (op.out_channels,)
        elif isinstance(op, BatchNorm):
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{name}.{suffix}"] = (op.channels,)
        elif isinstance(op, Linear):
            shapes[f"{name}.weight"] = (op.out_features, op.in_features)
            if op.bias:
                shapes[f"{name}.bias"] = (op.out_features,)
    return shapes


def check_weights(graph: Graph, weights: Mapping[str, npt.NDArray[np.generic]]) -> None:
    """Strict check: every expected name present once, nothing unexpected, every shape right."""
    problems = shape_mismatches(weight_shapes(graph), {name: array.shape for name, array in weights.items()})
    if problems:
        raise RescompileError(f"weights do not fit {graph.name}: {problems}")


def shape_mismatches(expected: Mapping[str, tuple[int, ...]], actual: Mapping[str, tuple[int, ...]]) -> str:
    """The missing, unexpected and mis-shaped names of ``actual`` (up to 5 of each), or ``""``."""
    missing = [name for name in expected if name not in actual]
    unexpected = [name for name in actual if name not in expected]
    misshaped = [
        f"{name} {tuple(actual[name])} (expected {shape})"
        for name, shape in expected.items()
        if name in actual and tuple(actual[name]) != shape
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{label}: {shown}")
    return "; ".join(problems)


def initial_weights(graph: Graph, seed: int = 0, zero_init_residual: bool = False) -> Weights:
    """Fresh weights drawn as torchvision initialises a ResNet.

    Convs: Kaiming normal, fan_out, ReLU gain; BatchNorm weight 1, bias 0, running mean 0, var 1;
    linear: torch's default U(-1/sqrt(in), 1/sqrt(in)) for weight and bias. With
    ``zero_init_residual`` the BatchNorm marked ``zero_init`` in each block gets weight 0, so
    every residual branch starts as zero.
    """
    generator = np.random.default_rng(seed)
    weights: Weights = {}
    for module, node in graph.nodes():
        name = module.canonical(node.name)
        op = node.op
        if isinstance(op, Conv):
            fan_out = op.out_channels * op.kernel[0] * op.kernel[1]
            shape = (op.out_channels, op.in_channels // op.groups, *op.kernel)
            weights[f"{name}.weight"] = _normal(generator, shape, math.sqrt(2.0 / fan_out))
            if op.bias:
                weights[f"{name}.bias"] = np.zeros(op.out_channels, np.float32)
        elif isinstance(op, BatchNorm):
            zero = zero_init_residual and op.zero_init and module.role == "block" and module.shortcut is not None
            weights[f"{name}.weight"] = np.full(op.channels, 0.0 if zero else 1.0, np.float32)
            weights[f"{name}.bias"] = np.zeros(op.channels, np.float32)
            weights[f"{name}.running_mean"] = np.zeros(op.channels, np.float32)
            weights[f"{name}.running_var"] = np.ones(op.channels, np.float32)
        elif isinstance(op, Linear):
            bound = 1.0 / math.sqrt(op.in_features)
            weights[f"{name}.weight"] = _uniform(generator, (op.out_features, op.in_features), bound)
            if op.bias:
                weights[f"{name}.bias"] = _uniform(generator, (op.out_features,), bound)
    return weights


def random_weights(graph: Graph, seed: int = 0) -> Weights:
    """Weights for equivalence tests: like :func:`initial_weights`, but every BatchNorm gets
    non-trivial affine parameters and running statistics, so that a backend mishandling any of
    them is caught.

    NOTE: the BatchNorm closing each residual branch (``zero_init`` in the block) gets a small
    weight, U(0.05, 0.25), as trained ResNets have. With random running statistics, eval mode
    does not normalise, so each branch's output scales with the stream it reads; with weights
    near 1 the stream would grow about 2.4× per block and overflow fp32 in resnet1202.
    """
    generator = np.random.default_rng(seed)
    weights = initial_weights(graph, seed)
    closing = {
        f"{module.canonical(node.name)}.weight"
        for module, node in graph.nodes()
        if isinstance(node.op, BatchNorm) and node.op.zero_init and module.shortcut is not None
    }
    for name in weights:
        shape = weights[name].shape
        if name in closing:
            weights[name] = generator.uniform(0.05, 0.25, shape).astype(np.float32)
        elif name.endswith(".running_mean") or name.endswith(".bias"):
            weights[name] = _normal(generator, shape, 0.1)
        elif name.endswith(".running_var") or (name.endswith(".weight") and weights[name].ndim == 1):
            weights[name] = generator.uniform(0.5, 1.5, shape).astype(np.float32)
    return weights


def save_weights(weights: Mapping[str, npt.NDArray[np.generic]], path: Path) -> None:
    """Write canonical weights as safetensors, atomically (a temporary file, then a rename)."""
    from safetensors.numpy import save

    arrays = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in weights.items()}
    write_atomically([(path, [save(arrays)])])


def read_weights(path: Path) -> Weights:
    """Read canonical weights from a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
    except FileNotFoundError:
        raise RescompileError(f"no such weights file: {path}") from None
    except (OSError, SafetensorError) as error:
        raise RescompileError(f"cannot read weights from {path}: {error}") from None
    return {name: np.asarray(array, dtype=np.float32) for name, array in arrays.items()}


def _normal(generator: np.random.Generator, shape: tuple[int, ...], std: float) -> Array:
    return (generator.standard_normal(shape) * std).astype(np.float32)


def _uniform(generator: np.random.Generator, shape: tuple[int, ...], bound: float) -> Array:
    return generator.uniform(-bound, bound, shape).astype(np.float32)
