"""The residual-add rules (docs/residual_rules.md): the shortcut policy ``none`` on either side of
a mapping, a block instance keeping exactly one residual add once its ``when`` conditions are
applied, and the errors that name the instance and the ``when``; and ``did_you_mean`` never
suggesting the word it was given."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rescompile.compiler import compile_spec
from rescompile.spec import RescompileError
from rescompile.spec.errors import did_you_mean

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "residual_rules.md").read_text()
REMOVED = (
    "blocks/mine.yaml:6:49: layer2.0: block 'mine' has no residual add: 'when: stride == 1' removes node 'add' "
    "here (stride = 2); a block instance has exactly one residual add (an add node reading 'shortcut'). For no "
    "shortcut where shapes change, use the network's 'shortcut: {where_shapes_match: identity, "
    "where_shapes_change: none}'"
)
TWO = (
    "blocks/mine.yaml:7:3: layer1.0: block 'mine' has 2 residual adds (add, add2) ('when: stride == 1' and "
    "'when: width >= 16' hold here); a block instance has exactly one residual add (an add node reading "
    "'shortcut')"
)
"""The errors of the rule's two mistakes, as docs/residual_rules.md quotes them."""
NETWORK = """\
name: net
input: {channels: 3, size: 16}
stem: cifar
block: mine
shortcut: {where_shapes_match: identity, where_shapes_change: none}
stages:
  - {depth: 2, width: 16}
  - {depth: 2, width: 32, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""
BLOCK = """\
name: mine
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn1: {op: batch_norm}
  add: {op: add, inputs: [bn1, shortcut]}
"""


def error_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, network: str, block: str) -> str:
    """The one-line error compiling ``network`` (net.yaml) with ``block`` as blocks/mine.yaml."""
    (tmp_path / "blocks").mkdir(exist_ok=True)
    (tmp_path / "blocks" / "mine.yaml").write_text(block)
    (tmp_path / "net.yaml").write_text(network)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    return str(raised.value)


def test_did_you_mean_never_suggests_the_word_itself() -> None:
    assert did_you_mean("none", ["none", "projection"]) == ""
    assert did_you_mean("none", ["none", "nine"]) == " (did you mean 'nine'?)"
    assert did_you_mean("nome", ["none", "projection"]) == " (did you mean 'none'?)"


def test_none_in_a_mapping_leaves_out_the_residual_add_where_shapes_change(tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "mine.yaml").write_text(BLOCK)
    (tmp_path / "net.yaml").write_text(NETWORK)
    graph = compile_spec(tmp_path / "net.yaml")
    # The stem makes 16 channels: layer1 keeps them (identity); layer2.0 changes both width and stride.
    assert [(block.path, block.shortcut) for block in graph.blocks] == [
        ("layer1.0", "identity"),
        ("layer1.1", "identity"),
        ("layer2.0", None),
        ("layer2.1", "identity"),
    ]
    assert [node.op.kind for node in graph.blocks[2].nodes] == ["conv", "batch_norm"]
    assert [node.op.kind for node in graph.blocks[3].nodes][-1] == "add"


def test_none_where_shapes_match_and_a_projection_where_they_change(tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "mine.yaml").write_text(BLOCK)
    policy = "{where_shapes_match: none, where_shapes_change: projection}"
    (tmp_path / "net.yaml").write_text(
        NETWORK.replace("{where_shapes_match: identity, where_shapes_change: none}", policy)
    )
    graph = compile_spec(tmp_path / "net.yaml")
    assert [block.shortcut for block in graph.blocks] == [None, None, "projection", None]


def test_none_on_both_sides_is_a_plain_network(tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "mine.yaml").write_text(BLOCK)
    policy = "{where_shapes_match: none, where_shapes_change: none}"
    (tmp_path / "net.yaml").write_text(
        NETWORK.replace("{where_shapes_match: identity, where_shapes_change: none}", policy)
    )
    graph = compile_spec(tmp_path / "net.yaml")
    assert not graph.residual and [block.shortcut for block in graph.blocks] == [None] * 4


def test_a_misspelt_none_in_a_mapping_suggests_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    network = NETWORK.replace("where_shapes_change: none", "where_shapes_change: nome")
    assert error_of(tmp_path, monkeypatch, network, BLOCK) == (
        "net.yaml:5:63: unknown shortcut 'nome' (did you mean 'none'?); use a policy ('A', 'B', 'C' or 'none') "
        "or a shortcut kind ('identity' or a file in shortcuts/, e.g. 'projection', 'zero_pad')"
    )


def test_a_when_that_removes_the_residual_add_names_the_instance_and_the_when(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = BLOCK.replace("inputs: [bn1, shortcut]}", "inputs: [bn1, shortcut], when: stride == 1}")
    network = NETWORK.replace("where_shapes_change: none", "where_shapes_change: projection")
    assert error_of(tmp_path, monkeypatch, network, block) == REMOVED


def test_whens_that_leave_two_residual_adds_name_the_instance_and_the_whens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = BLOCK.replace(
        "  add: {op: add, inputs: [bn1, shortcut]}\n",
        "  add: {op: add, inputs: [bn1, shortcut], when: stride == 1}\n"
        "  add2: {op: add, inputs: [add, shortcut], when: width >= 16}\n",
    )
    assert error_of(tmp_path, monkeypatch, NETWORK, block) == TWO


def test_a_when_may_choose_between_residual_adds(tmp_path: Path) -> None:
    """What a ``when`` may do: keep one of two residual adds per instance (here the add sits after
    the activation where the stride is 1, before it elsewhere)."""
    block = BLOCK.replace(
        "  add: {op: add, inputs: [bn1, shortcut]}\n",
        "  early: {op: add, inputs: [bn1, shortcut], when: stride != 1}\n"
        "  relu: {op: relu, input: early if stride != 1 else bn1}\n"
        "  late: {op: add, inputs: [relu, shortcut], when: stride == 1}\n",
    )
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "mine.yaml").write_text(block)
    network = NETWORK.replace("where_shapes_change: none", "where_shapes_change: projection")
    (tmp_path / "net.yaml").write_text(network)
    graph = compile_spec(tmp_path / "net.yaml")
    assert [[node.name for node in block.nodes][-1] for block in graph.blocks] == ["late", "late", "relu", "late"]


def test_the_doc_quotes_the_errors_and_the_example_files_as_they_are() -> None:
    assert REMOVED in DOC.splitlines() and TWO in DOC.splitlines()
    quoted = [
        block for block in re.findall(r"```yaml\n(.*?)```", DOC, flags=re.DOTALL) if block.startswith("# examples/")
    ]
    assert len(quoted) == 3
    for block in quoted:
        header, *lines = block.splitlines()
        file_lines = iter((ROOT / header.removeprefix("# ")).read_text().splitlines())
        # Every line shown is the file's, in the file's order (a block may leave lines out).
        assert all(any(line == file_line for file_line in file_lines) for line in lines), header


def test_a_block_without_its_add_must_end_with_the_adds_branch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node after the branch, read only as the shortcut_input, would become the block's output
    where ``none`` drops the add: refused at the add, naming the instance."""
    block = BLOCK.replace("out_channels: width\n", "out_channels: width\nshortcut_input: pre\n").replace(
        "  add:", "  pre: {op: relu, input: input}\n  add:"
    )
    assert error_of(tmp_path, monkeypatch, NETWORK, block) == (
        "blocks/mine.yaml:8:8: layer2.0: without its residual add, block 'mine' would end with 'bn1', which is not "
        "its last node; order the nodes so that the residual add's branch comes last before it"
    )
