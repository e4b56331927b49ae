"""Reading canonical weights: what is not a finite floating-point weight is refused, in one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch_file

from rescompile.compiler.weights import read_weights
from rescompile.spec.errors import RescompileError


def test_float_weights_of_any_width_read_as_float32(tmp_path: Path) -> None:
    save_file({"a": np.ones(3, np.float16), "b": np.full(2, 0.5, np.float64)}, tmp_path / "w.safetensors")
    weights = read_weights(tmp_path / "w.safetensors")
    assert {name: (str(array.dtype), array.tolist()) for name, array in weights.items()} == {
        "a": ("float32", [1.0, 1.0, 1.0]),
        "b": ("float32", [0.5, 0.5]),
    }


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"fc.weight": np.array([1.0, np.nan], np.float32)}, "fc.weight holds NaN or infinite values"),
        ({"fc.weight": np.array([1.0, np.inf], np.float32)}, "fc.weight holds NaN or infinite values"),
        (
            {"fc.weight": np.array([True, False])},
            "fc.weight is bool, not float16, float32 or float64; save float32 weights",
        ),
        (
            {"fc.weight": np.array([1, 2], np.int64)},
            "fc.weight is int64, not float16, float32 or float64; save float32 weights",
        ),
    ],
    ids=["nan", "infinity", "bool", "int64"],
)
def test_weights_that_are_not_finite_floats_are_refused(
    arrays: dict[str, np.ndarray], expected: str, tmp_path: Path
) -> None:
    save_file(arrays, tmp_path / "w.safetensors")
    with pytest.raises(RescompileError) as raised:
        read_weights(tmp_path / "w.safetensors")
    assert str(raised.value) == f"weights in {tmp_path / 'w.safetensors'}: {expected}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_weights_in_a_type_numpy_lacks_are_refused(dtype: torch.dtype, tmp_path: Path) -> None:
    save_torch_file({"fc.weight": torch.ones(2).to(dtype)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(RescompileError) as raised:
        read_weights(tmp_path / "w.safetensors")
    message = str(raised.value)
    # numpy reads these only where jax's ml_dtypes has registered them (then as a dtype we refuse).
    assert str(tmp_path / "w.safetensors") in message and "\n" not in message
    assert message.endswith("; save float32 weights")


def test_float64_beyond_float32_range_is_refused_after_the_cast(tmp_path: Path) -> None:
    """1e300 is finite in float64 and was written as inf with exit status 0."""
    save_file({"fc.weight": np.array([1.0, -1e300], np.float64)}, tmp_path / "w.safetensors")
    with pytest.raises(RescompileError) as raised:
        read_weights(tmp_path / "w.safetensors")
    assert str(raised.value) == (
        f"weights in {tmp_path / 'w.safetensors'}: fc.weight holds values beyond float32's range (±3.4e+38), "
        "which would become infinite"
    )


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "device"])
def test_weights_must_be_a_regular_file(kind: str, tmp_path: Path) -> None:
    """A FIFO blocked for ever; a directory was 'no such weights file'."""
    path = {"device": Path("/dev/zero")}.get(kind, tmp_path / "w.safetensors")
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(RescompileError) as raised:
        read_weights(path)
    expected = {
        "missing": f"no such weights file: {path}",
        "directory": f"cannot read {path}: it is a directory, not a weights file",
        "fifo": f"cannot read {path}: it is a FIFO, not a weights file",
        "device": f"cannot read {path}: it is a character device, not a weights file",
    }[kind]
    assert str(raised.value) == expected


@pytest.mark.parametrize("name", ["w.pth", "w.pt", "w.bin", "w.safetensors"])
def test_a_torch_checkpoint_as_weights_points_at_weights_convert(name: str, tmp_path: Path) -> None:
    """It was a safetensors header error."""
    path = tmp_path / name
    torch.save({"fc.weight": torch.ones(2)}, path)
    with pytest.raises(RescompileError) as raised:
        read_weights(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.endswith(f"convert it first: rescompile weights convert {path} --spec SPEC -o w.safetensors")
    if name != "w.safetensors":
        assert message.startswith(f"{path}: --weights takes canonical safetensors, not a torch checkpoint")


@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=6),
    dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_]),
)
def test_read_weights_gives_finite_float32_or_one_line(values: list[float], dtype: type, tmp_path_factory: Any) -> None:
    """The class: whatever a safetensors file holds, the weights read are finite float32 (every
    backend agreed on inf once: the finiteness check ran before the cast) or one line refuses them."""
    with np.errstate(all="ignore"):
        array: np.ndarray = np.array(values).astype(dtype)
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_file({"fc.weight": array}, path)
    try:
        weights = read_weights(path)
    except RescompileError as error:
        assert "\n" not in str(error) and "fc.weight" in str(error)
    else:
        assert weights["fc.weight"].dtype == np.float32 and np.isfinite(weights["fc.weight"]).all()
        assert np.array_equal(weights["fc.weight"], array.astype(np.float32))
