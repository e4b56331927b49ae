"""The Python API, shaped like timm's: ``create_model`` and ``list_models``.

>>> model = rescompile.create_model("resnet50d", num_classes=10)          # a torch nn.Module
>>> model = rescompile.create_model("resnet50", backend="flax")           # a flax nnx.Module
>>> rescompile.list_models("resnet50*")

Overrides are validated as YAML is: they are merged over the named network exactly as a network
file that ``extends`` it would be, and a bad one is the usual one-line error, located in the
overrides (``create_model(resnet18, ...):1:29: head: nodes.fc.out_features = classes gives 0; ...``).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from rescompile.backends.registry import BACKENDS
from rescompile.compiler.ir import Graph
from rescompile.compiler.pipeline import lower
from rescompile.compiler.weights import read_weights
from rescompile.spec.errors import RescompileError
from rescompile.spec.expressions import Value
from rescompile.spec.loader import builtin_networks, load_network, load_network_with, resolve_network


def list_models(pattern: str = "*") -> list[str]:
    """The built-in architectures whose names match the shell-style ``pattern`` (``"resnet*"``), sorted."""
    return [name for name in builtin_networks() if fnmatch.fnmatchcase(name, pattern)]


def create_graph(
    name: str | Path,
    *,
    num_classes: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    in_channels: int | None = None,
    **block_parameters: Value,
) -> Graph:
    """The verified IR of ``name`` (a built-in or a spec file) with the overrides applied:
    ``num_classes`` sets the head's ``classes``, ``input_size`` and ``in_channels`` the input, and
    every other keyword is a block parameter (``groups=32``, ``drop_path_rate=0.1``)."""
    overrides: dict[str, Any] = {}
    if input_size is not None or in_channels is not None:
        declared = load_network(name).spec.input
        declared_size = list(declared.size) if isinstance(declared.size, tuple) else declared.size
        size = list(input_size) if isinstance(input_size, tuple) else input_size
        overrides["input"] = {
            "channels": declared.channels if in_channels is None else in_channels,
            "size": declared_size if size is None else size,
        }
    if block_parameters:
        overrides["block_parameters"] = block_parameters
    if num_classes is not None:
        overrides["head_parameters"] = {"classes": num_classes}
    named = {"num_classes": num_classes, "input_size": input_size, "in_channels": in_channels, **block_parameters}
    shown = ", ".join([str(name), *(f"{key}={value!r}" for key, value in named.items() if value is not None)])
    network = load_network_with(name, overrides, f"create_model({shown})")
    return lower(network, resolve_network(name))


def create_model(
    name: str | Path,
    backend: str = "torch",
    weights: str | Path | None = None,
    *,
    num_classes: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    in_channels: int | None = None,
    inference: bool = False,
    **block_parameters: Value,
) -> Any:
    """A ready model of ``name``: a torch ``nn.Module`` (``backend="torch"``), a flax ``nnx.Module``
    (``"flax"``) or an ``onnx.ModelProto`` (``"onnx"``), freshly initialised as torchvision would
    initialise it, or holding ``weights`` (canonical safetensors, e.g. from ``rescompile weights
    convert``). Overrides as :func:`create_graph`. ``inference=True`` (torch only) lowers the model
    for evaluation, as ``--inference`` does: BatchNorm folded into the convs as canonical weights
    load (a torchvision state_dict loads as it is), channels_last."""
    if backend not in BACKENDS:
        raise RescompileError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    implementation = BACKENDS[backend]
    if inference and "inference" not in implementation.options:
        readers = ", ".join(name for name, entry in BACKENDS.items() if "inference" in entry.options)
        raise RescompileError(f"inference=True applies to backend {readers} only, not '{backend}'")
    graph = create_graph(
        name, num_classes=num_classes, input_size=input_size, in_channels=in_channels, **block_parameters
    )
    if inference:
        # NOTE: the one backend option a model (not only a written file) takes; Implementation's
        # build_module has no options, so the lowering's own builder is called by name.
        from rescompile.backends.torch_backend import build_module

        model = build_module(graph, inference=True)
    else:
        model = implementation.build(graph)
    if weights is not None:
        implementation.load_weights(model, graph, read_weights(Path(weights)))
    return model
