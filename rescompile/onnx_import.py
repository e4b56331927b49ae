"""``rescompile import model.onnx -o FOLDER``: an ONNX file as a network spec, by the importer's search.

The file's names give what a torch model's module tree gives the importer: every weighted node
(``Conv``, ``BatchNormalization``, ``Gemm``) has a module path, from its initializers' names
(``layer1.0.conv1.weight``, as rescompile's ONNX backend and torch.onnx's dynamo exporter write
them) or else from its own name (rescompile's ``layer1.0.conv1``, the TorchScript exporter's
``/layer1/layer1.0/conv1/Conv``, the dynamo exporter's name scopes). Its constant inputs become a
state_dict under that path (``layer1.0.bn1.running_mean``), and the paths become a tree of torch
layers holding no data (``nn.Conv2d`` on the meta device, with the file's channels, kernel and
groups), so :func:`rescompile.import_stages.search` runs on it unchanged: the same stages, candidates
and checks. The reference outputs are the file's own, run by onnxruntime with randomised
BatchNorm statistics (and folded biases), block by block.

A folded file (BatchNorm folded into the conv before it: rescompile's ``--fold-bn``, or what
torch.onnx writes for a model in eval mode) has a conv with a bias where a spec has a conv and a
BatchNorm. For each conv the candidate would fold whose BatchNorm the file lacks, the file's
weights are *unfolded*: the conv keeps the folded weight and the BatchNorm becomes the identity
plus the folded bias (weight 1, bias the conv's bias, mean 0, variance ``1 - epsilon``), so the
spec computes the file, and the spec compiled with ``--fold-bn`` is the file again.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rescompile.compiler.fold import folds
from rescompile.compiler.ir import Graph
from rescompile.compiler.pipeline import lower_for_inference
from rescompile.frameworks import import_framework
from rescompile.import_stages import search
from rescompile.importer import (
    OUTPUT,
    SEED,
    Imported,
    Reference,
    stage_candidates,
    structure_from,
)
from rescompile.spec.errors import RescompileError

if TYPE_CHECKING:
    import onnx
    import torch

Array = npt.NDArray[np.float32]

ONNX_OPS = frozenset(
    {
        *("Conv", "BatchNormalization", "Gemm", "MatMul", "Relu", "Add", "Sum", "Sub", "Mul", "Div"),
        *("MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Transpose"),
        *("Pad", "Slice", "Concat", "Split", "Shape", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Tanh"),
        *("Softplus", "Softmax", "LeakyRelu", "Erf", "Sqrt", "Identity", "Squeeze", "Unsqueeze", "Constant"),
        *("Gelu", "Mish"),
    }
)
"""The ONNX ops that a spec's layers lower to (what rescompile's ONNX backend writes, and torch.onnx
for the same layers): a file holding any other is refused, naming the node."""
_ROLES: dict[str, tuple[str, ...]] = {
    "Conv": ("weight", "bias"),
    "BatchNormalization": ("weight", "bias", "running_mean", "running_var"),
    "Gemm": ("weight", "bias"),
}
"""The torch names of a weighted node's inputs after the first: its state_dict keys under its path."""
_RANDOMISED: dict[str, dict[int, str]] = {
    "BatchNormalization": {1: "scale", 2: "shift", 3: "shift", 4: "scale"},
    "Conv": {2: "shift"},
}
"""The inputs the comparison randomises, as :func:`rescompile.importer.randomise_normalisation`
does: BatchNorm's affine and statistics, and a conv's bias (a folded BatchNorm's)."""


@dataclass(frozen=True)
class OnnxFile:
    """A read ONNX file: its compute nodes (constants taken out), each one's module path, and its
    constants (initializers, ``Constant`` nodes and ``Identity`` nodes of constants) by name."""

    source: str
    model: onnx.ModelProto
    nodes: tuple[onnx.NodeProto, ...]
    paths: tuple[str, ...]
    constants: Mapping[str, npt.NDArray[Any]]
    initialized: frozenset[str]
    """The constants that are initializers (or ``Identity`` nodes of them): the weights. A
    ``Constant`` node is not one (rescompile writes a blur pool's fixed filter so)."""

    def weighted(self, node: onnx.NodeProto) -> bool:
        """Whether ``node`` is a layer with weights: a Conv, BatchNorm or Gemm reading an initializer."""
        return _weighted(node, self.initialized)


def read_onnx(source: str) -> OnnxFile:
    """The file ``source`` names, its ops checked against :data:`ONNX_OPS` and every weighted node
    given a module path; else one line naming the node and its op."""
    onnx_library = import_framework("onnx", f"rescompile import {source}", "onnx")
    from onnx import numpy_helper

    try:
        model = onnx_library.load(source)
    except FileNotFoundError:
        raise RescompileError(f"{source}: no such file") from None
    except Exception as error:  # protobuf's DecodeError and onnx's own errors alike
        raise RescompileError(f"{source}: not a readable ONNX model: {str(error).splitlines()[0]}") from None
    constants: dict[str, npt.NDArray[Any]] = {
        tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer
    }
    initialized = {tensor.name for tensor in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
            if node.input[0] in initialized:
                initialized.add(node.output[0])
        elif node.domain not in ("", "ai.onnx") or node.op_type not in ONNX_OPS:
            raise RescompileError(
                f"{source}: node {_label(node, index)} ({node.op_type}): not an op a rescompile spec computes"
            )
        else:
            nodes.append(node)
    paths = tuple(_node_path(node, initialized) for node in nodes)
    for index, (node, path) in enumerate(zip(nodes, paths, strict=True)):
        if _weighted(node, initialized) and not path:
            raise RescompileError(
                f"{source}: node {_label(node, index)} ({node.op_type}): no module path in its name or its "
                "initializers' names; rescompile imports files whose names say where each layer is"
            )
    return OnnxFile(source, model, tuple(nodes), paths, constants, frozenset(initialized))


def _weighted(node: onnx.NodeProto, initialized: Collection[str]) -> bool:
    return node.op_type in _ROLES and len(node.input) > 1 and node.input[1] in initialized


def _label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index}"


def _node_path(node: onnx.NodeProto, initialized: Collection[str]) -> str:
    """The module path of a node: for a weighted one, its first named weight's (``fc`` for
    ``fc.weight``); else its name's: rescompile's ``layer1.0.relu1`` as it is, the TorchScript
    exporter's ``/layer1/layer1.0/relu/Relu`` and the dynamo exporter's name scopes as a path."""
    for name, role in zip(node.input[1:], _ROLES.get(node.op_type, ()), strict=False):
        if name in initialized and name.endswith(f".{role}") and not name.startswith("onnx::"):
            return name[: -len(role) - 1]
    scopes = _scopes(node)
    if scopes:
        return _scope_path(scopes[1:-1])
    if node.name.startswith("/"):
        return _scope_path(node.name.split("/")[1:-1])
    if not node.name or node.name.startswith(("node_", f"{node.op_type}_")):  # a generated name
        return ""
    return node.name


def _scopes(node: onnx.NodeProto) -> list[str]:
    """The dynamo exporter's name scopes of a node (``["", "layer1", "layer1.0", "layer1.0.relu", "relu_1"]``)."""
    scopes = {entry.key: entry.value for entry in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
    found = ast.literal_eval(scopes) if scopes else []
    return [str(scope) for scope in found] if isinstance(found, list) else []


def _scope_path(scopes: Sequence[str]) -> str:
    """``layer1.0.conv1`` from the exporters' scopes ``layer1``, ``layer1.0``, ``conv1`` (or
    ``layer1.0.conv1``): a scope that starts with the one before it and a dot names its child."""
    path: list[str] = []
    previous = ""
    for scope in scopes:
        path.append(scope[len(previous) + 1 :] if previous and scope.startswith(previous + ".") else scope)
        previous = scope
    return ".".join(path)


def state_dict(file: OnnxFile, constants: Mapping[str, npt.NDArray[Any]]) -> dict[str, Array]:
    """The weighted nodes' constant inputs by torch name (``layer1.0.bn1.running_var``); a Gemm's
    weight as torch's ``Linear`` holds it (out × in)."""
    weights: dict[str, Array] = {}
    for node, path in zip(file.nodes, file.paths, strict=True):
        for name, role in zip(node.input[1:], _ROLES.get(node.op_type, ()), strict=False):
            if not file.weighted(node) or name not in file.initialized:
                continue
            value = np.asarray(constants[name], np.float32)
            if node.op_type == "Gemm" and role == "weight" and not _attribute(node, "transB", 0):
                value = value.T.copy()
            weights[f"{path}.{role}"] = value
    return weights


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def unfolded(graph: Graph, weights: Mapping[str, Array]) -> dict[str, Array]:
    """``weights`` as the canonical weights of ``graph``: where ``graph`` folds a BatchNorm that the
    file does not hold, the file folded it, and the BatchNorm is the identity plus the conv's bias
    (module docstring)."""
    result = dict(weights)
    for fold in folds(lower_for_inference(graph)):
        conv_weight = result.get(f"{fold.conv}.weight")
        if f"{fold.batch_norm}.weight" in result or conv_weight is None:
            continue
        channels = conv_weight.shape[0]
        # torch.onnx drops a folded bias that is all zeros: no bias is a zero one.
        bias = result.pop(f"{fold.conv}.bias", np.zeros(channels, np.float32))
        result[f"{fold.batch_norm}.weight"] = np.ones(channels, np.float32)
        result[f"{fold.batch_norm}.bias"] = bias
        result[f"{fold.batch_norm}.running_mean"] = np.zeros(channels, np.float32)
        result[f"{fold.batch_norm}.running_var"] = np.full(channels, 1 - fold.epsilon, np.float32)
        if fold.conv_bias:
            result[f"{fold.conv}.bias"] = np.zeros(channels, np.float32)
    return result


def import_onnx(file: OnnxFile, name: str, size: int | tuple[int, int] | None) -> Imported:
    """The shortest spec of built-in parts that computes the file (the importer's search), at the
    file's input size where it is fixed, else at ``size`` (default 224)."""
    source = file.source
    tree = module_tree(file)
    unseen = frozenset({"batch_norm"}) if "" in folded_norms(file).values() else frozenset()
    candidates = [(path, module) for path, module in stage_candidates(tree) if path]  # the root is no stage
    boundaries = {path: _boundary(file, path) for path, _ in candidates}
    for path, module in candidates:
        boundaries.update(
            {f"{path}.{child}": _boundary(file, f"{path}.{child}") for child, _ in module.named_children()}
        )
    # Blocks run one after another; parallel paths (SK-ResNet's conv1.paths) are inside a block.
    candidates = [(path, module) for path, module in candidates if _chained(path, module, boundaries)]
    probe, size = _probe(file, size)
    randomised = _randomised(file)
    wanted = {path: tensors[1] for path, tensors in boundaries.items()}
    values = run_onnx(file, randomised, probe, {tensor for pair in boundaries.values() for tensor in pair})
    seen = {path: (values[first].shape, values[last].shape) for path, (first, last) in boundaries.items()}
    structure = structure_from(source, tree, candidates, seen, values[OUTPUT].shape)
    first = structure.stages[0]
    outputs = {path: values[tensor] for path, tensor in wanted.items()}
    outputs[""] = values[boundaries[f"{first.path}.{first.blocks[0]}"][0]]
    outputs[OUTPUT] = values[OUTPUT]
    weights = state_dict(file, randomised)
    reference = Reference(source, tree, structure, probe, outputs, unseen)
    return search(reference, name, size, lambda graph: unfolded(graph, weights))


def _chained(path: str, module: Any, boundaries: Mapping[str, tuple[str, str]]) -> bool:
    """Whether each child of ``path`` reads what the one before it computes."""
    children = [f"{path}.{child}" for child, _ in module.named_children()]
    return all(boundaries[after][0] == boundaries[before][1] for before, after in itertools.pairwise(children))


def _probe(file: OnnxFile, size: int | tuple[int, int] | None) -> tuple[Array, int | tuple[int, int]]:
    """A seeded random input of the file's fixed dimensions, the others from ``size`` (batch 2)."""
    dimensions = [dimension.dim_value for dimension in file.model.graph.input[0].type.tensor_type.shape.dim]
    if len(dimensions) != 4 or not dimensions[1]:
        raise RescompileError(f"{file.source}: the input is not an image batch (batch, channels, height, width)")
    asked = (size, size) if isinstance(size, int) else size
    fixed = (dimensions[2], dimensions[3])
    if all(fixed) and asked is not None and asked != fixed:
        raise RescompileError(f"{file.source}: the file's input is {fixed[0]}×{fixed[1]}, not --size {size}")
    height, width = fixed if all(fixed) else asked or (224, 224)
    shape = (dimensions[0] or 2, dimensions[1], height, width)
    probe = np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)
    return probe, height if height == width else (height, width)


def _randomised(file: OnnxFile) -> dict[str, npt.NDArray[Any]]:
    """The constants with each BatchNorm's affine and statistics and each conv bias drawn at
    random (scales in [0.5, 1.5), shifts ~ 0.1·N(0, 1)), so no branch hides behind a zero."""
    generator = np.random.default_rng(SEED + 1)
    constants = dict(file.constants)
    for node in file.nodes:
        for index, kind in _RANDOMISED.get(node.op_type, {}).items():
            if index < len(node.input) and node.input[index] in constants:
                shape = constants[node.input[index]].shape
                value = generator.random(shape) + 0.5 if kind == "scale" else generator.standard_normal(shape) * 0.1
                constants[node.input[index]] = value.astype(np.float32)
    return constants


def run_onnx(
    file: OnnxFile, constants: Mapping[str, npt.NDArray[Any]], probe: Array, also: set[str]
) -> dict[str, Array]:
    """The file's output (``OUTPUT``) and the tensors ``also`` names, by onnxruntime on ``probe``
    with ``constants`` as its initializers."""
    ort = import_framework("onnxruntime", f"rescompile import {file.source}", "onnx")
    from onnx import helper, numpy_helper

    used = {name for node in file.nodes for name in node.input}
    initializers = [
        numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items() if name in used
    ]
    output = file.model.graph.output[0].name
    extra = sorted(also - {output, file.model.graph.input[0].name})
    graph = helper.make_graph(
        list(file.nodes),
        file.model.graph.name or "imported",
        [file.model.graph.input[0]],
        [file.model.graph.output[0], *(helper.make_empty_tensor_value_info(name) for name in extra)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=file.model.opset_import, ir_version=file.model.ir_version)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        results = session.run([output, *extra], {file.model.graph.input[0].name: probe})
    except Exception as error:  # onnxruntime's own errors: a file it cannot run
        raise RescompileError(f"{file.source}: onnxruntime cannot run it: {str(error).splitlines()[0]}") from None
    values = dict(zip([OUTPUT, *extra], (np.asarray(result, np.float32) for result in results), strict=True))
    values.setdefault(file.model.graph.input[0].name, probe)
    if output in also:
        values[output] = values[OUTPUT]
    return values


def _boundary(file: OnnxFile, path: str) -> tuple[str, str]:
    """The tensors entering and leaving the nodes under ``path``: the first one its nodes read
    that none of them computes, and the last one they compute that a node elsewhere (or the
    graph's output) reads."""
    inside = [_under(node_path, path) for node_path in file.paths]
    made = {name for node, within in zip(file.nodes, inside, strict=True) if within for name in node.output}
    read_outside = {name for node, within in zip(file.nodes, inside, strict=True) if not within for name in node.input}
    read_outside |= {output.name for output in file.model.graph.output}
    entering = [
        name
        for node, within in zip(file.nodes, inside, strict=True)
        if within
        for name in node.input
        if name and name not in made and name not in file.constants
    ]
    leaving = [name for name in made if name in read_outside]
    if not entering or not leaving:
        raise RescompileError(f"{file.source}: {path}: cannot tell its input and output tensors")
    last = max(leaving, key=lambda name: _producer_index(file, name))
    return entering[0], last


def _producer_index(file: OnnxFile, tensor: str) -> int:
    return next(index for index, node in enumerate(file.nodes) if tensor in node.output)


def _under(node_path: str, path: str) -> bool:
    return node_path == path or node_path.startswith(path + ".")


def module_tree(file: OnnxFile) -> torch.nn.Module:
    """The module tree the file's paths spell: a torch layer holding no data (meta device) for
    each weighted node, of its shape; an :class:`OnnxOp` for each other node with a path of its
    own; an :class:`OnnxScope` for each path above them. Nodes inside a weighted node's path (a
    standardised conv's arithmetic on its weight) belong to that layer."""
    torch_library = import_framework("torch", f"rescompile import {file.source}", "torch")
    scope_class, op_class = _tree_classes()
    root = scope_class()
    folded = folded_norms(file)
    weighted = {path for node, path in zip(file.nodes, file.paths, strict=True) if file.weighted(node)}
    for node, path in zip(file.nodes, file.paths, strict=True):
        segments = path.split(".")
        if file.weighted(node):
            layer = _layer(torch_library, node, file.constants)
            _place(file.source, root, path, layer, weighted=True)
            if folded.get(id(node)):  # where the BatchNorm it absorbed was (bn1 for conv1)
                norm = torch_library.nn.BatchNorm2d(layer.out_channels, device="meta")
                _place(file.source, root, folded[id(node)], norm, weighted=False)
        elif path and not any(".".join(segments[:end]) in weighted for end in range(1, len(segments) + 1)):
            _place(file.source, root, path, op_class(), weighted=False)
    tree: torch.nn.Module = root
    return tree


def _place(source: str, root: Any, path: str, module: Any, weighted: bool) -> None:
    """``module`` at ``path`` in the tree, under an :class:`OnnxScope` for each path above it (an
    :class:`OnnxOp` there becomes one: a node named after a module that has nodes inside). A
    weighted layer replaces an ``OnnxOp`` at its path; anything else is placed where nothing is."""
    scope_class, op_class = _tree_classes()
    parent = root
    *above, name = path.split(".")
    for segment in above:
        child = parent._modules.get(segment)
        if child is None or isinstance(child, op_class):
            child = scope_class()
            parent._modules[segment] = child  # in place: the order stays the file's
        elif not isinstance(child, scope_class):
            raise RescompileError(f"{source}: {path}: a node inside the layer {segment} ({type(child).__name__})")
        parent = child
    held = parent._modules.get(name)
    if held is None or (weighted and isinstance(held, op_class)):
        parent._modules[name] = module
    elif weighted:
        raise RescompileError(f"{source}: {path}: two weighted nodes, or a layer with nodes inside")


def folded_norms(file: OnnxFile) -> dict[int, str]:
    """Each conv with a bias that no BatchNormalization reads (by ``id`` of its node), and the
    path of the BatchNorm folded into it where the file says it (``""`` where it does not):
    rescompile's ``--fold-bn`` names the conv's output after it (``layer1.0.bn1``), torch.onnx's
    dynamo exporter gives the conv the BatchNorm's name scopes."""
    normalised = {node.input[0] for node in file.nodes if node.op_type == "BatchNormalization"}
    found: dict[int, str] = {}
    for node, path in zip(file.nodes, file.paths, strict=True):
        if node.op_type != "Conv" or not file.weighted(node) or node.output[0] in normalised:
            continue
        scoped = _scope_path(_scopes(node)[1:-1])
        # rescompile names a conv node by its path and, where folded, its output after the BatchNorm
        # (an exporter's generated output names, ``getitem_3``, name no module).
        named = node.output[0] if node.name == path and len(node.input) > 2 else ""
        norm = next((other for other in (scoped, named) if other and not _under(other, path)), "")
        if norm or len(node.input) > 2:  # a bias, or a BatchNorm named: folded
            found[id(node)] = norm
    return found


def _layer(torch: Any, node: onnx.NodeProto, constants: Mapping[str, npt.NDArray[Any]]) -> Any:
    """The torch layer a weighted node is, with its shapes and no data (meta device)."""
    weight = constants.get(node.input[1]) if len(node.input) > 1 else None
    has_bias = len(node.input) > 2 and node.input[2] in constants
    if node.op_type == "BatchNormalization":
        channels = weight.shape[0] if weight is not None else 1
        return torch.nn.BatchNorm2d(channels, eps=_attribute(node, "epsilon", 1e-5), device="meta")
    if weight is None:
        return torch.nn.Identity()
    if node.op_type == "Gemm":
        out_features, in_features = weight.shape if _attribute(node, "transB", 0) else weight.shape[::-1]
        return torch.nn.Linear(in_features, out_features, bias=has_bias, device="meta")
    groups = _attribute(node, "group", 1)
    return torch.nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=tuple(_attribute(node, "strides", [1, 1])),
        groups=groups,
        bias=has_bias,
        device="meta",
    )


@functools.cache
def _tree_classes() -> tuple[type, type]:
    """The two kinds of module of the tree built from a file's names (made on first use: torch is
    imported only by the commands that need it)."""
    module = import_framework("torch", "rescompile import", "torch").nn.Module
    scope = type("OnnxScope", (module,), {"__doc__": "A path of the file's names with nodes under it (a block)."})
    op = type("OnnxOp", (module,), {"__doc__": "A node of the file with no weights (Relu, Add, MaxPool, ...)."})
    return scope, op
