"""``rescompile weights convert``: checkpoints saved from randomly initialised torchvision and timm
models (nothing is downloaded) are checked strictly against a spec and written as canonical or
Flax weights that give the reference's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from flax import nnx
from safetensors.numpy import load_file
from safetensors.torch import save_file

from rescompile.backends import flax_backend, torch_backend
from rescompile.cli import main
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import read_weights
from rescompile.testing import assert_close, randomise_normalisation


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
