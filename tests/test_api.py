"""``rescompile.create_model`` and ``list_models``, shaped like timm's: a ready module of every
backend, overrides validated as YAML is (one located line each), canonical weights loaded strictly."""

from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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
            {"num_classes": -1},
            "create_model(resnet18): num_classes=-1: head: nodes.fc.out_features = classes gives -1; it must be "
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
        "resnet20",
        num_classes=np.int64(10),  # type: ignore[arg-type]  # numpy scalars outside the annotation, on purpose
        input_size=(np.int32(40), np.int64(48)),  # type: ignore[arg-type]
        drop_path_rate=np.float64(0.1),
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
    paths: list[Path] = []
    created: list[tuple[str, dict[str, Any]]] = [("resnet20", {"num_classes": 7}), ("resnet20", {"inference": True})]
    for name, options in created:
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


def test_list_models_takes_timms_arguments() -> None:
    assert rescompile.list_models(["resnet50?", "*bit"]) == [
        *("resnet50c", "resnet50d", "resnet50s", "resnet50t"),
        "resnetv2_50x1_bit",
    ]
    assert rescompile.list_models("resnet5*", exclude_filters=["*_v1", "resnet50?"]) == [
        "resnet50",
        "resnet50_gn",
        "resnet56",
    ]
    assert rescompile.list_models(pretrained=True) == []  # no weight hub
    assert rescompile.list_models("") == rescompile.list_models("*") == rescompile.list_models()


def test_pretrained_is_one_line_pointing_to_the_converter() -> None:
    with pytest.raises(rescompile.RescompileError) as error:
        rescompile.create_model("resnet18", pretrained=True)
    message = str(error.value)
    assert "\n" not in message and "no weight hub" in message
    assert (
        "checkpoint_path='model.pth'" in message and "rescompile weights convert model.pth --spec resnet18" in message
    )


def test_checkpoint_path_loads_a_timm_checkpoint(tmp_path: Path) -> None:
    reference = timm.create_model("resnet50d", pretrained=False, num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "model.pth")
    model = rescompile.create_model("resnet50d", num_classes=10, checkpoint_path=tmp_path / "model.pth").eval()
    inputs = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(inputs), reference(inputs))


def test_timms_head_interface() -> None:
    """num_classes=0 gives pooled features (the classifier an Identity), global_pool='' the maps,
    in_chans is in_channels; forward is forward_head(forward_features), pre_logits stops before the
    classifier, reset_classifier swaps it; drop_rate drops before it in training only."""
    inputs = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    model = rescompile.create_model("resnet50d", in_chans=1, drop_rate=0.5).eval()
    assert (model.num_features, model.num_classes, model.drop_rate) == (2048, 1000, 0.5)
    assert model.get_classifier() is model.fc
    assert model.pretrained_cfg["input_size"] == (1, 224, 224) and model.pretrained_cfg["crop_pct"] == 0.875
    with torch.no_grad():
        features = model.forward_features(inputs)
        assert features.shape == (2, 2048, 2, 2)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.equal(pooled, features.mean((2, 3)))
        assert torch.equal(model(inputs), model.fc(pooled))
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), torch.nn.Identity) and torch.equal(model(inputs), pooled)
        model.reset_classifier(0, global_pool="")
        assert torch.equal(model(inputs), features)
        model.reset_classifier(7, global_pool="avg")
        assert model(inputs).shape == (2, 7)
        assert not torch.equal(model.train()(inputs), model.train()(inputs)), "dropout in training"
    pooled_model = rescompile.create_model("resnet18", num_classes=0).eval()
    assert isinstance(pooled_model.fc, torch.nn.Identity) and pooled_model(torch.zeros(1, 3, 64, 64)).shape == (1, 512)
    bit = rescompile.create_model("resnetv2_50x1_bit").eval()  # a 1×1 conv classifier, then its flatten
    with torch.no_grad():
        assert bit.forward_head(bit.forward_features(torch.zeros(1, 3, 64, 64)), pre_logits=True).shape == (1, 2048)
    generated = rescompile.create_model("resnet20")
    assert type(generated)(num_classes=3).fc.out_features == 3  # the generated class takes num_classes


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"global_pool": "max"}, "global_pool='max': use 'avg' (the default) or '' (no pooling)"),
        ({"num_classes": 3, "global_pool": ""}, "global_pool='' (no pooling) needs num_classes=0"),
        ({"features_only": True, "out_indices": (5,)}, "out_indices=(5,) does not choose among resnet50d's 5"),
        ({"out_indices": (1,)}, "out_indices chooses feature maps: it needs features_only=True"),
        ({"backend": "onnx", "num_classes": 0}, "num_classes=0: timm's head options apply to backends torch and flax"),
        ({"backend": "flax", "drop_rate": 0.1}, "drop_rate=0.1: dropout before the classifier is in the torch model"),
        ({"backend": "flax", "global_pool": "max"}, "global_pool='max': use 'avg' (the default) or '' (no pooling)"),
        ({"in_chans": 1, "in_channels": 3}, "in_chans=1 and in_channels=3 name one thing"),
        ({"drop_rate": 1.0}, "drop_rate=1.0: a dropout probability is in [0, 1)"),
    ],
)
def test_a_bad_timm_option_is_one_line(options: dict[str, Any], message: str) -> None:
    with pytest.raises(rescompile.RescompileError, match=re.escape(message)) as error:
        rescompile.create_model("resnet50d", **options)
    assert "\n" not in str(error.value)


def test_flax_features_refuse_a_map_inside_the_stem() -> None:
    with pytest.raises(rescompile.RescompileError, match="resnet50d's feature map 0 \\(act1\\) is inside the stem"):
        rescompile.create_model("resnet50d", backend="flax", features_only=True)


@pytest.mark.parametrize("name", ["convnext_tiny", "regnetx_016", "resnetv2_50x1_bit", "resnest50d", "resnet18"])
def test_feature_maps_equal_timms(name: str) -> None:
    """Other stems and stage layouts: ConvNeXt (no stem map), RegNet (the stem itself), BiT (inside
    its stem); the torchvision-named presets call the stem's map 'relu' where timm says 'act1'."""
    torch.manual_seed(0)
    weights = timm.create_model(name, pretrained=False).state_dict()
    reference: Any = timm.create_model(name, pretrained=False, features_only=True).eval()  # a FeatureListNet

    def timm_key(key: str) -> str:  # timm's features model flattens the top level: stem_0 for stem.0
        first, _, rest = key.partition(".")
        dotted = f"{first.replace('_', '.')}.{rest}"
        return dotted if dotted in weights else key

    reference.load_state_dict({key: weights[timm_key(key)] for key in reference.state_dict()})
    model = rescompile.create_model(name, features_only=True).eval()
    model.load_state_dict({key: weights[key] for key in model.state_dict()})
    info = [
        {key: entry[key] for key in ("num_chs", "reduction", "module")} for entry in reference.feature_info.get_dicts()
    ]
    if name == "resnet18":
        info[0]["module"] = "relu"
    assert model.feature_info.get_dicts() == info
    images = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for ours, theirs in zip(model(images), reference(images), strict=True):
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize(("name", "out_indices"), [("resnet18", None), ("resnet50d", (1, 2, 3, 4))])
def test_onnx_features_are_the_torch_features_models_maps(
    name: str, out_indices: tuple[int, ...] | None, tmp_path: Path
) -> None:
    """backend='onnx' with features_only gives one output per chosen map, named by module as
    feature_info names it, and ONNX Runtime's maps are the torch features model's (same weights)."""
    from rescompile.backends.onnx_backend import onnxruntime_outputs
    from rescompile.testing import TOLERANCES, max_differences, within

    weights_path = tmp_path / "weights.safetensors"
    save_weights(random_weights(compile_spec(name, size=64), seed=3), weights_path)
    options: dict[str, Any] = {"input_size": 64, "weights": weights_path, "features_only": True}
    torch_model = rescompile.create_model(name, out_indices=out_indices, **options).eval()
    onnx_model = rescompile.create_model(name, backend="onnx", out_indices=out_indices, **options)
    modules = torch_model.feature_info.module_name()
    assert [output.name for output in onnx_model.graph.output] == modules
    assert modules == (["relu", "layer1", "layer2", "layer3", "layer4"] if out_indices is None else modules)
    assert not any(tensor.name.startswith("fc.") for tensor in onnx_model.graph.initializer)  # no head
    images = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = [value.numpy() for value in torch_model(torch.from_numpy(images))]
    maps = onnxruntime_outputs(onnx_model, images)
    for module, reference in zip(modules, expected, strict=True):
        assert maps[module].shape == reference.shape
        assert within(maps[module], reference, TOLERANCES["network"]), (
            module,
            max_differences(maps[module], reference),
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    # a plain head; a norm between pool and classifier; a 1×1 conv classifier and the flatten after it
    ["resnet18", "convnext_tiny", "resnetv2_50x1_bit"],
)
def test_flax_head_options_give_the_torch_models_outputs(name: str, tmp_path: Path) -> None:
    """The generated Flax class takes num_classes and global_pool as the torch one does: with the
    same weights, num_classes=0 gives the torch model's pooled features, global_pool='' its maps,
    forward_head(pre_logits=True) the same, and the logits agree (fp32 across frameworks)."""
    from rescompile.testing import TOLERANCES, max_differences, within

    weights_path = tmp_path / "weights.safetensors"
    save_weights(random_weights(compile_spec(name, size=64), seed=5), weights_path)
    images = np.random.default_rng(6).standard_normal((2, 3, 64, 64)).astype(np.float32)
    nhwc = images.transpose(0, 2, 3, 1)

    def pair(**options: Any) -> tuple[np.ndarray, np.ndarray]:
        torch_model = rescompile.create_model(name, input_size=64, weights=weights_path, **options).eval()
        flax_model = rescompile.create_model(name, "flax", input_size=64, weights=weights_path, **options)
        flax_model.eval()
        with torch.no_grad():
            expected = torch_model(torch.from_numpy(images)).numpy()
        actual = np.asarray(flax_model(nhwc))
        return (actual.transpose(0, 3, 1, 2) if actual.ndim == 4 else actual), expected

    for options in ({}, {"num_classes": 0}, {"num_classes": 0, "global_pool": ""}):
        actual, expected = pair(**options)
        assert actual.shape == expected.shape, options
        assert within(actual, expected, TOLERANCES["network"]), (options, max_differences(actual, expected))
    flax_model = rescompile.create_model(name, "flax", input_size=64, num_classes=0)
    assert flax_model.get_classifier() is None and flax_model.num_classes == 0
    features = flax_model.forward_features(nhwc)
    assert np.array_equal(flax_model.forward_head(features, pre_logits=True), flax_model(nhwc))
    flax_model.reset_classifier(7)
    assert flax_model(nhwc).shape == (2, 7)
    generated = rescompile.create_model(name, "flax")
    assert type(generated)(num_classes=3, rngs=nnx.Rngs(0)).num_classes == 3  # the generated class takes it
