"""``rescompile weights convert``: checkpoints saved from randomly initialised torchvision and timm
models (nothing is downloaded) are checked strictly against a spec and written as canonical or
Flax weights that give the reference's outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from flax import nnx
from safetensors.numpy import load_file
from safetensors.torch import save_file
from support import randomise_normalisation

from rescompile.backends import flax_backend, torch_backend
from rescompile.cli import main
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import read_weights
from rescompile.testing import assert_close


@pytest.fixture(scope="module")
def timm_resnet50d() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet50d", pretrained=False)
    randomise_normalisation(model, seed=1)
    return model.eval()


def test_a_timm_checkpoint_converts_to_weights_that_give_timms_outputs(
    timm_resnet50d: torch.nn.Module, tmp_path: Path
) -> None:
    torch.save(timm_resnet50d.state_dict(), tmp_path / "resnet50d.pth")
    assert (
        main(
            [
                "weights",
                "convert",
                str(tmp_path / "resnet50d.pth"),
                "--spec",
                "resnet50d",
                "-o",
                str(tmp_path / "w.safetensors"),
            ]
        )
        == 0
    )
    weights = read_weights(tmp_path / "w.safetensors")
    assert not any(name.endswith("num_batches_tracked") for name in weights)
    graph = compile_spec("resnet50d", size=64)
    model = torch_backend.build_module(graph).eval()
    torch_backend.load_weights(model, graph, weights)
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(model(inputs).numpy(), timm_resnet50d(inputs).numpy(), tolerance="same_framework")


def test_a_wrapped_checkpoint_converts_to_the_flax_layout_the_generated_module_loads(
    timm_resnet50d: torch.nn.Module, tmp_path: Path
) -> None:
    """timm's train.py saves {'state_dict': ..., 'epoch': ...}; the Flax file's keys are nnx state paths."""
    torch.save({"state_dict": timm_resnet50d.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pth")
    arguments = ["weights", "convert", str(tmp_path / "checkpoint.pth"), "--spec", "resnet50d"]
    assert main([*arguments, "-o", str(tmp_path / "flax.safetensors"), "--backend", "flax"]) == 0
    state = load_file(str(tmp_path / "flax.safetensors"))
    assert state["conv1/0/kernel"].shape == (3, 3, 3, 32)  # HWIO
    graph = compile_spec("resnet50d", size=64)
    model = flax_backend.build_module(graph)
    # Each variable of the model by its path, joined with '/': the file's keys.
    paths = [path for path, _ in nnx.to_flat_state(nnx.state(model))]
    assert sorted("/".join(map(str, path)) for path in paths) == sorted(state)
    nnx.update(model, nnx.from_flat_state({path: state["/".join(map(str, path))] for path in paths}))
    model.eval()
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = timm_resnet50d(inputs).numpy()
    actual = np.asarray(model(inputs.numpy().transpose(0, 2, 3, 1)))
    assert_close(actual, expected, tolerance="network", what="flax logits from converted weights")


def test_a_torchvision_safetensors_file_converts_unchanged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    save_file(state, str(tmp_path / "resnet18.safetensors"))
    assert (
        main(
            [
                "weights",
                "convert",
                str(tmp_path / "resnet18.safetensors"),
                "--spec",
                "resnet18",
                "-o",
                str(tmp_path / "out.safetensors"),
            ]
        )
        == 0
    )
    converted = read_weights(tmp_path / "out.safetensors")
    expected = {name: tensor.numpy() for name, tensor in state.items() if not name.endswith("num_batches_tracked")}
    assert converted.keys() == expected.keys()
    assert all(np.array_equal(converted[name], expected[name]) for name in expected)


def test_a_checkpoint_of_another_network_lists_what_differs_and_writes_nothing(
    timm_resnet50d: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(timm_resnet50d.state_dict(), tmp_path / "resnet50d.pth")
    (tmp_path / "out.safetensors").write_bytes(b"kept")
    assert (
        main(
            [
                "weights",
                "convert",
                str(tmp_path / "resnet50d.pth"),
                "--spec",
                "resnet50",
                "-o",
                str(tmp_path / "out.safetensors"),
            ]
        )
        == 1
    )
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "does not fit resnet50: missing: conv1.weight," in error
    assert "unexpected: conv1.0.weight," in error
    assert "mis-shaped: layer1.0.downsample.1.weight (256, 64, 1, 1) (expected (256,))" in error
    assert (tmp_path / "out.safetensors").read_bytes() == b"kept"


def test_a_pickled_object_is_refused_without_running_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.pth")  # a whole module, not a state_dict
    assert (
        main(
            [
                "weights",
                "convert",
                str(tmp_path / "module.pth"),
                "--spec",
                "resnet18",
                "-o",
                str(tmp_path / "o.safetensors"),
            ]
        )
        == 1
    )
    assert "torch.load(weights_only=True) refused it" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_an_unknown_format_names_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "w.ckpt").write_bytes(b"")
    assert (
        main(
            [
                "weights",
                "convert",
                str(tmp_path / "w.ckpt"),
                "--spec",
                "resnet18",
                "-o",
                str(tmp_path / "o.safetensors"),
            ]
        )
        == 1
    )
    assert (
        "unknown checkpoint format '.ckpt'; expected a file ending in .pth, .pt, .bin, .safetensors"
        in capsys.readouterr().err
    )


def _resnet20_state() -> dict[str, torch.Tensor]:
    from rescompile.compiler.weights import random_weights

    return {name: torch.from_numpy(array) for name, array in random_weights(compile_spec("resnet20")).items()}


def _convert(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    output = checkpoint.parent / "out.safetensors"
    status = main(["weights", "convert", str(checkpoint), "--spec", "resnet20", "-o", str(output)])
    assert status == 0 or not output.exists()
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (torch.empty(16, 3, 3, 3, device="meta"), "conv1.weight is a meta tensor, which holds no values"),
        (torch.ones(16, 3, 3, 3).to_sparse(), "conv1.weight is a sparse tensor (torch.sparse_coo); save it dense"),
        (torch.ones(16, 27).to_sparse_csr(), "conv1.weight is a sparse tensor (torch.sparse_csr)"),
        (
            torch.quantize_per_tensor(torch.ones(16, 3, 3, 3), 0.1, 0, torch.qint8),
            "conv1.weight is quantized (torch.qint8); save float weights (dequantize())",
        ),
        (torch.ones(16, 3, 3, 3, dtype=torch.complex32), "conv1.weight is torch.complex32, which rescompile cannot"),
        (torch.ones(16, 3, 3, 3, dtype=torch.complex64), "conv1.weight is complex64, not float16, float32 or float64"),
    ],
    ids=["meta", "sparse-coo", "sparse-csr", "quantized", "complex32", "complex64"],
)
def test_tensors_without_plain_values_are_refused_by_name_in_one_line(
    value: torch.Tensor, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _resnet20_state()
    state["conv1.weight"] = value
    torch.save(state, tmp_path / "w.pth")
    status, error = _convert(tmp_path / "w.pth", capsys)
    assert status == 1 and error.count("\n") == 1 and expected in error, error


@pytest.mark.parametrize("key", [3, ("conv1", "weight"), None, 1.5])
def test_non_string_names_are_refused_in_one_line(
    key: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state: dict[object, torch.Tensor] = {key: value for key, value in _resnet20_state().items()}
    state[key] = torch.ones(1)
    torch.save(state, tmp_path / "w.pth")
    status, error = _convert(tmp_path / "w.pth", capsys)
    assert status == 1
    assert (
        error == f"{tmp_path / 'w.pth'} holds a weight named {key!r} ({type(key).__name__}); "
        "a state_dict's names are strings\n"
    )


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_narrow_floats_numpy_lacks_widen_exactly(
    dtype: torch.dtype, suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fp8 checkpoints were a TypeError traceback; every float8 and bfloat16 value is a float32."""
    state = {
        name: tensor.to(dtype) if name.endswith("weight") else tensor for name, tensor in _resnet20_state().items()
    }
    if suffix == ".pth":
        torch.save(state, tmp_path / f"w{suffix}")
    else:
        save_file(state, str(tmp_path / f"w{suffix}"))
    status, error = _convert(tmp_path / f"w{suffix}", capsys)
    assert status == 0, error
    converted = read_weights(tmp_path / "out.safetensors")
    assert all(np.array_equal(converted[name], tensor.float().numpy()) for name, tensor in state.items())


def test_an_old_pickle_protocol_refusal_is_one_line_without_torchs_warning(tmp_path: Path) -> None:
    torch.save(_resnet20_state(), tmp_path / "old.pth", _use_new_zipfile_serialization=False, pickle_protocol=4)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rescompile",
            "weights",
            "convert",
            "old.pth",
            "--spec",
            "resnet20",
            "-o",
            "o.safetensors",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("cannot read old.pth: torch.load"), result.stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda state: state.update({"bn1.running_var": -state["bn1.running_var"].double()}),
            "weights do not fit resnet20: bn1.running_var holds a negative variance",
        ),
        (
            lambda state: state.update({"fc.bias": state["fc.bias"].double() * 1e300}),
            "fc.bias holds values beyond float32's range (±3.4e+38), which would become infinite",
        ),
    ],
    ids=["negative-variance", "beyond-float32"],
)
def test_values_no_backend_can_use_are_refused_and_nothing_is_written(
    change: Callable[[dict[str, torch.Tensor]], None], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _resnet20_state()
    change(state)
    torch.save(state, tmp_path / "w.pth")
    status, error = _convert(tmp_path / "w.pth", capsys)
    assert status == 1 and error.count("\n") == 1 and expected in error, error


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_checkpoint_that_is_not_a_regular_file_is_named_so(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory or FIFO that exists was 'no such checkpoint file' (and a FIFO could block)."""
    path = tmp_path / "w.pth"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    status, error = _convert(path, capsys)
    assert status == 1
    assert error == f"cannot read {path}: it is a {kind if kind == 'directory' else 'FIFO'}, not a checkpoint file\n"
    assert _convert(tmp_path / "absent.pth", capsys) == (1, f"no such checkpoint file: {tmp_path / 'absent.pth'}\n")
