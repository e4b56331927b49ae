"""The Python API, shaped like timm's: ``create_model`` and ``list_models``.

>>> model = rescompile.create_model("resnet50d", num_classes=10)          # a torch nn.Module
>>> model = rescompile.create_model("resnet50", backend="flax")           # a flax nnx.Module
>>> rescompile.list_models("resnet50*")

Overrides are validated as YAML is: they are merged over the named network exactly as a network
file that ``extends`` it would be, and a bad one is the usual one-line error, naming the argument
(``create_model(resnet18): num_classes=0: head: nodes.fc.out_features = classes gives 0; ...``).
Numpy scalars count as their Python values; a value no YAML spec could hold (a tensor, a Path,
None) is refused by name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.backends.registry import BACKENDS
from rescompile.backends.surface import TimmHead
from rescompile.checkpoints import canonical_weights, read_checkpoint
from rescompile.compiler.ir import Graph
from rescompile.compiler.pipeline import checked_size, lower
from rescompile.compiler.weights import read_weights
from rescompile.spec.errors import RescompileError
from rescompile.spec.expressions import Value
from rescompile.spec.loader import builtin_networks, load_network, load_network_with, resolve_network


def list_models(
    filter: str | Sequence[str] = "",
    module: str = "",
    pretrained: bool = False,
    exclude_filters: str | Sequence[str] = "",
    name_matches_cfg: bool = False,
    include_tags: bool | None = None,
) -> list[str]:
    """The built-in architectures, sorted, with timm's arguments: those matching the shell-style
    ``filter`` (``"resnet*"``, or a list of patterns: any of them; empty: all) and none of
    ``exclude_filters``. ``pretrained=True`` lists none (rescompile ships no weights: see
    ``create_model``'s ``checkpoint_path``). ``module`` (timm's source module), ``name_matches_cfg``
    and ``include_tags`` (pretrained tags) are taken for compatibility and change nothing: every
    built-in is one network of one name."""
    del module, name_matches_cfg, include_tags
    if pretrained:
        return []
    included = _patterns(filter) or ["*"]
    excluded = _patterns(exclude_filters)
    return [
        name
        for name in builtin_networks()
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in included)
        and not any(fnmatch.fnmatchcase(name, pattern) for pattern in excluded)
    ]


def _patterns(patterns: str | Sequence[str]) -> list[str]:
    return ([patterns] if patterns else []) if isinstance(patterns, str) else list(patterns)


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
    label = f"create_model({name})"
    try:
        num_classes = _count("num_classes", num_classes)
        in_channels = _count("in_channels", in_channels)
        input_size = None if input_size is None else checked_size(input_size, "input_size")
        block_parameters = {key: _value(key, value) for key, value in block_parameters.items()}
    except RescompileError as error:
        raise RescompileError(f"{label}: {error}") from None
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
    try:
        network = load_network_with(name, overrides, label)
        return lower(network, resolve_network(name))
    except RescompileError as error:
        if error.location is None or error.location.file != label:
            raise
        # Located in the overrides as the loader writes them (YAML text the caller never saw):
        # name the argument instead.
        argument = _argument_at(overrides, error.location.line, error.location.column)
        given = [argument] if argument in named else [key for key, value in named.items() if value is not None]
        shown = ", ".join(f"{key}={named[key]!r}" for key in given)
        raise RescompileError(f"{label}: {shown}: {error.message}") from None


_ARGUMENTS = {
    ("input", "channels"): "in_channels",
    ("input", "size"): "input_size",
    ("head_parameters", "classes"): "num_classes",
}
"""Where the overrides put an argument -> its name (a block parameter keeps its own)."""


def _argument_at(overrides: Mapping[str, Any], line: int, column: int) -> str | None:
    """The argument whose override holds 1-based ``line``:``column`` of the overrides' YAML text,
    as :func:`~rescompile.spec.loader.load_network_with` writes it."""
    import yaml

    text = yaml.safe_dump(dict(overrides), sort_keys=False, default_flow_style=True)
    position = (line - 1, column - 1)
    top = yaml.compose(text)
    for section, body in top.value if isinstance(top, yaml.MappingNode) else ():
        for key, value in body.value if isinstance(body, yaml.MappingNode) else ():
            start, end = key.start_mark, value.end_mark
            if (start.line, start.column) <= position <= (end.line, end.column):
                path = (section.value, key.value)
                return key.value if section.value == "block_parameters" else _ARGUMENTS.get(path)
    return None


def _plain(value: object) -> object:
    """A numpy scalar as its Python value (``np.int64(10)`` -> ``10``); anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def _count(argument: str, value: object) -> int | None:
    value = _plain(value)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise RescompileError(f"{argument}={value!r}: expected a positive integer")
    return value


def _value(argument: str, value: object) -> Value:
    """A block parameter: a number, a string or a boolean, as a YAML spec could give it."""
    value = _plain(value)
    if not isinstance(value, int | float | str):  # bool is an int
        raise RescompileError(
            f"{argument}={value!r}: a block parameter is a number, a string or a boolean, not {type(value).__name__}"
        )
    return value


def create_model(
    name: str | Path,
    backend: str = "torch",
    weights: str | Path | None = None,
    *,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    num_classes: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    in_channels: int | None = None,
    in_chans: int | None = None,
    global_pool: str | None = None,
    drop_rate: float = 0.0,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    inference: bool = False,
    **block_parameters: Value,
) -> Any:
    """A ready model of ``name``: a torch ``nn.Module`` (``backend="torch"``), a flax ``nnx.Module``
    (``"flax"``) or an ``onnx.ModelProto`` (``"onnx"``), freshly initialised as torchvision would
    initialise it, or holding ``weights`` (canonical safetensors, e.g. from ``rescompile weights
    convert``) or the torchvision/timm checkpoint at ``checkpoint_path`` (checked strictly, as that
    command checks it). Overrides as :func:`create_graph`; ``in_chans`` is timm's name for
    ``in_channels``. ``inference=True`` (torch only) lowers the model for evaluation, as
    ``--inference`` does: BatchNorm folded into the convs as canonical weights load (a torchvision
    state_dict loads as it is), channels_last.

    timm's head options (torch and flax): ``num_classes=0`` (no classifier: the pooled features
    out), ``global_pool`` ("avg", or "": no pooling, with ``num_classes=0``); ``drop_rate``
    (dropout before the classifier, torch only); ``features_only=True`` gives timm's features model
    (:class:`rescompile.backends.torch_features.FeatureListNet`: the maps ``out_indices`` of ``feature_info``; in
    Flax :class:`rescompile.backends.flax_features.FlaxFeatureNet`; in ONNX a ModelProto with one output per
    map, named by module).
    The model carries ``pretrained_cfg`` (input size, mean, std, crop)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise RescompileError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if weights is not None and not isinstance(weights, str | Path):
        raise RescompileError(
            f"create_model({name}): weights={weights!r}: expected the path of a .safetensors file, "
            f"not {type(weights).__name__}"
        )
    implementation = BACKENDS[backend]
    if inference and "inference" not in implementation.options:
        readers = ", ".join(name for name, entry in BACKENDS.items() if "inference" in entry.options)
        raise RescompileError(f"inference=True applies to backend {readers} only, not '{backend}'")
    _refuse_pretrained(name, pretrained)
    if weights is not None and checkpoint_path is not None:
        raise RescompileError("give weights= (canonical safetensors) or checkpoint_path= (a checkpoint), not both")
    in_channels = _in_channels(in_channels, in_chans)
    head = TimmHead(num_classes, global_pool, drop_rate, features_only, out_indices)
    head.check(backend, {name: entry.head_options for name, entry in BACKENDS.items()})
    graph = create_graph(
        name, num_classes=head.graph_classes, input_size=input_size, in_channels=in_channels, **block_parameters
    )
    model = implementation.build(graph, inference=inference)
    if weights is not None:
        implementation.load_weights(model, graph, read_weights(Path(weights)))
    if checkpoint_path is not None:
        path = Path(checkpoint_path)
        implementation.load_weights(model, graph, canonical_weights(graph, read_checkpoint(path), str(path)))
    return implementation.timm_model(model, graph, head)


def _refuse_pretrained(name: str | Path, pretrained: bool) -> None:
    if pretrained:
        stem = Path(name).stem
        raise RescompileError(
            f"create_model({name}, pretrained=True): rescompile has no weight hub; load a torchvision or timm "
            f"checkpoint with checkpoint_path='model.pth', or convert one once with 'rescompile weights convert "
            f"model.pth --spec {name} -o {stem}.safetensors' and pass weights='{stem}.safetensors'"
        )


def _in_channels(in_channels: int | None, in_chans: int | None) -> int | None:
    """``in_channels``, or timm's ``in_chans`` for it."""
    if in_chans is not None and in_channels is not None and in_chans != in_channels:
        raise RescompileError(f"in_chans={in_chans} and in_channels={in_channels} name one thing: give one of them")
    return in_channels if in_chans is None else in_chans
