"""The backend registry: what every entry promises, checked for every entry."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rescompile.backends.interface import Backend, EmitOptions
from rescompile.backends.registry import BACKENDS
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import random_weights
from rescompile.spec import RescompileError

ENTRIES = pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS)


@ENTRIES
def test_canonical_weights_round_trip_exactly(backend: Backend) -> None:
    graph = compile_spec("resnet18", size=32)
    weights = random_weights(graph, seed=5)
    model = backend.build(graph)
    backend.load_weights(model, graph, weights)
    back = backend.to_weights(model, graph)
    assert list(back) == list(weights)
    for name, array in weights.items():
        assert back[name].dtype == np.float32, name
        np.testing.assert_array_equal(back[name], array, err_msg=name)


@ENTRIES
def test_options_are_emit_options(backend: Backend) -> None:
    assert backend.options <= {field.name for field in dataclasses.fields(EmitOptions)}


def test_listing_the_backends_imports_no_framework(tmp_path: Path) -> None:
    script = (
        "import sys\nfrom rescompile.backends.registry import BACKENDS\n"
        "print([(backend.name, backend.suffix, sorted(backend.options)) for backend in BACKENDS.values()])\n"
        "loaded = {'torch', 'jax', 'flax', 'onnx', 'onnxruntime'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True)


def test_a_missing_framework_is_one_error_naming_the_extra_that_installs_it() -> None:
    backend = Backend(
        "caffe",
        ".caffemodel",
        requires="caffe_not_installed",
        extra="caffe",
        module="caffe_backend",
        runtime="caffe_runtime",
    )
    with pytest.raises(RescompileError) as error:
        backend.emit(compile_spec("resnet20"), EmitOptions())
    assert str(error.value) == (
        "the caffe backend needs caffe_not_installed, which is not installed: pip install 'rescompile[caffe]'"
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("raise OSError('libcudnn.so.9: cannot open shared object file')", "OSError: libcudnn.so.9: cannot open"),
        ("import rescompile_absent_dependency", "ModuleNotFoundError: No module named 'rescompile_absent_dependency'"),
        ("raise ImportError('numpy.core.multiarray failed to import\\nsecond line')", "ImportError: numpy.core"),
        ("raise AttributeError('module has no attribute x')", "AttributeError: module has no attribute x"),
    ],
    ids=["shared-library", "missing-dependency", "import-error", "version-mismatch"],
)
def test_an_installed_framework_that_fails_to_load_is_not_called_missing(
    source: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every failed import was 'not installed', though the framework was there and broken."""
    (tmp_path / "caffe_broken.py").write_text(source + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    backend = Backend(
        "caffe", ".caffemodel", requires="caffe_broken", extra="caffe", module="caffe_backend", runtime="caffe_runtime"
    )
    with pytest.raises(RescompileError) as error:
        backend.emit(compile_spec("resnet20"), EmitOptions())
    message = str(error.value)
    assert message.startswith("the caffe backend needs caffe_broken, which is installed but fails to import (")
    assert reason in message and "\n" not in message and "not installed" not in message
