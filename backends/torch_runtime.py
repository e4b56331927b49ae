"""What is done with a built torch model (:class:`~rescompile.backends.interface.Runtime`): the
benchmark set-up of ``rescompile bench``, the model ``create_model`` returns, the training step of
``check --train-steps`` and the weight layout of ``weights convert`` (canonical: torch's own)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from rescompile.backends import torch_backend
from rescompile.backends.interface import SGD, Batch, BenchSetup, Model, Timed, TrainingRun
from rescompile.backends.surface import TimmHead, feature_points, forward_paths, pretrained_cfg
from rescompile.compiler.ir import Graph
from rescompile.compiler.weights import Weights
from rescompile.frameworks import import_framework
from rescompile.spec.errors import RescompileError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weight_layout(graph: Graph, weights: Weights) -> Weights:
    return weights


def timm_model(model: Model, graph: Graph, head: TimmHead) -> Model:
    """The generated model with timm's ``pretrained_cfg``, head options and ``drop_rate``, or
    timm's features model of it (:class:`rescompile.backends.torch_features.FeatureListNet`)."""
    model.pretrained_cfg = model.default_cfg = pretrained_cfg(graph)
    head.reset(model, graph)
    model.drop_rate = head.drop_rate
    if not head.features_only:
        return model
    from rescompile.backends.torch_features import FeatureListNet

    paths = forward_paths(graph)
    assert paths is not None, "a model with reset_classifier has a cut head"
    features = FeatureListNet(model, paths, feature_points(graph), head.chosen(graph))
    features.pretrained_cfg = features.default_cfg = model.pretrained_cfg
    return features


def train(graph: Graph, weights: Weights, data: Iterable[Batch], sgd: SGD, float64: bool) -> TrainingRun:
    model = torch_backend.build_module(graph)
    torch_backend.load_weights(model, graph, weights)
    dtype = torch.float64 if float64 else torch.float32
    model = model.to(dtype).train()
    optimizer = torch.optim.SGD(
        model.parameters(), sgd.learning_rate, momentum=sgd.momentum, weight_decay=sgd.weight_decay
    )
    losses = []
    for images, labels in data:
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(images).to(dtype)), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(loss.item())
    return TrainingRun(losses, torch_backend.to_weights(model.float(), graph))


def torch_reference(name: str) -> torch.nn.Module | None:
    """torchvision's model of this name, else timm's, else None."""
    torchvision: Any = import_framework("torchvision", "bench's reference model (or --no-reference)", "test")
    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, weights=None)  # type: ignore[no-any-return]
    try:
        import timm
    except ImportError:
        return None
    return timm.create_model(name, pretrained=False) if timm.is_model(name) else None


def bench_models(
    graph: Graph,
    weights: Weights,
    images: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    setup: BenchSetup,
) -> tuple[str, list[Timed]]:
    """The generated model beside torchvision's or timm's of the same name."""
    if setup.device == "cuda" and not torch.cuda.is_available():
        raise RescompileError("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    device = torch.device(setup.device)
    # NOTE: cuDNN picks its fastest algorithm per shape (for both models); the first steps, untimed, try them.
    torch.backends.cudnn.benchmark = setup.device == "cuda"
    dtype = DTYPES[setup.dtype]
    device_name = (
        torch.cuda.get_device_name(device) if setup.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    )
    candidates: list[tuple[str, torch.nn.Module]] = []
    lowered = " --inference" if setup.inference else ""
    candidates.append((f"rescompile torch{lowered}", torch_backend.build_module(graph, inference=setup.inference)))
    reference = torch_reference(graph.name) if setup.reference else None
    if reference is not None:
        candidates.append((f"{type(reference).__module__.split('.')[0]} {graph.name}", reference))
    inputs = torch.from_numpy(images).to(device, dtype)
    targets = torch.from_numpy(labels).to(device)
    # NOTE: the lowered model converts its input to channels_last itself (timed); --channels-last
    # gives every model channels_last inputs, as a user tuning torchvision would.
    if setup.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    models: list[Timed] = []
    for name, module in candidates:
        try:
            torch_backend.load_weights(module, graph, weights)
        except (RescompileError, RuntimeError) as error:
            print(f"reference {name} skipped: its state_dict does not fit {graph.name} ({error})", file=sys.stderr)
            continue
        module = module.to(device, dtype)
        if setup.channels_last:
            module = module.to(memory_format=torch.channels_last)
        models.append(_timed(name, module, inputs, targets, setup))
    return device_name, models


def _timed(name: str, module: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, setup: BenchSetup) -> Timed:
    def synchronize() -> None:
        if setup.device == "cuda":
            torch.cuda.synchronize()

    module.train(setup.train)
    forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(module) if setup.compile else module

    def outputs() -> np.ndarray[Any, Any]:
        with torch.inference_mode():
            result: np.ndarray[Any, Any] = forward(inputs).float().cpu().numpy()
        return result

    if not setup.train:

        def infer() -> None:
            with torch.inference_mode():
                forward(inputs)
            synchronize()

        return Timed(name, infer, outputs if setup.dtype == "fp32" else None)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(forward(inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        synchronize()

    return Timed(name, train)
