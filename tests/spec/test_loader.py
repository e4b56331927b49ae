"""The loader's checks of a part: their verdicts, and work that grows linearly with the part."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescompile.spec.errors import RescompileError
from rescompile.spec.loader import MAX_EXTENDS, MAX_NAME_LENGTH, _PathTree, load_network, load_part

PATHS = st.lists(st.lists(st.sampled_from("abc"), min_size=1, max_size=3).map(".".join), unique=True, min_size=1)


def _clashes_pairwise(names: list[str]) -> set[tuple[str, str]]:
    """The definition: a node that is also a container of another node."""
    return {(layer, other) for layer in names for other in names if other.startswith(f"{layer}.")}


@settings(max_examples=200, deadline=None)
@given(names=PATHS)
def test_the_container_check_finds_what_comparing_every_pair_finds(names: list[str]) -> None:
    tree = _PathTree(names)
    found = [tree.clash(name) for name in names]
    clashes = _clashes_pairwise(names)
    assert {clash for clash in found if clash is not None} <= clashes
    # Every node in a clash is reported (as the layer or as the node held), so the first one is.
    involved = {name for pair in clashes for name in pair}
    assert [clash is not None for clash in found] == [name in involved for name in names]


@pytest.mark.slow
def test_a_block_of_20000_nodes_is_checked_in_linear_time(tmp_path: Path) -> None:
    """It took 37 s when every node was compared with every node. CPU time, not wall time: the
    bound must hold on a loaded machine (it takes about 2 s of CPU now)."""
    lines = ["name: t", "out_channels: width", "nodes:", "  conv1: {op: conv, out_channels: width, kernel: 1}"]
    lines += [f"  deep.{'.'.join(['y'] * 8)}.r{index}: {{op: relu}}" for index in range(20_000)]
    lines += [f"  add: {{op: add, inputs: [deep.{'.'.join(['y'] * 8)}.r19999, shortcut]}}"]
    path = tmp_path / "t.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.process_time()
    part = load_part(path, "blocks")
    assert len(part.spec.nodes) == 20_002
    assert time.process_time() - started < 20


def _chain(folder: Path, length: int) -> Path:
    """``net0.yaml`` extends ``net1.yaml`` ... extends resnet20: ``length`` files of the user's."""
    for index in range(length):
        base = f"net{index + 1}.yaml" if index + 1 < length else "resnet20"
        (folder / f"net{index}.yaml").write_text(f"name: net{index}\nextends: {base}\n")
    return folder / "net0.yaml"


@settings(max_examples=10, deadline=None)
@given(length=st.one_of(st.integers(1, 70), st.just(MAX_EXTENDS - 1), st.just(MAX_EXTENDS)))
def test_an_extends_chain_loads_or_is_refused_at_its_limit(
    length: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    network = _chain(tmp_path_factory.mktemp("chain"), length)
    if length + 1 <= MAX_EXTENDS:  # the built-in at its end is read too
        loaded = load_network(network)
        assert loaded.spec.name == "net0" and len(loaded.extended) == length
        return
    with pytest.raises(RescompileError) as raised:
        load_network(network)
    assert str(raised.value).endswith(
        f"2:10: extends: a chain of network files is at most {MAX_EXTENDS} files long; this one is longer"
    )


def test_an_extends_chain_of_1500_files_is_a_located_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was a RecursionError traceback."""
    network = _chain(tmp_path, 1_500)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        load_network(network.name)
    assert (
        str(raised.value)
        == "net63.yaml:2:10: extends: a chain of network files is at most 64 files long; this one is longer"
    )


def test_a_node_name_longer_than_its_limit_is_a_located_error(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    name = "a" * (MAX_NAME_LENGTH + 1)
    path.write_text(
        f"name: t\nout_channels: width\nnodes:\n  ? {name}\n  : {{op: conv, out_channels: width, kernel: 1}}\n"
    )
    with pytest.raises(RescompileError) as raised:
        load_part(path, "blocks")
    assert str(raised.value) == f"{path}:4:5: node name '{'a' * 40}…' has 257 characters; a node's name has at most 256"
