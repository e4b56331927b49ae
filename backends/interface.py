"""The one interface every backend implements, and the types it speaks.

A backend is three things: a module defining the functions of :class:`Implementation`
(``torch_backend``, ``flax_backend``, ``onnx_backend``: emitting and building), a module defining
those of :class:`Runtime` (``torch_runtime``, ...: what runs a built model: benchmark set-up, the
timm model ``create_model`` returns, the weight layout ``weights convert`` writes, and where
:attr:`Backend.trains`, :class:`Trainer`'s training step), and a :class:`Backend` entry in
:mod:`rescompile.backends.registry` saying how to reach them and what the backend can do (its name,
the file it writes, what it needs installed, the options it takes). The entry imports its modules
on first use only, so choosing or listing backends imports no framework. Nothing outside
``backends/`` names a backend: the command line, the API, ``rescompile check``, ``bench`` and the
cross-backend tests go through the entries and the capabilities they declare.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

from rescompile.frameworks import import_framework
from rescompile.spec.errors import RescompileError

if TYPE_CHECKING:
    # NOTE: for annotations only. The command line imports this module, and numpy (which
    # compiler.weights imports) would add a third to the run time of `rescompile validate`.
    from collections.abc import Iterable

    import numpy as np
    import numpy.typing as npt

    from rescompile.backends.surface import TimmHead
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
    """Canonical module names in network order: ``stem``, ``layer1.0``, …, ``head``; a transition
    holding its stage's blocks by its path once, for its output: the blocks and its half before
    them run inside it, which the Flax model runs as one layer."""
    held = {stage.path for stage in graph.stages if stage.held}
    return [
        module.path or module.role
        for module in graph.modules
        if not (module.holds_blocks and not module.after_blocks)
        and not (module.role == "block" and module.stage in held)
    ]


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


Batch: TypeAlias = "tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]"
"""Images (NCHW) and their labels."""


@dataclass(frozen=True)
class SGD:
    """SGD with momentum and weight decay as torch's ``torch.optim.SGD`` defines it: the decay is
    added to the gradient before the momentum buffer, for every parameter."""

    learning_rate: float
    momentum: float
    weight_decay: float


@dataclass(frozen=True)
class TrainingRun:
    """One framework's training: the loss of every step and the canonical weights at the end."""

    losses: list[float]
    weights: Weights


Step = Callable[[], None]
"""One batch through a model (forward, or a training step), returning when the device is done."""


@dataclass(frozen=True)
class Timed:
    """A model as ``rescompile bench`` runs it."""

    name: str
    step: Step
    outputs: Callable[[], np.ndarray[Any, Any]] | None = None
    """One forward pass's output in fp32 (NCHW logits), for checking the pair agree; None in training."""


@dataclass(frozen=True)
class BenchSetup:
    """``rescompile bench``'s options, as a backend's benchmark set-up reads them."""

    batch: int
    dtype: str
    """fp32, bf16 or fp16."""
    device: str
    """cpu or cuda."""
    train: bool = False
    compile: bool = False
    inference: bool = False
    channels_last: bool = False
    reference: bool = True
    """Time a reference model of the same name beside the generated one, where there is one."""


class Runtime(Protocol):
    """What a backend's runtime module defines: what is done with a built model."""

    def bench_models(
        self,
        graph: Graph,
        weights: Weights,
        images: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        setup: BenchSetup,
    ) -> tuple[str, list[Timed]]:
        """The device's name, and the generated model (first) and its reference (where there is one)
        holding ``weights``, set up as ``setup`` says."""
        ...

    def timm_model(self, model: Model, graph: Graph, head: TimmHead) -> Model:
        """``model`` as ``create_model`` returns it: ``head``'s options applied (checked against
        :attr:`Backend.head_options` already), or timm's features model when it asks for one."""
        ...

    def weight_layout(self, graph: Graph, weights: Weights) -> Weights:
        """``weights`` (canonical) in the layout the backend's own model loads, as ``rescompile
        weights convert --backend NAME`` writes them."""
        ...


class Trainer(Protocol):
    """What the runtime module of a backend that :attr:`Backend.trains` defines as well."""

    def train(self, graph: Graph, weights: Weights, data: Iterable[Batch], sgd: SGD, float64: bool) -> TrainingRun:
        """``sgd`` steps from ``weights``, one per batch of ``data``, in training mode, in float64
        or float32."""
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
    runtime: str
    """The module implementing :class:`Runtime` (and :class:`Trainer` where :attr:`trains`)."""
    options: frozenset[str] = frozenset()
    """The :class:`EmitOptions` fields :meth:`emit` reads; the command line refuses the others.
    ``inference`` here: :meth:`build` lowers a model for evaluation too (``create_model(inference=True)``)."""
    bench_options: frozenset[str] = frozenset()
    """The :class:`BenchSetup` switches its benchmark set-up honours (``train``, ``compile``,
    ``inference``, ``channels_last``, ``dtype``: other than fp32); ``bench`` refuses the others."""
    head_options: frozenset[str] = frozenset()
    """timm's head options its models take in ``create_model`` (``num_classes`` 0, ``global_pool``,
    ``drop_rate``); every backend takes ``features_only`` and ``out_indices``."""
    trains: bool = False
    """Its runtime module is a :class:`Trainer` too (``check --train-steps`` compares those that train)."""

    def _implementation(self) -> Implementation:
        import_framework(self.requires, f"the {self.name} backend", self.extra)
        # registry.py has mypy check that the module implements the protocol.
        return cast(Implementation, importlib.import_module(self.module))

    def _runtime(self) -> Runtime:
        import_framework(self.requires, f"the {self.name} backend", self.extra)
        return cast(Runtime, importlib.import_module(self.runtime))

    def op_kinds(self) -> frozenset[str]:
        """The IR op kinds the backend has an emitter for."""
        return frozenset(self._implementation().EMITTERS)

    def emit(self, graph: Graph, options: EmitOptions) -> Writer:
        return self._implementation().emit(graph, options)

    def build(self, graph: Graph, inference: bool = False) -> Model:
        """``build_module``; ``inference``: the model lowered for evaluation, where :attr:`options`
        has ``inference``."""
        if not inference:
            return self._implementation().build_module(graph)
        if "inference" not in self.options:
            raise RescompileError(f"the {self.name} backend has no inference lowering")
        # NOTE: the one build option; Implementation's build_module takes none, so the lowering
        # is its keyword, which registry.py has mypy check for the backends that declare it.
        return cast(Lowering, self._implementation()).build_module(graph, inference=True)

    def load_weights(self, model: Model, graph: Graph, weights: Mapping[str, Array]) -> None:
        self._implementation().load_weights(model, graph, weights)

    def to_weights(self, model: Model, graph: Graph) -> Weights:
        return self._implementation().to_weights(model, graph)

    def count_parameters(self, model: Model) -> int:
        return self._implementation().count_parameters(model)

    def module_outputs(self, graph: Graph, weights: Mapping[str, Array], inputs: Array) -> Outputs:
        return self._implementation().module_outputs(graph, weights, inputs)

    def fixed_size_reason(self, graph: Graph) -> str | None:
        """Where :attr:`options` has ``fixed_size``: why the model written of ``graph`` runs at its
        declared height and width only, or None when it runs at any size its strides allow."""
        if "fixed_size" not in self.options:
            raise RescompileError(f"the {self.name} backend writes no model of a dynamic size")
        return cast(SizeFixing, self._implementation()).fixed_size_reason(graph)

    def bench_models(
        self,
        graph: Graph,
        weights: Weights,
        images: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        setup: BenchSetup,
    ) -> tuple[str, list[Timed]]:
        return self._runtime().bench_models(graph, weights, images, labels, setup)

    def timm_model(self, model: Model, graph: Graph, head: TimmHead) -> Model:
        return self._runtime().timm_model(model, graph, head)

    def weight_layout(self, graph: Graph, weights: Weights) -> Weights:
        return self._runtime().weight_layout(graph, weights)

    def train(self, graph: Graph, weights: Weights, data: Iterable[Batch], sgd: SGD, float64: bool) -> TrainingRun:
        if not self.trains:
            raise RescompileError(f"the {self.name} backend does not train")
        return cast(Trainer, self._runtime()).train(graph, weights, data, sgd, float64)


class Lowering(Protocol):
    """What the module of a backend whose :attr:`Backend.options` has ``inference`` defines as well."""

    def build_module(self, graph: Graph, *, inference: bool) -> Model:
        """``inference``: BatchNorm folded as weights load, channels_last."""
        ...


class SizeFixing(Protocol):
    """What the module of a backend whose :attr:`Backend.options` has ``fixed_size`` defines as well."""

    def fixed_size_reason(self, graph: Graph) -> str | None: ...
