"""Real checkpoints: torchvision or timm weights on disk, checked against a spec, converted.

``rescompile weights convert CHECKPOINT --spec SPEC -o OUT`` reads a ``.pth``/``.pt``/``.bin`` file
(``torch.load(weights_only=True)``: tensors only, no code runs) or a ``.safetensors`` file, checks it
strictly against the spec's canonical weights (missing, unexpected and mis-shaped names), and writes
canonical safetensors (``--backend torch``, the default: the names and layout torch's
``state_dict`` uses) or the Flax layout the generated Flax module holds (``--backend flax``: keys are
nnx state paths joined with ``/``, convolution kernels HWIO, linear kernels (in, out)).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rescompile.backends.registry import BACKENDS
from rescompile.compiler.ir import BatchNorm, Graph
from rescompile.compiler.weights import (
    TORCH_CHECKPOINT_SUFFIXES,
    Weights,
    check_weights,
    float_weights,
    require_regular_file,
    save_weights,
    shape_mismatches,
    weight_shapes,
)
from rescompile.frameworks import import_framework
from rescompile.spec.errors import RescompileError

TORCH_SUFFIXES = TORCH_CHECKPOINT_SUFFIXES
SAFETENSORS_SUFFIX = ".safetensors"
WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")
"""Keys under which training scripts (timm's train.py, torchvision's references) nest the weights."""


def read_checkpoint(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Every tensor of a checkpoint file by name, as numpy arrays (bfloat16 widened to float32,
    which is exact)."""
    require_regular_file(path, "checkpoint file")
    import_framework("torch", "weights convert", "torch")  # it reads either format into torch tensors
    if path.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch(path)
    known = ", ".join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))
    raise RescompileError(f"{path}: unknown checkpoint format '{path.suffix}'; expected a file ending in {known}")


def _read_safetensors(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return {name: _to_numpy(name, file.get_tensor(name), path) for name in file.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as error:
        raise RescompileError(f"cannot read {path}: {error}") from None


def _read_torch(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    import pickle
    import warnings

    import torch

    try:
        # Quiet: torch warns (about an old pickle protocol, say) before it refuses, and a warning
        # would stand before the one-line error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message advises weights_only=False, which would run code from the file: never.
        reason = _unpickler_reason(str(error))
        raise RescompileError(
            f"cannot read {path}: torch.load(weights_only=True) refused it (not a checkpoint of tensors"
            f"{': ' + reason.strip() if reason else ''}); rescompile never unpickles code"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RescompileError(f"cannot read {path} as a torch checkpoint: {first_line}") from None
    state = _state_dict(loaded, path)
    for name in state:
        if not isinstance(name, str):
            raise RescompileError(
                f"{path} holds a weight named {name!r} ({type(name).__name__}); a state_dict's names are strings"
            )
    return {name: _to_numpy(name, tensor, path) for name, tensor in state.items()}


def _unpickler_reason(message: str) -> str:
    """The reason in torch's weights-only refusal ('Unsupported global: GLOBAL __main__.A ...'),
    without its advice to load with weights_only=False."""
    _, _, after = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in after.splitlines() if line.strip()]
    return lines[0].split(". Please use")[0] if lines else ""


def _state_dict(loaded: object, path: Path) -> Mapping[str, Any]:
    import torch

    if isinstance(loaded, Mapping):
        if loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
            return loaded
        for key in WRAPPERS:
            nested = loaded.get(key)
            if isinstance(nested, Mapping) and nested and all(isinstance(v, torch.Tensor) for v in nested.values()):
                return nested
    raise RescompileError(
        f"{path} holds no state_dict: expected a mapping of names to tensors, or one under "
        f"{', '.join(repr(key) for key in WRAPPERS)}"
    )


def _to_numpy(name: str, tensor: Any, path: Path) -> npt.NDArray[np.generic]:
    """One tensor as a numpy array; floats numpy lacks (bfloat16, the float8s) widened to float32,
    which is exact. A tensor that holds no plain array of values is refused, by name."""
    import torch

    if tensor.is_meta:
        raise RescompileError(f"{path}: {name} is a meta tensor, which holds no values; save the materialised weights")
    if tensor.layout != torch.strided:
        raise RescompileError(f"{path}: {name} is a sparse tensor ({tensor.layout}); save it dense (to_dense())")
    if tensor.is_quantized:
        raise RescompileError(f"{path}: {name} is quantized ({tensor.dtype}); save float weights (dequantize())")
    if tensor.dtype.is_floating_point and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.float()
    try:
        return np.asarray(tensor.detach().cpu().numpy())
    except (TypeError, RuntimeError) as error:  # a dtype numpy has no type for: complex32, say
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RescompileError(f"{path}: {name} is {tensor.dtype}, which rescompile cannot read ({reason})") from None


def canonical_weights(graph: Graph, checkpoint: Mapping[str, npt.NDArray[np.generic]], source: str) -> Weights:
    """The checkpoint as ``graph``'s canonical weights, strictly: torch's ``num_batches_tracked``
    counters of ``graph``'s BatchNorms are dropped (bookkeeping, not weights); any other name the
    graph lacks, a missing name or a wrong shape is an error listing them."""
    counters = {
        f"{module.canonical(node.name)}.num_batches_tracked"
        for module, node in graph.nodes()
        if isinstance(node.op, BatchNorm)
    }
    kept = {name: array for name, array in checkpoint.items() if name not in counters}
    # Names and shapes first: a checkpoint of another network fails on what differs, not on the
    # first integer counter of a BatchNorm the spec does not have.
    problems = shape_mismatches(weight_shapes(graph), {name: tuple(array.shape) for name, array in kept.items()})
    if problems:
        raise RescompileError(f"{source} does not fit {graph.name}: {problems}")
    weights = float_weights(kept, source)
    check_weights(graph, weights)  # values now: a negative running_var, say
    return weights


def convert(graph: Graph, checkpoint_path: Path, output: Path, backend: str) -> int:
    """Read, check and write; returns the number of tensors written."""
    weights = canonical_weights(graph, read_checkpoint(checkpoint_path), str(checkpoint_path))
    weights = BACKENDS[backend].weight_layout(graph, weights)
    save_weights(weights, output)
    return len(weights)
