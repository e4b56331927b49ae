"""Block extension: a block file that ``extends`` another and replaces, removes or inserts nodes,
or overrides parameters, loads as the block written out by hand would; every reference it makes
is checked, with a located error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescompile.compiler import compile_spec
from rescompile.compiler.cost import cost
from rescompile.compiler.weights import weight_shapes
from rescompile.spec import builtin_directory
from rescompile.spec.errors import RescompileError
from rescompile.spec.loader import MAX_EXTENDS, load_part
from rescompile.spec.models import PartSpec

BASE = """name: base
description: Two convolutions.
parameters: {ratio: 2, kernel: 3}
derived: {inner: width * ratio}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: inner, kernel: kernel, stride: stride, padding: 1}
  bn1: {op: batch_norm}
  act1: {op: relu}
  conv2: {op: conv, out_channels: width, kernel: 3, padding: 1}
  bn2: {op: batch_norm}
  add: {op: add, inputs: [bn2, shortcut]}
  act2: {op: relu}
"""
NODES = BASE.split("nodes:\n")[1]


def _load(folder: Path, files: dict[str, str], name: str = "ext.yaml") -> PartSpec:
    """``files`` written into ``folder/blocks`` beside ``base.yaml``; block ``name`` loaded."""
    (folder / "blocks").mkdir(exist_ok=True)
    for file_name, text in {"base.yaml": BASE, **files}.items():
        (folder / "blocks" / file_name).write_text(text)
    return load_part(folder / "blocks" / name, "blocks").spec


def _nodes(replacements: dict[str, str]) -> str:
    """BASE's nodes with whole lines replaced (a line -> its new text, "" to drop it)."""
    lines = [replacements.get(line, line) for line in NODES.splitlines()]
    return "".join(f"{line}\n" for line in lines if line)


def _full(head: str, nodes: str) -> str:
    return f"{head}nodes:\n{nodes}"


HEAD = "name: ext\ndescription: Two convolutions.\nparameters: {ratio: 2, kernel: 3}\nderived: {inner: width * ratio}\n"
HEAD += "out_channels: width\n"


@pytest.mark.parametrize(
    ("extension", "by_hand"),
    [
        pytest.param(
            "insert_after:\n  act1:\n    pool: {op: avg_pool, kernel: 1}\n    act1b: {op: relu}\n",
            _nodes(
                {"  act1: {op: relu}": "  act1: {op: relu}\n  pool: {op: avg_pool, kernel: 1}\n  act1b: {op: relu}"}
            ),
            id="insert_after",
        ),
        pytest.param(
            "insert_before:\n  bn2:\n    drop: {op: drop_path, rate: 0.1}\n",
            _nodes({"  bn2: {op: batch_norm}": "  drop: {op: drop_path, rate: 0.1}\n  bn2: {op: batch_norm}"}),
            id="insert_before",
        ),
        pytest.param(
            "replace:\n  bn1: {op: group_norm, groups: 2}\n",
            _nodes({"  bn1: {op: batch_norm}": "  bn1: {op: group_norm, groups: 2}"}),
            id="replace_keeps_the_position",
        ),
        pytest.param(
            "remove: [act1]\n",
            _nodes({"  act1: {op: relu}": ""}),  # conv2 now reads bn1, the node before it
            id="remove",
        ),
        pytest.param(
            "remove: [bn2]\nreplace:\n  add: {op: add, inputs: [conv2, shortcut]}\n",
            _nodes({"  bn2: {op: batch_norm}": "", "  add: {op: add, inputs: [bn2, shortcut]}": ""}).replace(
                "  act2:", "  add: {op: add, inputs: [conv2, shortcut]}\n  act2:"
            ),
            id="remove_with_its_reader_replaced",
        ),
        pytest.param(
            "replace:\n  act1: {op: relu}\ninsert_after:\n  act1:\n    a: {op: relu}\ninsert_before:\n  act1:\n"
            "    b: {op: relu}\n",
            _nodes({"  act1: {op: relu}": "  b: {op: relu}\n  act1: {op: relu}\n  a: {op: relu}"}),
            id="every_operation_on_one_node",
        ),
    ],
)
def test_an_extension_loads_as_the_block_written_out(extension: str, by_hand: str, tmp_path: Path) -> None:
    extended = _load(tmp_path, {"ext.yaml": f"name: ext\nextends: base\n{extension}"})
    assert extended == _load(tmp_path, {"hand.yaml": _full(HEAD, by_hand)}, "hand.yaml")


def test_parameters_and_derived_are_merged_by_name_and_other_keys_replaced(tmp_path: Path) -> None:
    extension = (
        "name: ext\nextends: base\ndescription: Wider.\nparameters: {kernel: 5, extra: 1}\n"
        "derived: {inner: width * ratio * 2, more: inner + extra}\nout_channels: width + 0\n"
    )
    head = (
        "name: ext\ndescription: Wider.\nparameters: {ratio: 2, kernel: 5, extra: 1}\n"
        "derived: {inner: width * ratio * 2, more: inner + extra}\nout_channels: width + 0\n"
    )
    assert _load(tmp_path, {"ext.yaml": extension}) == _load(tmp_path, {"hand.yaml": _full(head, NODES)}, "hand.yaml")
    inherited = _load(tmp_path, {"quiet.yaml": "name: quiet\nextends: base.yaml\n"}, "quiet.yaml")
    assert inherited == _load(tmp_path, {"hand.yaml": _full(HEAD.replace("ext", "quiet"), NODES)}, "hand.yaml")


def test_an_extension_of_an_extension_applies_both_in_order(tmp_path: Path) -> None:
    files = {
        "mid.yaml": "name: mid\nextends: base\nreplace:\n  bn1: {op: group_norm, groups: 2}\n",
        "top.yaml": "name: top\nextends: mid\nremove: [act1]\ninsert_after:\n  bn1:\n    act1b: {op: relu}\n",
    }
    nodes = _nodes({"  bn1: {op: batch_norm}": "  bn1: {op: group_norm, groups: 2}\n  act1b: {op: relu}"})
    by_hand = _full(HEAD.replace("ext", "top"), nodes.replace("  act1: {op: relu}\n", ""))
    assert _load(tmp_path, files, "top.yaml") == _load(tmp_path, {"hand.yaml": by_hand}, "hand.yaml")
    part = load_part(tmp_path / "blocks" / "top.yaml", "blocks")
    assert [path.name for path in part.extended] == ["base.yaml", "mid.yaml"]  # no output may replace them


def test_a_block_of_the_users_may_extend_the_builtin_of_its_own_name(tmp_path: Path) -> None:
    extension = "name: basic\nextends: basic\nparameters: {drop_path_rate: 0.2}\n"
    part = _load(tmp_path, {"basic.yaml": extension}, "basic.yaml")
    assert part.defaults["drop_path_rate"] == 0.2


CHOOSING = """name: choosing
description: A convolution and the activation a parameter chooses.
parameters:
  act: {default: relu, choices: [relu, silu]}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  act1: {op: "{act}"}
  add: {op: add, inputs: [act1, shortcut]}
"""


def test_a_plain_value_over_a_declared_parameter_changes_only_its_default(tmp_path: Path) -> None:
    files = {"choosing.yaml": CHOOSING, "ext.yaml": "name: ext\nextends: choosing\nparameters: {act: silu}\n"}
    by_hand = CHOOSING.replace("name: choosing", "name: ext").replace("default: relu", "default: silu")
    extended = _load(tmp_path, files)
    assert extended == _load(tmp_path, {"hand.yaml": by_hand}, "hand.yaml")
    assert extended.defaults["act"] == "silu"


def test_a_changed_default_outside_the_base_choices_is_located_in_the_extension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    files = {"choosing.yaml": CHOOSING, "ext.yaml": "name: ext\nextends: choosing\nparameters: {act: gelu}\n"}
    with pytest.raises(RescompileError) as raised:
        _load(tmp_path, files)
    assert str(raised.value).startswith("blocks/ext.yaml:3:"), raised.value
    assert "gelu" in str(raised.value) and "silu" in str(raised.value), raised.value


# gn_bottleneck as it was written before block extension: the extension must load as this.
GN_BOTTLENECK = """name: gn_bottleneck
description: 1×1 reduce, 3×3, 1×1 expand, each followed by GroupNorm.
parameters: {norm_groups: 32}
out_channels: width * 4
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  bn1: {op: group_norm, groups: norm_groups}
  act1: {op: relu}
  conv2: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn2: {op: group_norm, groups: norm_groups}
  act2: {op: relu}
  conv3: {op: conv, out_channels: width * 4, kernel: 1}
  bn3: {op: group_norm, groups: norm_groups, zero_init: true}
  add: {op: add, inputs: [bn3, shortcut]}
  act3: {op: relu}
"""


def test_the_builtin_gn_bottleneck_is_the_block_it_was_written_out(tmp_path: Path) -> None:
    (tmp_path / "gn.yaml").write_text(GN_BOTTLENECK)
    assert load_part(builtin_directory() / "blocks" / "gn_bottleneck.yaml", "blocks").spec == (
        load_part(tmp_path / "gn.yaml", "blocks").spec
    )


def test_a_network_with_an_extended_block_compiles_like_one_with_the_block_written_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = "name: net\ninput: {channels: 3, size: 16}\nstem: cifar\nblock: BLOCK\nshortcut: B\n"
    network += (
        "stages:\n  - {depth: 2, width: 8}\n  - {depth: 1, width: 16, stride: 2}\nhead_parameters: {classes: 4}\n"
    )
    _load(tmp_path, {"ext.yaml": "name: ext\nextends: base\ninsert_after:\n  act1:\n    act1b: {op: relu}\n"})
    by_hand = _nodes({"  act1: {op: relu}": "  act1: {op: relu}\n  act1b: {op: relu}"})
    _load(tmp_path, {"hand.yaml": _full(HEAD, by_hand)}, "hand.yaml")
    (tmp_path / "a.yaml").write_text(network.replace("BLOCK", "ext"))
    (tmp_path / "b.yaml").write_text(network.replace("BLOCK", "hand"))
    monkeypatch.chdir(tmp_path)
    extended, written_out = compile_spec("a.yaml"), compile_spec("b.yaml")
    assert weight_shapes(extended) == weight_shapes(written_out)
    assert cost(extended) == cost(written_out)
    assert [module.path for module in extended.modules] == [module.path for module in written_out.modules]
    assert {path.name for path in extended.files} >= {"a.yaml", "ext.yaml", "base.yaml"}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\nreplace:\n  bn3: {op: relu}\n"},
            "blocks/ext.yaml:4:3: replace: block 'base' has no node 'bn3' (did you mean 'bn2'?); its nodes: conv1, "
            "bn1, act1, conv2, bn2, add, act2",
            id="replace_unknown_node",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\nremove: [act1, act]\n"},
            "blocks/ext.yaml:3:16: remove: block 'base' has no node 'act' (did you mean 'act2'?); its nodes: conv1, "
            "bn1, conv2, bn2, add, act2",
            id="remove_unknown_node",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\nremove: [act1]\ninsert_after:\n  act1:\n    x: {op: relu}\n"},
            "blocks/ext.yaml:5:3: insert_after: block 'base' has no node 'act1' (did you mean 'act2'?)",
            id="insert_after_a_removed_node",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\ninsert_before:\n  conv:\n    x: {op: relu}\n"},
            "blocks/ext.yaml:4:3: insert_before: block 'base' has no node 'conv' (did you mean 'conv2'?)",
            id="insert_before_unknown_node",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\ninsert_after:\n  act1:\n    bn2: {op: relu}\n"},
            "blocks/ext.yaml:5:5: insert_after: block 'base' already has a node 'bn2'; name the new node otherwise, "
            "or change the old one with replace",
            id="insert_a_node_that_exists",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\nremove: [act1, bn2]\n"},
            "blocks/ext.yaml:3:16: remove: node 'add' reads 'bn2'; replace 'add' too, reading another value "
            "('bn1', 'conv1', 'conv2' or 'input'), or keep 'bn2'",
            id="remove_leaves_a_dangling_read",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\nshortcut_input: act1\nremove: [act1]\n"},
            "blocks/ext.yaml:4:10: remove: the block's shortcut_input is 'act1'; set shortcut_input to another node",
            id="remove_the_shortcut_input",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\ninsert_after:\n  act1:\n    extra: {op: relu, input: nope}\n"},
            "blocks/ext.yaml:5:30: node 'extra' reads 'nope', which is not an earlier node",
            id="an_inserted_nodes_error_is_located_where_it_was_written",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\nreplace:\n  bn1: {op: batchnorm}\n"},
            "blocks/ext.yaml:4:13: unknown op 'batchnorm'",
            id="a_bad_op_is_located_in_the_extension",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\nnodes:\n  a: {op: relu}\n"},
            "blocks/ext.yaml:3:1: a block that extends 'base' changes its base's nodes with replace, remove, "
            "insert_after and insert_before; 'nodes' would replace them all",
            id="nodes_beside_extends",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: base\nremove: act1\n"},
            "blocks/ext.yaml:3:9: remove: input should be a valid list",
            id="remove_not_a_list",
        ),
        pytest.param(
            {"ext.yaml": "extends: base\n"},
            "blocks/ext.yaml:1:1: a block that extends 'base' needs a name of its own: add a 'name' key",
            id="no_name",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: bottlenek\n"},
            "blocks/ext.yaml:2:10: extends: unknown block 'bottlenek' (did you mean 'bottleneck'?); known blocks: ",
            id="unknown_base",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: ../missing.yaml\n"},
            "blocks/ext.yaml:2:10: extends: no such block file: ../missing.yaml",
            id="missing_base_file",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: [base]\n"},
            "blocks/ext.yaml:2:10: extends: expected a built-in block's name or a block file's path (got ['base'])",
            id="base_not_a_name",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: ext.yaml\n"},
            "blocks/ext.yaml:2:10: extends makes a cycle: blocks/ext.yaml -> blocks/ext.yaml",
            id="extends_itself",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: other\n", "other.yaml": "name: other\nextends: ext\n"},
            "blocks/other.yaml:2:10: extends makes a cycle: blocks/ext.yaml -> blocks/other.yaml -> blocks/ext.yaml",
            id="cycle",
        ),
        pytest.param(
            {"ext.yaml": "name: ext\nextends: other\n", "other.yaml": "name: other\nextends: base\nremove: [x]\n"},
            "blocks/other.yaml:3:10: remove: block 'base' has no node 'x'",
            id="an_error_deep_in_the_chain_is_located_in_its_file",
        ),
    ],
)
def test_bad_extensions_are_located_errors(
    files: dict[str, str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        _load(tmp_path, files)
    assert str(raised.value).startswith(expected), raised.value


def test_a_chain_of_blocks_longer_than_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {f"b{index}.yaml": f"name: b{index}\nextends: b{index + 1}\n" for index in range(MAX_EXTENDS)}
    files[f"b{MAX_EXTENDS}.yaml"] = "name: last\nextends: base\n"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        _load(tmp_path, files, "b0.yaml")
    assert f"extends: a chain of block files is at most {MAX_EXTENDS} files long" in str(raised.value)
    assert _load(tmp_path, {}, f"b{MAX_EXTENDS - MAX_EXTENDS // 2}.yaml") is not None  # a shorter chain loads


# A drawn extension of a chain of nodes, and the same block merged by hand (lists, not the loader).
BASE_LENGTH = st.integers(min_value=2, max_value=6)
ACTIONS = st.sampled_from(["keep", "keep", "replace", "remove"])
OPS = ["{op: relu}", "{op: batch_norm}", "{op: drop_path, rate: 0.5}"]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), length=BASE_LENGTH)
def test_a_drawn_extension_equals_the_block_merged_by_hand(data: st.DataObject, length: int) -> None:
    names = [f"n{index}" for index in range(length)]
    ops = {name: data.draw(st.sampled_from(OPS)) for name in names}
    last = names[-1]  # the add reads it by name: removing it is the dangling-read error, tested above
    actions = {name: data.draw(ACTIONS) if name != last else "keep" for name in names}
    replaced = {name: data.draw(st.sampled_from(OPS)) for name in names if actions[name] == "replace"}
    removed = [name for name in names if actions[name] == "remove"]
    surviving = [name for name in names if name not in removed]
    inserts: dict[str, dict[str, list[str]]] = {"insert_before": {}, "insert_after": {}}
    count = 0
    for anchor in data.draw(st.lists(st.sampled_from(surviving), unique=True, max_size=3)):
        # After the last node, an inserted node would be read by nothing: the add reads the last by name.
        where = data.draw(st.sampled_from(sorted(inserts))) if anchor != last else "insert_before"
        added = data.draw(st.integers(min_value=1, max_value=2))
        inserts[where][anchor] = [f"m{count + index}" for index in range(added)]
        count += added
    new_ops = {f"m{index}": data.draw(st.sampled_from(OPS)) for index in range(count)}

    base = "name: drawn\nout_channels: in_channels\nnodes:\n"
    base += "".join(f"  {name}: {ops[name]}\n" for name in names) + f"  add: {{op: add, inputs: [{last}, shortcut]}}\n"
    extension = "name: drawn\nextends: base\n"
    extension += "replace:\n" + "".join(f"  {name}: {op}\n" for name, op in replaced.items()) if replaced else ""
    extension += f"remove: [{', '.join(removed)}]\n" if removed else ""
    for where, anchors in inserts.items():
        if anchors:
            extension += f"{where}:\n" + "".join(
                f"  {anchor}:\n" + "".join(f"    {new}: {new_ops[new]}\n" for new in new_names)
                for anchor, new_names in anchors.items()
            )

    order = list(surviving)
    for anchor, new_names in inserts["insert_before"].items():
        order[order.index(anchor) : order.index(anchor)] = new_names
    for anchor, new_names in inserts["insert_after"].items():
        position = order.index(anchor) + 1
        order[position:position] = new_names
    merged_ops = {**ops, **replaced, **new_ops}
    by_hand = "name: drawn\nout_channels: in_channels\nnodes:\n"
    by_hand += "".join(f"  {name}: {merged_ops[name]}\n" for name in order)
    by_hand += f"  add: {{op: add, inputs: [{last}, shortcut]}}\n"

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "base.yaml").write_text(base)
        (Path(folder) / "drawn.yaml").write_text(extension)
        (Path(folder) / "by_hand.yaml").write_text(by_hand)
        extended = load_part(Path(folder) / "drawn.yaml", "blocks").spec
        assert extended == load_part(Path(folder) / "by_hand.yaml", "blocks").spec


TIMM_MOBILENETV3_HEAD_WRITTEN_OUT = """name: timm_mobilenetv3
description: Global average pool, 1×1 convolution with bias, activation, linear (timm's conv_head, classifier).
parameters:
  width: 1280
  classes: 1000
  act: {default: hardswish, choices: [relu, relu6, hardswish, silu]}
nodes:
  global_pool: {op: global_average_pool}
  conv_head: {op: conv, out_channels: width, kernel: 1, bias: true}
  act2: {op: "{act}"}
  flatten: {op: flatten}
  classifier: {op: linear, out_features: classes}
"""


def test_a_head_extends_another_as_a_block_does(tmp_path: Path) -> None:
    """The built-in timm_mobilenetv3 head is timm_efficientnet's with its pool moved before conv_head."""
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "by_hand.yaml").write_text(TIMM_MOBILENETV3_HEAD_WRITTEN_OUT)
    by_hand = load_part(tmp_path / "heads" / "by_hand.yaml", "heads").spec
    extended = load_part(builtin_directory() / "heads" / "timm_mobilenetv3.yaml", "heads").spec
    assert extended.nodes == by_hand.nodes and extended.defaults == by_hand.defaults


def test_a_stem_that_extends_an_unknown_stem_is_a_located_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stems").mkdir()
    (tmp_path / "stems" / "wide.yaml").write_text("name: wide\nextends: cifr\nparameters: {width: 32}\n")
    with pytest.raises(RescompileError) as raised:
        load_part(Path("stems/wide.yaml"), "stems")
    assert str(raised.value).startswith("stems/wide.yaml:2:10: extends: unknown stem 'cifr' (did you mean 'cifar'?)")
