"""The canonical weights: a flat mapping of canonical names to float32 numpy arrays, torch layout.

Convolutions are ``OIHW`` (``layer1.0.conv1.weight``), linear weights ``(out, in)``, BatchNorm has
``weight``, ``bias``, ``running_mean`` and ``running_var``. Every backend converts to and from this
one form; torch's ``num_batches_tracked`` counters are not part of it.
"""

from __future__ import annotations

import math
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rescompile.compiler.files import write_atomically
from rescompile.compiler.ir import Graph, Module
from rescompile.compiler.ops import Init, Role, Tensor, weight_name
from rescompile.spec.errors import RescompileError

Array = npt.NDArray[np.float32]
Weights = dict[str, Array]


def weight_tensors(graph: Graph) -> dict[str, tuple[Module, Tensor]]:
    """Every canonical weight name (``layer1.0.conv1.weight``) with its module and the op table's
    description of it, in network order."""
    return {
        weight_name(module.canonical(node.name), suffix): (module, tensor)
        for module, node in graph.nodes()
        for suffix, tensor in node.op.tensors().items()
    }


def weight_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Every canonical weight name with its shape, in network order."""
    return {name: tensor.shape for name, (_, tensor) in weight_tensors(graph).items()}


def check_weights(graph: Graph, weights: Mapping[str, npt.NDArray[np.generic]]) -> None:
    """Strict check: every expected name present once, nothing unexpected, every shape right, and
    no negative BatchNorm variance (its square root is NaN in every backend)."""
    tensors = weight_tensors(graph)
    problems = shape_mismatches(
        {name: tensor.shape for name, (_, tensor) in tensors.items()},
        {name: array.shape for name, array in weights.items()},
    )
    if problems:
        raise RescompileError(f"weights do not fit {graph.name}: {problems}")
    for name, (_, tensor) in tensors.items():
        if tensor.role is Role.VARIANCE and np.less(weights[name], 0).any():
            raise RescompileError(
                f"weights do not fit {graph.name}: {name} holds a negative variance "
                f"({float(weights[name].min()):g}); a BatchNorm's running_var is at least 0"
            )


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
    """Fresh weights drawn as torchvision initialises a ResNet, each tensor as the op table says.

    Convs: Kaiming normal, fan_out, ReLU gain; BatchNorm weight 1, bias 0, running mean 0, var 1;
    linear: torch's default U(-1/sqrt(in), 1/sqrt(in)) for weight and bias. With
    ``zero_init_residual`` the tensors marked ``zeroed_for_residual`` (the scale of the BatchNorm
    marked ``zero_init``) in each residual block are 0, so every residual branch starts as zero.
    """
    generator = np.random.default_rng(seed)
    weights: Weights = {}
    for name, (module, tensor) in weight_tensors(graph).items():
        zeroed = zero_init_residual and tensor.zeroed_for_residual and _residual(module)
        weights[name] = np.zeros(tensor.shape, np.float32) if zeroed else _initial(generator, tensor)
    return weights


def _residual(module: Module) -> bool:
    return module.role == "block" and module.shortcut is not None


def _initial(generator: np.random.Generator, tensor: Tensor) -> Array:
    if tensor.init is Init.KAIMING_NORMAL_FAN_OUT:
        fan_out = tensor.shape[0] * math.prod(tensor.shape[2:])
        return _normal(generator, tensor.shape, math.sqrt(2.0 / fan_out))
    if tensor.init is Init.UNIFORM_FAN_IN:
        return _uniform(generator, tensor.shape, 1.0 / math.sqrt(tensor.fan_in))
    if tensor.init is Init.CONSTANT:
        return np.full(tensor.shape, tensor.value, np.float32)
    return np.full(tensor.shape, 1.0 if tensor.init is Init.ONES else 0.0, np.float32)


def random_weights(graph: Graph, seed: int = 0) -> Weights:
    """Weights for equivalence tests: like :func:`initial_weights`, but every per-channel tensor
    (scales, biases, running statistics) gets non-trivial values, so that a backend mishandling
    any of them is caught.

    NOTE: the scale closing each residual branch (``zeroed_for_residual``) gets a small value,
    U(0.05, 0.25), as trained ResNets have. With random running statistics, eval mode does not
    normalise, so each branch's output scales with the stream it reads; with scales near 1 the
    stream would grow about 2.4× per block and overflow fp32 in resnet1202.
    """
    generator = np.random.default_rng(seed)
    weights = initial_weights(graph, seed)
    for name, (module, tensor) in weight_tensors(graph).items():
        if tensor.zeroed_for_residual and _residual(module):
            weights[name] = generator.uniform(0.05, 0.25, tensor.shape).astype(np.float32)
        elif tensor.role in (Role.MEAN, Role.BIAS):
            weights[name] = _normal(generator, tensor.shape, 0.1)
        elif tensor.role in (Role.VARIANCE, Role.SCALE):
            weights[name] = generator.uniform(0.5, 1.5, tensor.shape).astype(np.float32)
    return weights


def save_weights(weights: Mapping[str, npt.NDArray[np.generic]], path: Path) -> None:
    """Write canonical weights as safetensors, atomically (a temporary file, then a rename)."""
    from safetensors.numpy import save

    arrays = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in weights.items()}
    write_atomically([(path, [save(arrays)])])


TORCH_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin")
"""The suffixes of torch.save files (checkpoints.py reads them; ``--weights`` does not)."""


def require_regular_file(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is a regular file (or a link to one): reading a FIFO blocks for
    ever, a device may never end. ``what`` names it in the message: ``weights file``."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise RescompileError(f"no such {what}: {path}") from None
    except OSError as error:
        raise RescompileError(f"cannot read {path}: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        kind = next((kind for test, kind in NOT_REGULAR if test(mode)), "not a regular file")
        raise RescompileError(f"cannot read {path}: it is {kind}, not a {what}")


NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def read_weights(path: Path) -> Weights:
    """Read canonical weights from a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    require_regular_file(path, "weights file")
    convert = f"rescompile weights convert {path} --spec SPEC -o {path.stem}.safetensors"
    if path.suffix in TORCH_CHECKPOINT_SUFFIXES:
        raise RescompileError(
            f"{path}: --weights takes canonical safetensors, not a torch checkpoint ({path.suffix}); convert it "
            f"first: {convert}"
        )
    try:
        arrays = load_file(str(path))
    except (OSError, SafetensorError) as error:
        hint = f"; if it is a torch checkpoint, convert it first: {convert}" if _torch_saved(path) else ""
        raise RescompileError(f"cannot read weights from {path}: {error}{hint}") from None
    except (TypeError, AttributeError) as error:  # a dtype numpy has no type for: bfloat16, float8
        raise RescompileError(f"cannot read weights from {path}: {error}; save float32 weights") from None
    return float_weights(arrays, str(path))


def float_weights(arrays: Mapping[str, npt.NDArray[np.generic]], source: str) -> Weights:
    """``arrays`` as float32 weights, refusing what is not a weight: a non-float tensor, or a NaN or
    infinity (with which every backend would "agree" on garbage). float16/32/64 convert to float32
    exactly or by rounding."""
    weights: Weights = {}
    for name, array in arrays.items():
        if array.dtype not in (np.float16, np.float32, np.float64):
            raise RescompileError(
                f"weights in {source}: {name} is {array.dtype}, not float16, float32 or float64; save float32 weights"
            )
        if not np.isfinite(array).all():
            raise RescompileError(f"weights in {source}: {name} holds NaN or infinite values")
        # Checked again after the cast: a float64 beyond float32's range (3.4e38) becomes infinite.
        with np.errstate(over="ignore"):
            weights[name] = np.asarray(array, dtype=np.float32)
        if not np.isfinite(weights[name]).all():
            raise RescompileError(
                f"weights in {source}: {name} holds values beyond float32's range "
                f"(±{float(np.finfo(np.float32).max):.3g}), which would become infinite"
            )
    return weights


def _torch_saved(path: Path) -> bool:
    """Whether ``path`` starts as torch.save's files do: a zip archive, or a bare pickle."""
    with path.open("rb") as file:
        start = file.read(4)
    return start.startswith((b"PK\x03\x04", b"\x80"))


def _normal(generator: np.random.Generator, shape: tuple[int, ...], std: float) -> Array:
    return (generator.standard_normal(shape) * std).astype(np.float32)


def _uniform(generator: np.random.Generator, shape: tuple[int, ...], bound: float) -> Array:
    return generator.uniform(-bound, bound, shape).astype(np.float32)
