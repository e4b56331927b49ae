"""The one interface every backend implements, and the types it speaks.

A backend is two things: a module defining the functions of :class:`Implementation`
(``torch_backend``, ``flax_backend``, ``onnx_backend``), and a :class:`Backend` entry in
:mod:`rescompile.backends.registry` saying how to reach it (its name, the file it writes, what it
needs installed). The entry imports its module on first use only, so choosing or listing backends
imports no framework. The command line, ``rescompile check`` and the cross-backend tests go through
the entries and never name a backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

from rescompile.frameworks import import_framework

if TYPE_CHECKING:
    # NOTE: for annotations only. The command line imports this module, and numpy (which
    # compiler.weights imports) would add a third to the run time of `rescompile validate`.
    from rescompile.compiler.ir import Graph
    from rescompile.compiler.weights import Array, Weights

Outputs: TypeAlias = "dict[str, Array]"
"""Every module's output by canonical module name in network order (``stem``, ``layer1.0``, …,
``head``), float32, in torch layout (NCHW)."""

Writer = Callable[[Path], None]
"""Writes an emitted artifact to the path it is given, atomically; RescompileError on failure."""

Model = Any
"""A backend's own model type: ``torch.nn.Module``, ``flax.nnx.Module``, ``onnx.ModelProto``.
NOTE: Any, because each backend has its own, and a model only ever goes back to the backend that
built it."""


@dataclass(frozen=True)
class EmitOptions:
    """The compile command's options that only some backends read (see :attr:`Backend.options`)."""

    weights: Path | None = None
    """Canonical weights (.safetensors) to embed; None: fresh ones drawn with ``seed``."""
    seed: int = 0
    zero_init_residual: bool = False
    """Fresh weights only: zero the BatchNorm closing each residual branch."""
    opset: int | None = None
    """None: the backend's default."""
    fold_bn: bool = False
    fixed_size: bool = False
    """ONNX: the declared height and width, not dynamic ``H`` and ``W``."""
    inference: bool = False
    """Lower for evaluation: BatchNorm folded (on load, from canonical weights), channels_last."""
    features: tuple[int, ...] | None = None
    """ONNX: timm's ``features_only`` model, one output per feature map of these ``out_indices``
    (indices into ``feature_info``), named by module (``layer1``); None: the logits."""


def module_names(graph: Graph) -> list[str]:
    """Canonical module names in network order: ``stem``, ``layer1.0``, …, ``head``."""
    return [module.path or module.role for module in graph.modules]


class Implementation(Protocol):
    """What a backend module defines. mypy checks each registered module against it (registry.py)."""

    @property
    def EMITTERS(self) -> Mapping[str, object]:
        """IR op kind -> its emitter: every op kind has an entry (one that cannot be expressed
        exactly raises a RescompileError when used)."""
        ...

    def emit(self, graph: Graph, options: EmitOptions) -> Writer:
        """Lower ``graph`` now, so that every error is raised before anything is written; the
        writer writes the artifact (``rescompile SPEC --backend NAME -o PATH``)."""
        ...

    def build_module(self, graph: Graph) -> Model:
        """The framework's model of ``graph``, freshly initialised, in the framework's default mode."""
        ...

    def load_weights(self, model: Model, graph: Graph, weights: Mapping[str, Array]) -> None:
        """Load canonical weights into ``model`` in place, strictly: all names, right shapes."""
        ...

    def to_weights(self, model: Model, graph: Graph) -> Weights:
        """The canonical weights of ``model`` (float32, torch layout), copied out."""
        ...

    def count_parameters(self, model: Model) -> int:
        """Trainable parameters, as the framework itself counts them."""
        ...

    def module_outputs(self, graph: Graph, weights: Mapping[str, Array], inputs: Array) -> Outputs:
        """Build ``graph``, load ``weights``, run ``inputs`` (torch layout) once in fp32 eval mode
        at the framework's highest precision, and return every module's output."""
        ...


@dataclass(frozen=True)
class Backend:
    """One backend as the command line, ``check`` and the tests use it. Its methods are the
    :class:`Implementation` functions of :attr:`module` (``build`` is ``build_module``), which is
    imported on first use."""

    name: str
    """As ``--backend`` and ``--backends`` take it."""
    suffix: str
    """Ends the default output file's name: ``NAME_torch.py``, ``NAME.onnx``."""
    requires: str
    """The module the backend needs installed (``torch``)."""
    extra: str
    """The pip extra that installs it: ``pip install 'rescompile[EXTRA]'``."""
    module: str
    """The module implementing :class:`Implementation`."""
    options: frozenset[str] = frozenset()
    """The :class:`EmitOptions` fields :meth:`emit` reads; the command line refuses the others."""

    def _implementation(self) -> Implementation:
        import_framework(self.requires, f"the {self.name} backend", self.extra)
        # registry.py has mypy check that the module implements the protocol.
        return cast(Implementation, importlib.import_module(self.module))

    def op_kinds(self) -> frozenset[str]:
        """The IR op kinds the backend has an emitter for."""
        return frozenset(self._implementation().EMITTERS)

    def emit(self, graph: Graph, options: EmitOptions) -> Writer:
        return self._implementation().emit(graph, options)

    def build(self, graph: Graph) -> Model:
        return self._implementation().build_module(graph)

    def load_weights(self, model: Model, graph: Graph, weights: Mapping[str, Array]) -> None:
        self._implementation().load_weights(model, graph, weights)

    def to_weights(self, model: Model, graph: Graph) -> Weights:
        return self._implementation().to_weights(model, graph)

    def count_parameters(self, model: Model) -> int:
        return self._implementation().count_parameters(model)

    def module_outputs(self, graph: Graph, weights: Mapping[str, Array], inputs: Array) -> Outputs:
        return self._implementation().module_outputs(graph, weights, inputs)
