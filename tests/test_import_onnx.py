"""``rescompile import model.onnx``: an ONNX file rescompile wrote (BatchNorm kept or folded) or
torch.onnx exported from torchvision imports as the built-in spec, and that spec with the weights
``--weights`` writes computes what onnxruntime computes on the file; a file with an op outside the
table, without names or unreadable is refused in one line naming the node, with nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from support import randomise_normalisation
from test_import import SIZE, builtin_graph, reference_model

from rescompile.backends import torch_backend
from rescompile.backends.onnx_backend import run_onnxruntime
from rescompile.cli import main
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import Weights, random_weights, read_weights, save_weights
from rescompile.testing import assert_close

SLOW = [pytest.mark.slow]


def import_file(onnx_file: Path, folder: Path) -> tuple[Path, Weights]:
    assert main(["import", str(onnx_file), "-o", str(folder), "--weights", "--size", str(SIZE)]) == 0
    return folder / f"{onnx_file.stem}.yaml", read_weights(folder / f"{onnx_file.stem}.safetensors")


def imported_outputs(spec: Path, weights: Weights, inputs: np.ndarray) -> np.ndarray:
    """The imported spec compiled to torch, holding the weights the import wrote."""
    graph = compile_spec(spec)
    model = torch_backend.build_module(graph).eval()
    torch_backend.load_weights(model, graph, weights)
    with torch.no_grad():
        result: np.ndarray = model(torch.from_numpy(inputs)).numpy()
    return result


@pytest.mark.parametrize(
    "name", ["resnet18", *(pytest.param(name, marks=SLOW) for name in ("resnet50", "resnet50d", "seresnext50_32x4d"))]
)
@pytest.mark.parametrize("fold", [False, True], ids=["batch_norm", "fold_bn"])
def test_an_onnx_file_rescompile_wrote_imports_as_the_builtin(fold: bool, name: str, tmp_path: Path) -> None:
    # Random weights: BatchNorm statistics that are not the identity, which a folded file holds folded.
    original = random_weights(compile_spec(name, SIZE), seed=3)
    save_weights(original, tmp_path / "written.safetensors")
    onnx_file = tmp_path / f"{name}.onnx"
    written = [name, "--backend", "onnx", "--size", str(SIZE), "--weights", str(tmp_path / "written.safetensors")]
    assert main([*written, *(["--fold-bn"] if fold else []), "-o", str(onnx_file)]) == 0
    spec, weights = import_file(onnx_file, tmp_path / "imported")
    graph = compile_spec(spec)
    assert torch_backend.emit_source(graph) == torch_backend.emit_source(builtin_graph(name))
    inputs = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    expected = run_onnxruntime(onnx_file, inputs)
    assert_close(imported_outputs(spec, weights, inputs), expected, tolerance="network", what=f"imported {name}")
    if not fold:  # the file's own weights, every one, unchanged
        assert weights.keys() == original.keys()
        for key, value in original.items():
            np.testing.assert_array_equal(weights[key], value, err_msg=key)
        return
    # Folded: the imported spec compiled with --fold-bn is the file again, initializer by initializer.
    again = tmp_path / "again.onnx"
    imported_weights = str(tmp_path / "imported" / f"{name}.safetensors")
    assert main([str(spec), "--backend", "onnx", "--fold-bn", "--weights", imported_weights, "-o", str(again)]) == 0
    theirs = {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(onnx_file).graph.initializer}
    ours = {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(again).graph.initializer}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's own notice
@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=SLOW)])
@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=SLOW)], ids=["torchscript", "dynamo"])
def test_torch_onnx_export_of_torchvision_imports_as_the_builtin(name: str, dynamo: bool, tmp_path: Path) -> None:
    """Both torch.onnx exporters fold BatchNorm into the convs of a model in eval mode; the
    TorchScript one names the folded weights ``onnx::Conv_N`` and its nodes by scope
    (``/layer1/layer1.0/conv1/Conv``), the dynamo one keeps the conv's initializer names."""
    reference = reference_model(f"torchvision:{name}")
    randomise_normalisation(reference, seed=1)
    onnx_file = tmp_path / f"{name}.onnx"
    torch.onnx.export(reference, (torch.zeros(1, 3, SIZE, SIZE),), str(onnx_file), dynamo=dynamo)
    spec, weights = import_file(onnx_file, tmp_path / "imported")
    assert torch_backend.emit_source(compile_spec(spec)) == torch_backend.emit_source(builtin_graph(name))
    inputs = np.random.default_rng(2).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(inputs)).numpy()
    assert_close(imported_outputs(spec, weights, inputs), expected, tolerance="network", what=f"imported {name}")


def tiny_onnx(
    path: Path, activation: str = "Relu", conv_name: str = "conv1", weight_name: str = "conv1.weight"
) -> Path:
    """A conv, an activation, global pooling and a linear head, written by hand."""
    conv = helper.make_node(
        "Conv", ["input", weight_name], ["c"], name=conv_name, kernel_shape=[3, 3], pads=[1, 1, 1, 1]
    )
    nodes = [
        conv,
        helper.make_node(activation, ["c"], ["a"], name="relu"),
        helper.make_node("GlobalAveragePool", ["a"], ["p"], name="avgpool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["output"], name="fc", transB=1),
    ]
    weights = {
        weight_name: np.ones((8, 3, 3, 3), np.float32),
        "fc.weight": np.ones((10, 8), np.float32),
        "fc.bias": np.zeros(10, np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda path: tiny_onnx(path, activation="Elu"),
            "tiny.onnx: node relu (Elu): not an op a rescompile spec computes",
        ),
        (
            lambda path: tiny_onnx(path, conv_name="", weight_name="onnx::Conv_7"),
            "tiny.onnx: node #0 (Conv): no module path in its name or its initializers' names",
        ),
        (lambda path: path.write_bytes(b"not a model") and path, "tiny.onnx: not a readable ONNX model"),
        (lambda path: path, "tiny.onnx: no such file"),
        (tiny_onnx, "tiny.onnx: no stages found"),
    ],
    ids=["unsupported_op", "no_names", "unreadable", "missing", "no_stages"],
)
def test_an_onnx_file_that_cannot_be_imported_is_one_line(
    make: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(make)
    make(tmp_path / "tiny.onnx")
    assert main(["import", str(tmp_path / "tiny.onnx"), "-o", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip()
    assert message in error, error
    assert "\n" not in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_an_onnx_file_takes_no_constructor_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_onnx(tmp_path / "tiny.onnx")
    assert main(["import", str(path), "-o", str(tmp_path / "out"), "--kwargs", "classes=5"]) == 1
    assert "an ONNX file takes none" in capsys.readouterr().err
