"""`rescompile check`: agreement across backends, and a planted mismatch found and named."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import builtin_params
from support import assert_backends_agree

from rescompile.backends.interface import module_names
from rescompile.backends.registry import BACKENDS
from rescompile.check import (
    CheckResult,
    Progress,
    check,
    compare,
    feature_outputs,
    format_result,
    main,
)
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import random_weights, save_weights
from rescompile.spec import RescompileError, builtin_networks
from rescompile.testing import TOLERANCES

TORCH_AND_ONNX = ("torch", "onnx")


def test_planted_weight_mismatch_is_found_and_named() -> None:
    graph = compile_spec("resnet18", size=48)
    weights = random_weights(graph, seed=1)
    planted = dict(weights)
    planted["layer3.1.conv2.weight"] = planted["layer3.1.conv2.weight"] * 1.01
    inputs = np.random.default_rng(2).standard_normal((2, *graph.input_shape)).astype(np.float32)
    honest = check(graph, TORCH_AND_ONNX, dict.fromkeys(TORCH_AND_ONNX, weights), inputs, TOLERANCES["network"])
    assert honest.agree
    result = check(graph, TORCH_AND_ONNX, {"torch": weights, "onnx": planted}, inputs, TOLERANCES["network"])
    assert not result.agree
    (pair,) = result.pairs
    assert pair.first_mismatch == "layer3.1"
    assert pair.output_max_abs > 0


def test_every_feature_map_is_compared_and_a_wrong_one_is_caught_and_named() -> None:
    """A backend whose layer3 map is off by 1e-3 (over the 1e-4 tolerance) fails check at that map
    alone, and the report names it per map; act1, inside the stem, is named as not compared."""
    graph = compile_spec("resnet50d", size=32)
    assert feature_outputs(graph) == {
        "act1": None,
        "layer1": "layer1.2",
        "layer2": "layer2.3",
        "layer3": "layer3.5",
        "layer4": "layer4.2",
    }
    weights = random_weights(graph, seed=0)
    inputs = np.random.default_rng(1).standard_normal((1, *graph.input_shape)).astype(np.float32)
    outputs = BACKENDS["torch"].module_outputs(graph, weights, inputs)
    wrong = dict(outputs)
    wrong["layer3.5"] = outputs["layer3.5"] + np.float32(1e-3)
    tolerance = TOLERANCES["network"]
    honest = compare(graph, "torch", "copy", outputs, dict(outputs), tolerance)
    assert honest.agree and [feature.max_abs for feature in honest.features] == [0.0] * 4
    pair = compare(graph, "torch", "wrong", outputs, wrong, tolerance)
    assert not pair.agree
    assert [(feature.module, feature.agree) for feature in pair.features] == [
        ("layer1", True),
        ("layer2", True),
        ("layer3", False),
        ("layer4", True),
    ]
    assert abs(pair.features[2].max_abs - 1e-3) < 1e-6
    report = format_result(CheckResult(graph, ("torch", "wrong"), tolerance, (pair,), {})).splitlines()
    assert report[3].split() == ["feature", "map", "torch", "/", "wrong"]
    assert report[4].startswith("act1           not compared: inside the stem")
    assert report[5].split()[::2] == ["layer1", "ok"] and report[7].split()[0::2] == ["layer3", "OVER"]
    assert report[-1].startswith("MISMATCH")


def test_module_names_are_canonical() -> None:
    names = module_names(compile_spec("resnet18", size=32))
    assert names[:3] == ["stem", "layer1.0", "layer1.1"] and names[-2:] == ["layer4.1", "head"]


def test_check_command_prints_the_table_and_exits_0(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rescompile", "check", "resnet20", "--backends", "torch,onnx", "--batch", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("resnet20: input 3×32×32, 9 blocks, tolerance atol=0.0001 rtol=0.0001")
    assert lines[2].split()[:3] == ["torch", "/", "onnx"] and lines[2].endswith("none")
    assert lines[3].split() == ["feature", "map", "torch", "/", "onnx"]
    assert [line.split()[0] for line in lines[4:8]] == ["relu", "layer1", "layer2", "layer3"]  # timm's names
    assert all(line.endswith(" ok") for line in lines[4:8])
    assert lines[-1].startswith("all backends agree")
    assert result.stderr == ""  # the progress display is for terminals only


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["resnet20", "--backends", "torch"], "expected two or more of"),
        (["resnet20", "--backends", "torch,caffe"], "expected two or more of"),
    ],
)
def test_check_rejects_bad_backend_lists(arguments: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rescompile", "check", *arguments], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 1 and message in result.stderr and result.stderr.count("\n") == 1


def test_progress_writes_nothing_when_not_a_terminal(tmp_path: Path) -> None:
    """In a log a progress line stood before the error, making it two lines."""
    with (tmp_path / "log").open("w") as stream:
        progress = Progress(total=2, stream=stream)
        progress.step("one")
        progress.step("two")
        progress.close()
    assert (tmp_path / "log").read_text() == ""


def test_check_error_is_one_line_on_a_non_terminal_stderr(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rescompile", "check", "resnet20", "--weights", "missing.safetensors"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr == "no such weights file: missing.safetensors\n"


@pytest.mark.parametrize("name", builtin_params(builtin_networks(), default=frozenset()))
def test_check_passes_for_every_builtin_at_a_small_size(name: str) -> None:
    """In the slow tail only: by default the flax and ONNX backend tests compare every part-covering
    built-in with torch at 32×32, module by module, and tests/test_timm_presets.py checks the
    part-covering timm presets at 33×33 through the same check."""
    graph = compile_spec(name, size=32)
    assert_backends_agree(graph)


def test_check_loads_weights_from_a_safetensors_file(tmp_path: Path) -> None:
    graph = compile_spec("resnet20")
    save_weights(random_weights(graph, seed=9), tmp_path / "w.safetensors")
    arguments = ["resnet20", "--backends", "torch,onnx", "--weights", str(tmp_path / "w.safetensors")]
    assert main(arguments) == 0
    wrong = compile_spec("resnet32")
    save_weights(random_weights(wrong, seed=9), tmp_path / "wrong.safetensors")
    with pytest.raises(RescompileError, match=r"^weights do not fit resnet20: unexpected: layer1\.3\."):
        main(["resnet20", "--backends", "torch,onnx", "--weights", str(tmp_path / "wrong.safetensors")])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--atol", "nan"], "argument --atol: expected a finite tolerance of at least 0, got 'nan'"),
        (["--rtol", "-0.1"], "argument --rtol: expected a finite tolerance of at least 0, got '-0.1'"),
        (["--atol", "inf"], "argument --atol: expected a finite tolerance of at least 0, got 'inf'"),
        (["--seed", "-1"], "argument --seed: expected a seed from 0 to 4294967295, got '-1'"),
        (["--seed", "2**40"], "argument --seed: expected a seed from 0 to 4294967295, got '2**40'"),
    ],
)
def test_check_refuses_meaningless_options(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A NaN tolerance made every comparison pass; a negative seed was a numpy traceback."""
    with pytest.raises(RescompileError) as raised:
        main(["resnet20", *arguments])
    assert str(raised.value) == f"rescompile check: {message}; see 'rescompile check --help'"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--train-steps", "3", "--batch", "1000000"],
            "--batch 1000000 needs 669,834,000,000 activation values per backend, over the limit of 1,073,741,824",
        ),
        (["--train-steps", "1000000000"], "--train-steps must be from 1 to 10,000, got 1,000,000,000"),
        (["--train-steps", "0"], "--train-steps must be from 1 to 10,000, got 0"),
        (
            ["--train-steps", "3", "--backends", "torch,onnx"],
            "--train-steps compares torch and flax (the backends that train); got --backends torch,onnx",
        ),
        (
            ["--train-steps", "3", "--backends", "torch,flax,onnx"],
            "--train-steps compares torch and flax (the backends that train); got --backends torch,flax,onnx",
        ),
    ],
)
def test_train_steps_are_bounded_and_honour_backends(arguments: list[str], message: str) -> None:
    """10**9 steps or a batch of 10**6 pre-allocated every batch (a numpy MemoryError traceback);
    --backends was ignored."""
    with pytest.raises(RescompileError) as raised:
        main(["resnet20", *arguments])
    assert str(raised.value).startswith(message)


def test_training_batches_are_drawn_lazily_and_alike_on_every_pass() -> None:
    from rescompile.training import batches

    data = batches(compile_spec("resnet20"), steps=10**9, batch=2, seed=1)  # nothing drawn yet
    first = next(iter(data))
    again = next(iter(data))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[0].shape == (2, 3, 32, 32) and len(data) == 10**9


def test_check_bounds_the_batch_by_the_memory_it_needs() -> None:
    """resnet20 computes 669,834 activation values per input: a batch of 10^8 asked for 268 TB."""
    with pytest.raises(RescompileError) as raised:
        main(["resnet20", "--batch", "100000000", "--backends", "torch,onnx"])
    assert str(raised.value) == (
        "--batch 100000000 needs 66,983,400,000,000 activation values per backend, over the limit of "
        "1,073,741,824 (4 GiB in fp32); use a smaller --batch or --size"
    )
