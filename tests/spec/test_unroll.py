"""Unrolling templates: its work is bounded by its limits, whatever the counts, and each distinct
unrolling is done once per network."""

from __future__ import annotations

import re
import time
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescompile.compiler import compile_spec
from rescompile.spec import unroll
from rescompile.spec.errors import RescompileError
from rescompile.spec.expressions import FUNCTIONS
from rescompile.spec.loader import MAX_NAME_LENGTH, PartKind, load_part
from rescompile.spec.unroll import Unrolling

LOCATED = re.compile(r"[^:\n]+:\d+:\d+: [^\n]+")
BINDINGS = {"in_channels": 4, "width": 4, "stride": 1, "block_index": 0, "block_count": 1}


def _nested(counts: list[int], when: str) -> str:
    """A block whose nodes sit in ``len(counts)`` nested repeats, each node kept where ``when`` holds."""
    lines = ["name: t", "out_channels: width", "nodes:", "  conv1: {op: conv, out_channels: width, kernel: 1}"]
    indent = "  "
    indices = []
    for depth, count in enumerate(counts):
        index = f"i{depth}"
        indices.append(index)
        lines += [
            f"{indent}rep{depth}:",
            f"{indent}  op: repeat",
            f"{indent}  index: {index}",
            f"{indent}  count: {count}",
        ]
        lines.append(f"{indent}  nodes:")
        indent += "    "
    name = "r" + "_".join(f"{{{index}}}" for index in indices)
    lines.append(f'{indent}{name}: {{op: relu, input: conv1, when: "{when}"}}')
    lines += ["  add: {op: add, inputs: [conv1, shortcut]}", "  relu: {op: relu}"]
    return "\n".join(lines) + "\n"


COUNTS = st.one_of(st.integers(0, 50), st.sampled_from([1_000, 100_000, 2**31 - 1]))


@settings(max_examples=25, deadline=None)
@given(counts=st.lists(COUNTS, min_size=1, max_size=3), when=st.sampled_from(["False", "i0 < 0", "True"]))
def test_unrolling_work_is_bounded_whatever_the_counts(
    counts: list[int], when: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Nodes a ``when`` removes cost work too: the steps (nodes visited, iterations), not the
    nodes produced, are capped, so any counts give an unrolled part or a located line quickly."""
    path = tmp_path_factory.mktemp("unroll") / "t.yaml"
    path.write_text(_nested(counts, when))
    part = load_part(path, "blocks")
    started = time.process_time()
    with mock.patch.object(unroll, "MAX_UNROLL_STEPS", 20_000):  # the limit's work, scaled down
        try:
            unrolled = Unrolling().instantiate(part, BINDINGS, "blocks")
        except RescompileError as error:
            assert LOCATED.fullmatch(str(error)), str(error)
        else:
            assert len(unrolled.spec.nodes) <= 20_000
    assert time.process_time() - started < 5


@pytest.mark.slow
def test_a_repeat_whose_nodes_when_removes_is_capped_by_its_iterations(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(_nested([2**31 - 1], "False"))
    with pytest.raises(RescompileError) as raised:
        Unrolling().instantiate(load_part(path, "blocks"), BINDINGS, "blocks")
    assert str(raised.value) == (
        f"{path}:5:3: part 't': unrolling the network's templates takes more than 500,000 steps (template nodes "
        "visited, repeat iterations and comprehension items, in all instances); that is the limit"
    )


COMPREHENSION = """name: t
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  cat: {op: concat, inputs: ["conv1 for k in range(ARGUMENTS)"]}
  fix: {op: conv, out_channels: width, kernel: 1}
  add: {op: add, inputs: [fix, shortcut]}
"""


@settings(max_examples=25, deadline=None)
@given(bounds=st.lists(st.integers(-(2**31), 2**31), min_size=1, max_size=2))
def test_a_comprehension_is_bounded_before_it_is_made(
    bounds: list[int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("unroll") / "t.yaml"
    path.write_text(COMPREHENSION.replace("ARGUMENTS", ", ".join(map(str, bounds))))
    started = time.process_time()
    try:
        unrolled = Unrolling().instantiate(load_part(path, "blocks"), BINDINGS, "blocks")
    except RescompileError as error:
        assert LOCATED.fullmatch(str(error)), str(error)
        if len(range(*bounds)) > unroll.MAX_UNROLLED_NODES:
            assert "a comprehension makes at most 10,000" in str(error)
    else:
        assert len(unrolled.spec.nodes["cat"].inputs) == len(range(*bounds))  # type: ignore[union-attr]
    assert time.process_time() - started < 5


def test_a_comprehension_of_a_billion_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(COMPREHENSION.replace("ARGUMENTS", "1000000000"))
    with pytest.raises(RescompileError) as raised:
        Unrolling().instantiate(load_part(path, "blocks"), BINDINGS, "blocks")
    assert str(raised.value) == (
        f"{path}:5:30: part 't': 'conv1 for k in range(1000000000)' makes 1,000,000,000 values; a comprehension "
        "makes at most 10,000"
    )


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_an_index_named_like_a_function_is_a_located_error(name: str, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(_nested([2], "True").replace("i0", name))
    with pytest.raises(RescompileError) as raised:
        load_part(path, "blocks")
    assert str(raised.value).startswith(
        f"{path}:7:12: nodes.rep0.index: '{name}' is a function expressions call (abs, int, log2, make_divisible, "
        f"max, min, round); an index named so would hide it: use another name (i, j, {name}_index)"
    )
    comprehension = COMPREHENSION.replace("for k in", f"for {name} in").replace("ARGUMENTS", "2")
    path.write_text(comprehension)
    with pytest.raises(RescompileError, match=f"'{name}' is a function expressions call; name the item otherwise"):
        Unrolling().instantiate(load_part(path, "blocks"), BINDINGS, "blocks")


GATHERED = """name: t
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  each:
    op: repeat
    index: i
    count: COUNT
    nodes:
      r{i}: {op: relu, input: conv1, when: "WHEN"}
  cat: {op: concat, inputs: [conv1, conv1, "r{k} for k in range(READ)"]}
  fix: {op: conv, out_channels: width, kernel: 1}
  add: {op: add, inputs: [fix, shortcut]}
"""


def _gathered(count: str, when: str, read: str) -> str:
    return GATHERED.replace("COUNT", count).replace("WHEN", when).replace("READ", read)


REPEATED = """name: net
input: {channels: 3, size: 8}
stem: cifar
block: t
shortcut: B
stages:
  - {depth: 40, width: 4}
head: classifier
head_parameters: {classes: 10}
"""


def test_instances_that_agree_on_what_the_templates_read_share_one_unrolling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 300-node repeat in 1,000 blocks was unrolled and checked 1,000 times (19 s)."""
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "t.yaml").write_text(_gathered("30", "i >= 0", "30"))
    (tmp_path / "net.yaml").write_text(REPEATED)
    unrolled: list[object] = []
    original = unroll._Unroller.unroll

    def counted(self: unroll._Unroller, kind: PartKind) -> object:
        unrolled.append(self.part)
        return original(self, kind)

    monkeypatch.setattr(unroll._Unroller, "unroll", counted)
    graph = compile_spec(tmp_path / "net.yaml")
    assert len(graph.blocks) == 40 and len(unrolled) == 1  # the stride or in_channels do not matter here
    # A when reading block_index makes each instance its own unrolling, and its own nodes.
    (tmp_path / "blocks" / "t.yaml").write_text(_gathered("3", "i < block_index", "min(block_index, 3)"))
    unrolled.clear()
    graph = compile_spec(tmp_path / "net.yaml")
    assert len(unrolled) == 40
    assert [len(block.nodes) for block in graph.blocks[:5]] == [6, 5, 6, 7, 7]


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "resnest50d", "skresnet18"])
def test_shared_unrollings_give_the_graph_unrolling_each_instance_gives(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = compile_spec(name)
    original = Unrolling.instantiate
    monkeypatch.setattr(Unrolling, "instantiate", lambda self, *arguments: original(Unrolling(), *arguments))
    assert compile_spec(name) == shared


NAMED = """name: t
parameters: {tag: a}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  each:
    op: repeat
    index: i
    count: 2000
    nodes:
      r{tag}{i}: {op: relu}
  add: {op: add, inputs: ["r{tag}1999", shortcut]}
"""


@settings(max_examples=10, deadline=None)
@given(length=st.one_of(st.integers(1, 300), st.just(500_000)))
def test_a_name_made_from_a_string_parameter_is_bounded(length: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A 500 KB string parameter in a repeated name would have made 2,000 names of 500 KB each."""
    path = tmp_path_factory.mktemp("unroll") / "t.yaml"
    path.write_text(NAMED)
    tag = "a" * length
    started = time.process_time()
    try:
        unrolled = Unrolling().instantiate(load_part(path, "blocks"), {**BINDINGS, "tag": tag}, "blocks")
    except RescompileError as error:
        assert len(tag) + 5 > MAX_NAME_LENGTH
        assert str(error).startswith(f"{path}:11:7: part 't': in 'r{{tag}}{{i}}': the name made has ")
        assert str(error).endswith(f"characters; a node's name has at most {MAX_NAME_LENGTH}")
    else:
        assert max(len(name) for name in unrolled.spec.nodes) <= MAX_NAME_LENGTH
    assert time.process_time() - started < 10


CHAINED = """name: t
parameters: {act: relu}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  relu: {op: relu, when: "act == 'relu'"}
  relu6: {op: relu6, when: "act == 'relu6'"}
  silu: {op: silu, when: "act == 'silu'"}
  add: {op: add, inputs: ["relu if act == 'relu' else relu6 if act == 'relu6' else silu", shortcut]}
"""


@pytest.mark.parametrize("act", ["relu", "relu6", "silu"])
def test_a_chained_conditional_read_reads_the_first_value_whose_condition_holds(act: str, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(CHAINED)
    unrolled = Unrolling().instantiate(load_part(path, "blocks"), {**BINDINGS, "act": act}, "blocks")
    assert unrolled.spec.nodes["add"].inputs == (act, "shortcut")  # type: ignore[union-attr]
    assert list(unrolled.spec.nodes) == ["conv1", act, "add"]


CHOSEN_OP = """name: t
parameters: {act: {default: relu, choices: [relu, relu6, hardswish]}, late: true}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  act1: {op: "{act}"}
  add: {op: add, inputs: [act1, shortcut]}
  act2: {op: "{act}", when: late}
"""


@pytest.mark.parametrize("act", ["relu", "relu6", "hardswish"])
@pytest.mark.parametrize("late", [True, False])
def test_an_op_chosen_by_a_parameter_is_that_op_under_the_nodes_name(act: str, late: bool, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(CHOSEN_OP)
    unrolled = Unrolling().instantiate(load_part(path, "blocks"), {**BINDINGS, "act": act, "late": late}, "blocks")
    nodes = unrolled.spec.nodes
    assert list(nodes) == ["conv1", "act1", "add", *(["act2"] if late else [])]
    assert nodes["act1"].op == act and nodes["add"].inputs == ("act1", "shortcut")  # type: ignore[union-attr]
    assert not late or nodes["act2"].op == act


BAD_CHOSEN_OPS = {
    "no_choices": (
        ("{default: relu, choices: [relu, relu6, hardswish]}", "relu"),
        ":6:14: node 'act1' takes its op from 'act', which must be a parameter of this part listing the ops it may be",
    ),
    "not_an_op": (
        ("choices: [relu, relu6, hardswish]", "choices: [relu, relu6, hardswsh]"),
        ":6:14: unknown op 'hardswsh' (did you mean 'hardswish'?) in nodes.act1; valid ops: add,",
    ),
}


@pytest.mark.parametrize(("change", "message"), BAD_CHOSEN_OPS.values(), ids=BAD_CHOSEN_OPS)
def test_a_bad_chosen_op_is_a_located_error(change: tuple[str, str], message: str, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(CHOSEN_OP.replace(*change))
    with pytest.raises(RescompileError) as raised:
        load_part(path, "blocks")
    assert str(raised.value).startswith(f"{path}{message}"), str(raised.value)
