"""What is done with a built ONNX model (:class:`~rescompile.backends.interface.Runtime`): the
benchmark set-up of ``rescompile bench`` (ONNX Runtime), the model ``create_model`` returns and
the weight layout of ``weights convert`` (canonical: the ONNX backend embeds weights in torch's
layout). ONNX Runtime does not train."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt

from rescompile.backends import onnx_backend
from rescompile.backends.interface import BenchSetup, Model, Timed
from rescompile.backends.surface import TimmHead, feature_points
from rescompile.compiler.ir import Graph
from rescompile.compiler.weights import Weights
from rescompile.frameworks import import_framework
from rescompile.spec.errors import RescompileError


def weight_layout(graph: Graph, weights: Weights) -> Weights:
    return weights


def timm_model(model: Model, graph: Graph, head: TimmHead) -> Model:
    """``model``, or with ``features_only`` the features model holding its weights: one output per
    chosen map, named by module."""
    if not head.features_only:
        return model
    points = feature_points(graph)
    weights = onnx_backend.to_weights(model, graph)
    chosen = sorted(head.chosen(graph))
    return onnx_backend.emit_model(graph, weights, features=[points[index] for index in chosen]).proto()


def bench_models(
    graph: Graph,
    weights: Weights,
    images: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    setup: BenchSetup,
) -> tuple[str, list[Timed]]:
    """The generated model beside ``torch.onnx.export``'s file of torchvision's or timm's model of
    the same name, both in ONNX Runtime."""
    onnxruntime: Any = import_framework("onnxruntime", "bench --backend onnx", "onnx")
    provider = "CUDAExecutionProvider" if setup.device == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        raise RescompileError("--device cuda: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    names = [f"rescompile onnx{' --inference' if setup.inference else ''}"]
    sources = [onnx_backend.emit_model(graph, weights, fold_bn=setup.inference).to_bytes()]
    reference = _exported_reference(graph, weights, images) if setup.reference else None
    if reference is not None:
        names.append(f"torch.onnx.export {graph.name}")
        sources.append(reference)
    session_options = onnxruntime.SessionOptions()
    session_options.log_severity_level = 3  # errors only
    models = []
    for name, source in zip(names, sources, strict=True):
        models.append(_timed(name, onnxruntime.InferenceSession(source, session_options, providers=[provider]), images))
    return f"{setup.device} (onnxruntime {onnxruntime.__version__}, {provider})", models


def _exported_reference(graph: Graph, weights: Weights, images: npt.NDArray[np.float32]) -> bytes | None:
    """torch.onnx.export's file of the torch reference holding ``weights``; None where there is none."""
    import torch

    from rescompile.backends import torch_backend
    from rescompile.backends.torch_runtime import torch_reference

    reference = torch_reference(graph.name)
    if reference is None:
        return None
    torch_backend.load_weights(reference, graph, weights)
    buffer: Any = io.BytesIO()  # NOTE: export's annotation names paths only; it writes file objects too
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter: the baseline, on purpose
        torch.onnx.export(
            reference.eval(),
            (torch.from_numpy(images),),
            buffer,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": batch, "output": batch},
            dynamo=False,
        )
    exported: bytes = buffer.getvalue()
    return exported


def _timed(name: str, session: Any, images: npt.NDArray[np.float32]) -> Timed:
    feed = {session.get_inputs()[0].name: images}

    def outputs() -> np.ndarray[Any, Any]:
        return np.asarray(session.run(None, feed)[0], np.float32)

    def step() -> None:
        session.run(None, feed)

    return Timed(name, step, outputs)
