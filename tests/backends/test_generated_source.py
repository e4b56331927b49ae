"""Generated source reads like hand-written code: for every built-in (by default the part-covering
ones: a part is written alike in every network that uses it), the torch and flax files are exactly
what ruff's formatter would write, and pass ruff's lint rules; every op can be written where a spec
may put it."""

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import builtin_params, compiled
from hypothesis import given, settings
from hypothesis import strategies as st
from support import assert_backends_agree

from rescompile.backends import flax_backend, torch_backend
from rescompile.backends.source import MAX_INLINE_TERMS
from rescompile.compiler import Graph, compile_spec
from rescompile.spec import builtin_networks

EMITTERS = {
    "torch": torch_backend.emit_source,
    "torch-inference": lambda graph: torch_backend.emit_source(graph, inference=True),
    "flax": flax_backend.emit_source,
}
RUFF = [sys.executable, "-m", "ruff"]
SETTINGS = ["--isolated", "--line-length", "120", "--stdin-filename", "model.py"]


@pytest.mark.parametrize("backend", sorted(EMITTERS))
@pytest.mark.parametrize("name", builtin_params(builtin_networks()))
def test_generated_source_is_ruff_formatted_and_lint_clean(backend: str, name: str) -> None:
    source = EMITTERS[backend](compiled(name))
    formatted = subprocess.run([*RUFF, "format", *SETTINGS, "-"], input=source, capture_output=True, text=True)
    assert formatted.returncode == 0, formatted.stderr
    assert formatted.stdout == source
    lint = subprocess.run([*RUFF, "check", *SETTINGS, "-"], input=source, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


STEM_NETWORK = """\
name: stem_ops
input: {channels: 3, size: 32}
stem: odd
block: basic
shortcut: B
stages:
  - {depth: 1, width: 16}
head: classifier
head_parameters: {classes: 10}
"""
STEM = """\
name: odd
nodes:
  conv1: {op: conv, out_channels: 16, kernel: 3, padding: 1}
  drop: {op: drop_path, rate: 0.2}
  pad: {op: pad, padding: 1}
  blur: {op: blur_pool, taps: 3, stride: 2, padding: 1, padding_mode: reflect}
"""


def test_ops_in_a_stem_are_written_from_their_fields_and_agree_across_backends(tmp_path: Path) -> None:
    """The stem and head are written with concrete values taken from each op's fields: drop_path in
    a stem was a KeyError ('rate') at emit time before."""
    (tmp_path / "stems").mkdir()
    (tmp_path / "stems" / "odd.yaml").write_text(STEM)
    (tmp_path / "net.yaml").write_text(STEM_NETWORK)
    graph = compile_spec(tmp_path / "net.yaml")
    assert_backends_agree(graph)


WIDE_ADD_BLOCK = """\
name: wide_add
parameters: {terms: 2}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn1: {op: batch_norm}
  sum: {op: add, inputs: ["bn1 for k in range(terms)"]}
  add: {op: add, inputs: [sum, shortcut]}
  relu: {op: relu}
"""
WIDE_ADD_NETWORK = STEM_NETWORK.replace("block: basic", "block: wide_add").replace("stem: odd", "stem: cifar")


def _wide_add(folder: Path, terms: int) -> Graph:
    (folder / "blocks").mkdir(exist_ok=True)
    (folder / "blocks" / "wide_add.yaml").write_text(WIDE_ADD_BLOCK.replace("terms: 2", f"terms: {terms}"))
    (folder / "net.yaml").write_text(WIDE_ADD_NETWORK)
    return compile_spec(folder / "net.yaml")


@settings(max_examples=6, deadline=None)
@given(st.one_of(st.integers(2, 40), st.sampled_from([4_000, 10_000])))
def test_an_add_of_any_number_of_inputs_is_source_python_compiles(terms: int) -> None:
    """``a + a + …`` of 4,000 terms made a file that failed to import (RecursionError): the sum is
    written with bounded nesting past MAX_INLINE_TERMS, and inline (as before) up to it."""
    with tempfile.TemporaryDirectory() as folder:
        graph = _wide_add(Path(folder), terms)
    for backend in (torch_backend, flax_backend):
        source = backend.emit_source(graph)
        compile(source, "<generated>", "exec")
        assert ("sum([" in source) == (terms > MAX_INLINE_TERMS)


def test_an_add_of_thousands_of_inputs_agrees_in_every_backend(tmp_path: Path) -> None:
    assert_backends_agree(_wide_add(tmp_path, 4_000))
