"""expand is pure: the loader reads every file first (load_parts), and expansion reads none."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest

from rescompile.compiler.expand import expand
from rescompile.compiler.pipeline import compile_spec
from rescompile.spec.loader import load_network, load_parts, resolve_network


def test_expand_reads_no_file_and_gives_the_compiled_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    path = resolve_network("resnet50")
    network = load_network(path)
    parts = load_parts(network, path)

    def refuse(*arguments: object, **keywords: object) -> None:
        raise AssertionError(f"expand opened a file: {arguments}")

    with monkeypatch.context() as patched:
        for owner, name in ((builtins, "open"), (os, "open"), (Path, "open"), (Path, "read_text")):
            patched.setattr(owner, name, refuse)
        graph = expand(network, parts)
    assert graph == compile_spec("resnet50")


def test_load_parts_reads_each_stage_block_once_per_name() -> None:
    path = resolve_network("resnet18")
    parts = load_parts(load_network(path), path)
    assert len(parts.blocks) == 4
    assert all(block is parts.blocks[0] for block in parts.blocks)
    assert parts.policy == ("identity", "projection")
    assert list(parts.shortcuts) == ["projection"]
