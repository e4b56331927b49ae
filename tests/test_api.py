"""``rescompile.create_model`` and ``list_models``, shaped like timm's: a ready module of every
backend, overrides validated as YAML is (one located line each), canonical weights loaded strictly."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

import rescompile
from rescompile.api import create_graph
from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec, cost
from rescompile.compiler.weights import random_weights, save_weights
from rescompile.testing import assert_close


def test_list_models_matches_shell_patterns_over_the_builtins() -> None:
    assert rescompile.list_models("resnet50?") == ["resnet50c", "resnet50d", "resnet50s", "resnet50t"]
    assert "seresnext50_32x4d" in rescompile.list_models("*resnext*")
    assert rescompile.list_models() == sorted(rescompile.list_models())
    assert rescompile.list_models("nothing*") == []


def test_create_model_gives_timms_model_with_its_class_count() -> None:
    model = rescompile.create_model("resnet50d", num_classes=10)
    reference = timm.create_model("resnet50d", pretrained=False, num_classes=10)
    model.load_state_dict(reference.state_dict(), strict=True)
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(model.eval()(inputs).numpy(), reference.eval()(inputs).numpy(), tolerance="same_framework")


def test_create_model_for_inference_loads_timms_state_dict_and_gives_its_outputs() -> None:
    model = rescompile.create_model("resnet50d", num_classes=10, inference=True)
    reference = timm.create_model("resnet50d", pretrained=False, num_classes=10).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(model.eval()(inputs).numpy(), reference(inputs).numpy(), tolerance="network")
    with pytest.raises(rescompile.RescompileError, match=r"^inference=True applies to backend torch only, not 'flax'$"):
        rescompile.create_model("resnet20", backend="flax", inference=True)


def test_block_parameters_and_input_overrides() -> None:
    graph = rescompile.create_graph("resnet50", groups=32, base_width=4, input_size=(96, 64), in_channels=1)
    assert cost(graph).parameters == cost(compile_spec("resnext50_32x4d")).parameters - 2 * 64 * 7 * 7
    assert graph.input_shape == (1, 96, 64)


def test_every_backend_returns_its_own_model_type() -> None:
    assert isinstance(rescompile.create_model("resnet20", backend="torch"), torch.nn.Module)
    assert isinstance(rescompile.create_model("resnet20", backend="flax"), nnx.Module)
    assert isinstance(rescompile.create_model("resnet20", backend="onnx"), onnx.ModelProto)


def test_weights_are_loaded_strictly(tmp_path: Path) -> None:
    graph = compile_spec("resnet20")
    weights = random_weights(graph, seed=4)
    save_weights(weights, tmp_path / "w.safetensors")
    model = rescompile.create_model("resnet20", weights=tmp_path / "w.safetensors")
    loaded = torch_backend.to_weights(model, graph)
    assert all(np.array_equal(loaded[name], weights[name]) for name in weights)
    with pytest.raises(rescompile.RescompileError, match=r"^weights do not fit resnet32: missing: layer1\.3\."):
        rescompile.create_model("resnet32", weights=tmp_path / "w.safetensors")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"num_classes": 0},
            "create_model(resnet18): num_classes=0: head: nodes.fc.out_features = classes gives 0; it must be "
            "at least 1",
        ),
        ({"grups": 3}, "create_model(resnet18): grups=3: block 'basic' has no parameter 'grups'"),
        ({"input_size": 0}, "create_model(resnet18): input_size=0: each side is from 1 to 16,384"),
        ({"backend": "tensorflow"}, "unknown backend 'tensorflow'; use one of torch, flax, onnx"),
        (
            {"num_classes": 10, "in_channels": 4, "drop_path_rate": 2.5},
            "create_model(resnet18): drop_path_rate=2.5: layer2.1: nodes.drop_path.rate = block_drop_rate gives",
        ),
        (
            {"input_size": (224, 160), "in_channels": -1},
            "create_model(resnet18): in_channels=-1: input.channels: input should be greater than 0 (got -1)",
        ),
        (
            {"drop_path_rate": None},
            "create_model(resnet18): drop_path_rate=None: a block parameter is a number, a string or a boolean, "
            "not NoneType",
        ),
        (
            {"drop_path_rate": torch.tensor(0.1)},
            "create_model(resnet18): drop_path_rate=tensor(0.1000): a block parameter is a number, a string or a "
            "boolean, not Tensor",
        ),
        ({"drop_path_rate": Path("x")}, "create_model(resnet18): drop_path_rate=PosixPath('x'): a block parameter"),
        ({"num_classes": 1.5}, "create_model(resnet18): num_classes=1.5: expected a positive integer"),
        ({"num_classes": np.float32(3)}, "create_model(resnet18): num_classes=3.0: expected a positive integer"),
        ({"input_size": "224"}, "create_model(resnet18): input_size='224': expected a positive integer or a"),
        (
            {"weights": {"fc.weight": 1}},
            "create_model(resnet18): weights={'fc.weight': 1}: expected the path of a .safetensors file, not dict",
        ),
        ({"backend": ["torch"]}, "unknown backend ['torch']; use one of torch, flax, onnx"),
    ],
)
def test_a_bad_override_is_one_line_naming_the_argument(overrides: dict[str, object], message: str) -> None:
    """Errors were located in YAML the caller never saw (`create_model(resnet18):1:37:`, the column
    past the text shown); a tensor, a Path or None was a yaml RepresenterError traceback or said a
    float parameter 'should be a valid integer'."""
    with pytest.raises(rescompile.RescompileError) as raised:
        rescompile.create_model("resnet18", **overrides)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_numpy_scalars_are_their_python_values() -> None:
    given = create_graph(
        "resnet20", num_classes=np.int64(10), input_size=(np.int32(40), np.int64(48)), drop_path_rate=np.float64(0.1)
    )
    plain = create_graph("resnet20", num_classes=10, input_size=(40, 48), drop_path_rate=0.1)
    assert given == plain and given.output_shape == (10,)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (0, "size=0: each side is from 1 to 16,384"),
        ((224, 0), "size=(224, 0): each side is from 1 to 16,384"),
        (20000, "size=20000: each side is from 1 to 16,384"),
        ("224", "size='224': expected a positive integer or a (height, width) pair of them"),
        (True, "size=True: expected a positive integer or a (height, width) pair of them"),
        ((1, 2, 3), "size=(1, 2, 3): expected a positive integer or a (height, width) pair of them"),
    ],
)
def test_compile_spec_refuses_a_bad_size_in_one_line(size: object, message: str) -> None:
    """size=0 was pydantic's multi-line report."""
    with pytest.raises(rescompile.RescompileError) as raised:
        compile_spec("resnet18", size=size)  # type: ignore[arg-type]
    assert str(raised.value) == message


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.builds(np.int64, st.integers(-(2**31), 2**31)),
    st.builds(np.float32, st.floats(-10, 10, width=32)),
    st.builds(np.float64, st.floats(-10, 10)),
    st.builds(np.bool_, st.booleans()),
    st.builds(Path, st.text(max_size=3)),
    st.builds(torch.tensor, st.floats(-1, 1)),
    st.lists(st.integers(-5, 300), max_size=3).map(tuple),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.builds(object),
)


@given(argument=st.sampled_from(["num_classes", "input_size", "in_channels", "drop_path_rate", "grups"]), value=VALUES)
def test_any_python_value_as_any_argument_is_a_graph_or_one_line_naming_it(argument: str, value: object) -> None:
    """The class: whatever a caller passes, create_graph builds a graph or raises RescompileError in
    one line that names the argument (yaml's RepresenterError, pydantic's report and unlocated
    columns were the failures)."""
    try:
        graph = create_graph("resnet20", **{argument: value})  # type: ignore[arg-type]
    except rescompile.RescompileError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(f"create_model(resnet20): {argument}="), message
    else:
        assert graph.name == "resnet20"


FRESH_PROCESS_LOAD = """
import sys, torch
for path in sys.argv[1:]:
    saved = torch.load(path, weights_only=False)
    model, inputs, outputs = saved["model"], saved["inputs"], saved["outputs"]
    with torch.no_grad():
        print(type(model).__name__, float((model(inputs) - outputs).abs().max()))
"""


def test_a_created_model_saved_whole_loads_in_a_fresh_process(tmp_path: Path) -> None:
    """torch.save(model) pickles the generated classes with their source, so a process that never
    generated them loads the model (and the inference lowering, whose load hook is a partial)."""
    paths = []
    for name, options in [("resnet20", {"num_classes": 7}), ("resnet20", {"inference": True})]:
        model = rescompile.create_model(name, **options).eval()
        inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            outputs = model(inputs)
        paths.append(tmp_path / f"{len(paths)}.pt")
        torch.save({"model": model, "inputs": inputs, "outputs": outputs}, paths[-1])
    loaded = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_LOAD, *map(str, paths)], capture_output=True, text=True, check=False
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["ResNet", "0.0", "ResNet", "0.0"]


def test_two_models_of_one_name_keep_their_own_classes() -> None:
    """resnet20 with 10 and with 100 classes generate different source: each pickles (by its own
    class, which the other never replaces) and deep-copies as itself."""
    ten, hundred = rescompile.create_model("resnet20"), rescompile.create_model("resnet20", num_classes=100)
    assert type(ten) is not type(hundred)
    for model, classes in [(ten, 10), (hundred, 100)]:
        for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert type(copied) is type(model) and copied.fc.out_features == classes
            assert torch.equal(copied.fc.weight, model.fc.weight)
