"""Generated source reads like hand-written code: for every built-in, the torch and flax files are
exactly what ruff's formatter would write, and pass ruff's lint rules."""

import subprocess
import sys

import pytest

from rescompile.backends import flax_backend, torch_backend
from rescompile.compiler import compile_spec
from rescompile.spec import builtin_networks

EMITTERS = {"torch": torch_backend.emit_source, "flax": flax_backend.emit_source}
RUFF = [sys.executable, "-m", "ruff"]
SETTINGS = ["--isolated", "--line-length", "120", "--stdin-filename", "model.py"]


@pytest.mark.parametrize("backend", sorted(EMITTERS))
@pytest.mark.parametrize("name", builtin_networks())
def test_generated_source_is_ruff_formatted_and_lint_clean(backend: str, name: str) -> None:
    source = EMITTERS[backend](compile_spec(name))
    formatted = subprocess.run([*RUFF, "format", *SETTINGS, "-"], input=source, capture_output=True, text=True)
    assert formatted.returncode == 0, formatted.stderr
    assert formatted.stdout == source
    lint = subprocess.run([*RUFF, "check", *SETTINGS, "-"], input=source, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
