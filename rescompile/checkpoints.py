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

from rescompile.compiler.ir import BatchNorm, Graph
from rescompile.compiler.weights import Weights, float_weights, save_weights, shape_mismatches, weight_shapes
from rescompile.spec.errors import RescompileError

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")
"""Keys under which training scripts (timm's train.py, torchvision's references) nest the weights."""


def read_checkpoint(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Every tensor of a checkpoint file by name, as numpy arrays (bfloat16 widened to float32,
    which is exact)."""
    if not path.is_file():
        raise RescompileError(f"no such checkpoint file: {path}")
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
            return {name: _to_numpy(file.get_tensor(name)) for name in file.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as error:
        raise RescompileError(f"cannot read {path}: {error}") from None


def _read_torch(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    import pickle

    import torch

    try:
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
    return {name: _to_numpy(tensor) for name, tensor in state.items()}


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


def _to_numpy(tensor: Any) -> npt.NDArray[np.generic]:
    import torch

    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return np.asarray(tensor.detach().cpu().numpy())


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
    return float_weights(kept, source)


def convert(graph: Graph, checkpoint_path: Path, output: Path, backend: str) -> int:
    """Read, check and write; returns the number of tensors written."""
    weights = canonical_weights(graph, read_checkpoint(checkpoint_path), str(checkpoint_path))
    if backend == "flax":
        from rescompile.backends.flax_backend import flax_layout

        weights = flax_layout(graph, weights)
    save_weights(weights, output)
    return len(weights)
