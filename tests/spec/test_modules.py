"""Reusable modules: a node that uses a module loads as the module's nodes named under it, their
parameters bound; the source backends write the module as a class of its own; every reference a
use makes is checked, with a located error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import layer

from rescompile.backends import flax_backend, torch_backend
from rescompile.cli import main
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import weight_shapes
from rescompile.spec.errors import RescompileError
from rescompile.spec.loader import MAX_MODULE_DEPTH, load_part
from rescompile.spec.models import BlockSpec

EXAMPLES = Path(__file__).parents[2] / "examples"
NETWORK = """name: net
input: {channels: 3, size: 32}
stem: cifar
block: gated
shortcut: B
stages:
  - {depth: 1, width: 16, stride: 1}
  - {depth: 1, width: 32, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""
BLOCK = """name: gated
parameters: {ratio: 0.5}
derived: {inner: "int(width * ratio)"}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn1: {op: batch_norm}
  se: {module: squeeze_excite, parameters: {channels: width, reduced: inner}}
  add: {op: add, inputs: [se, shortcut]}
"""
SE_WRITTEN_OUT = """
  se.pool: {op: global_average_pool}
  se.fc1: {op: conv, out_channels: inner, kernel: 1, bias: true}
  se.act: {op: relu}
  se.fc2: {op: conv, out_channels: width, kernel: 1, bias: true}
  se.gate: {op: sigmoid}
  se.scale: {op: mul, inputs: [bn1, se.gate]}
  add: {op: add, inputs: [se.scale, shortcut]}
"""


def _write(folder: Path, block: str = BLOCK, modules: dict[str, str] | None = None) -> Path:
    (folder / "blocks").mkdir(exist_ok=True)
    (folder / "modules").mkdir(exist_ok=True)
    (folder / "blocks" / "gated.yaml").write_text(block)
    for name, text in (modules or {}).items():
        (folder / "modules" / f"{name}.yaml").write_text(text)
    (folder / "net.yaml").write_text(NETWORK)
    return folder / "net.yaml"


def test_a_module_use_loads_as_its_nodes_written_out_under_the_node_name(tmp_path: Path) -> None:
    used = load_part(_write(tmp_path).parent / "blocks" / "gated.yaml", "blocks").spec
    written = BLOCK.split("  se: {module")[0] + SE_WRITTEN_OUT.lstrip("\n")
    (tmp_path / "blocks" / "by_hand.yaml").write_text(written.replace("name: gated", "name: by_hand"))
    by_hand = load_part(tmp_path / "blocks" / "by_hand.yaml", "blocks").spec
    assert used.nodes == by_hand.nodes
    assert isinstance(used, BlockSpec) and used.classes == {"se": "SqueezeExcite"}


def test_torch_and_flax_write_the_module_as_a_class_and_keys_stay_nested(tmp_path: Path) -> None:
    graph = compile_spec(_write(tmp_path))
    for backend in (torch_backend, flax_backend):
        source = backend.emit_source(graph)
        assert "class SqueezeExcite(" in source
        assert "self.se = SqueezeExcite(" in source
    assert {"layer1.0.se.fc1.weight", "layer1.0.se.fc2.bias"} <= set(weight_shapes(graph))
    namespace: dict[str, object] = {}
    exec(compile(torch_backend.emit_source(graph), "net.py", "exec"), namespace)
    model = namespace["build"]()  # type: ignore[operator]
    assert "layer2.0.se.fc1.weight" in model.state_dict()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_the_example_module_of_modules_agrees_on_torch_flax_and_onnx() -> None:
    graph = compile_spec(EXAMPLES / "gated_resnet18.yaml")
    keys = set(weight_shapes(graph))
    assert {"layer1.0.gate.se.fc1.weight", "layer1.0.gate.eca.conv.weight"} <= keys
    assert main(["check", str(EXAMPLES / "gated_resnet18.yaml"), "--size", "32", "--batch", "2"]) == 0


def test_a_builtin_gate_block_uses_its_module_with_the_keys_it_had() -> None:
    keys = set(weight_shapes(compile_spec("ecaresnet50d")))
    assert "layer1.0.se.conv.weight" in keys and not any(".se.kernel" in key for key in keys)
    keys = set(weight_shapes(compile_spec("seresnet50")))
    assert {"layer4.2.se.fc1.weight", "layer4.2.se.fc1.bias", "layer4.2.se.fc2.weight"} <= keys


def test_list_parts_lists_the_builtin_modules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--parts"]) == 0
    listed = capsys.readouterr().out.split("modules (")[1]
    assert "squeeze_excite" in listed and "efficient_channel_attention" in listed


SE_USE = "  se: {module: squeeze_excite, parameters: {channels: width, reduced: inner}}\n"
CYCLE_A = "name: cycle_a\nnodes:\n  inner: {module: cycle_b}\n"
CYCLE_B = "name: cycle_b\nnodes:\n  inner: {module: cycle_a}\n"
BAD_USES = {
    "unknown module": (
        SE_USE.replace("squeeze_excite", "squeeze_excit"),
        {},
        "blocks/gated.yaml:8:16: unknown module 'squeeze_excit' (did you mean 'squeeze_excite'?)",
    ),
    "unknown parameter": (
        SE_USE.replace("reduced:", "reduce:"),
        {},
        "blocks/gated.yaml:8:62: module 'squeeze_excite' has no parameter 'reduce' (did you mean 'reduced'?); "
        "its parameters: channels, reduced",
    ),
    "missing parameter": (
        SE_USE.replace(", reduced: inner", ""),
        {},
        "blocks/gated.yaml:8:16: module 'squeeze_excite' needs parameter 'reduced': add it to this node's parameters",
    ),
    "unknown name in a parameter": (
        SE_USE.replace("reduced: inner", "reduced: iner"),
        {},
        "blocks/gated.yaml:8:71: 'iner' in parameters.reduced is not a parameter or derived value here "
        "(did you mean 'inner'?)",
    ),
    "a node name that collides": (
        "  se.fc1: {op: relu}\n" + SE_USE,
        {},
        "blocks/gated.yaml:9:3: node 'se' uses module 'squeeze_excite', whose node makes 'se.fc1'; this part "
        "already has a node 'se.fc1': rename one",
    ),
    "an unknown key": (
        SE_USE.replace("reduced: inner}", "reduced: inner}, inputs: [bn1]"),
        {},
        "blocks/gated.yaml:8:79: unknown key 'inputs' (torch's or timm's name; here it is 'input'); valid keys here: "
        "input, module, parameters, when",
    ),
    "recursion": (
        "  se: {module: cycle_a}\n",
        {"cycle_a": CYCLE_A, "cycle_b": CYCLE_B},
        "modules/cycle_b.yaml:3:19: module 'cycle_a' uses itself: ",
    ),
}


@pytest.mark.parametrize(("use", "modules", "message"), BAD_USES.values(), ids=BAD_USES)
def test_bad_module_uses_are_located_errors(
    use: str, modules: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    network = _write(tmp_path, BLOCK.replace(SE_USE, use), modules)
    with pytest.raises(RescompileError) as caught:
        compile_spec(network)
    assert str(caught.value).startswith(message)


def test_modules_nested_deeper_than_the_limit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    chain = {f"m{index}": f"name: m{index}\nnodes:\n  inner: {{module: m{index + 1}}}\n" for index in range(12)}
    network = _write(tmp_path, BLOCK.replace(SE_USE, "  se: {module: m0}\n"), chain)
    with pytest.raises(RescompileError, match=f"modules use modules at most {MAX_MODULE_DEPTH} deep"):
        compile_spec(network)


def test_a_use_reads_its_input_and_exists_where_its_when_holds(tmp_path: Path) -> None:
    use = SE_USE.replace("reduced: inner}", "reduced: inner}, input: conv1, when: stride == 1")
    block = BLOCK.replace("  bn1: {op: batch_norm}\n", "").replace(SE_USE, use)
    block = block.replace(
        "  add: {op: add, inputs: [se, shortcut]}", "  bn1: {op: batch_norm}\n  add: {op: add, inputs: [bn1, shortcut]}"
    )
    graph = compile_spec(_write(tmp_path, block))
    keys = set(weight_shapes(graph))
    assert "layer1.0.se.fc1.weight" in keys and not any(key.startswith("layer2.0.se.") for key in keys)
    nodes = {node.name: node for definition in graph.definitions for node in definition.nodes}
    assert nodes["se.scale"].inputs == ("conv1", "se.gate")


def test_two_uses_of_one_module_with_other_values_are_two_classes(tmp_path: Path) -> None:
    uses = SE_USE + SE_USE.replace("se:", "se2:").replace("reduced: inner", "reduced: 4")
    graph = compile_spec(_write(tmp_path, BLOCK.replace(SE_USE, uses).replace("[se, shortcut]", "[se2, shortcut]")))
    source = torch_backend.emit_source(graph)
    assert "self.se = SqueezeExcite(" in source and "self.se2 = SqueezeExcite_1(" in source


def test_a_stems_module_use_is_checked_as_a_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    network = _write(tmp_path)
    (tmp_path / "stems").mkdir()
    (tmp_path / "stems" / "gate.yaml").write_text(
        "name: gate\nnodes:\n  se: {module: squeeze_excite, parameters: {channels: 3, reduce: 2}}\n"
    )
    network.write_text(NETWORK.replace("stem: cifar", "stem: gate"))
    unknown = r"^stems/gate.yaml:3:58: module 'squeeze_excite' has no parameter 'reduce'"
    with pytest.raises(RescompileError, match=unknown):
        compile_spec(network)


CHOOSING_USE = (
    "  se: {module: timm_squeeze_excite, parameters: {channels: width, reduced: inner, gate: \"'hardsigmoid'\"}}\n"
)


def test_a_module_chooses_its_layers_by_its_parameters_and_computes_timms_squeeze_excite(tmp_path: Path) -> None:
    from timm.models._efficientnet_blocks import SqueezeExcite

    graph = compile_spec(_write(tmp_path, BLOCK.replace(SE_USE, CHOOSING_USE)))
    nodes = {node.name: node.op.kind for node in graph.modules[1].nodes}
    assert [name for name in nodes if name.startswith("se.")] == [
        "se.pool",
        "se.conv_reduce",
        "se.act1",
        "se.conv_expand",
        "se.gate",
        "se.scale",
    ]
    assert (nodes["se.act1"], nodes["se.gate"]) == ("relu", "hardsigmoid")  # the default act, the gate chosen
    model = torch_backend.build_module(graph).eval()
    block = layer(model, "layer1.0")
    reference = SqueezeExcite(16, rd_channels=8, gate_layer="hard_sigmoid").eval()
    weights = block.state_dict()
    reference.load_state_dict({key.removeprefix("se."): value for key, value in weights.items() if "se." in key})
    inputs = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = reference(block.bn1(block.conv1(inputs))) + inputs
        assert torch.equal(block(inputs), expected)


def test_a_module_with_a_repeat_is_a_located_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    repeated = (
        "name: repeated\nparameters: {count: 2}\nnodes:\n"
        "  convs: {op: repeat, index: i, count: count, nodes: {'conv.{i}': {op: relu}}}\n"
    )
    network = _write(tmp_path, BLOCK.replace(SE_USE, "  se: {module: repeated}\n"), {"repeated": repeated})
    with pytest.raises(RescompileError, match=r"^modules/repeated.yaml:4:3: module 'repeated' uses a template"):
        compile_spec(network)


def test_a_string_value_written_as_a_name_says_to_quote_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    network = _write(tmp_path, BLOCK.replace(SE_USE, CHOOSING_USE.replace("\"'hardsigmoid'\"", "hardsigmoid")))
    with pytest.raises(RescompileError, match=r"^blocks/gated.yaml:8:\d+: 'hardsigmoid' in parameters.gate .* quoted"):
        compile_spec(network)


def test_a_module_after_nodes_under_a_when_reads_the_one_that_exists(tmp_path: Path) -> None:
    block = BLOCK.replace("parameters: {ratio: 0.5}", "parameters: {ratio: 0.5, act: silu}").replace(
        "  bn1: {op: batch_norm}\n",
        "  bn1: {op: batch_norm}\n"
        "  act_relu: {op: relu, when: \"act == 'relu'\"}\n"
        "  act_silu: {op: silu, when: \"act == 'silu'\"}\n",
    )
    graph = compile_spec(_write(tmp_path, block))
    nodes = {node.name: node for node in graph.modules[1].nodes}
    assert "act_relu" not in nodes
    assert nodes["se.pool"].inputs == ("act_silu",) and nodes["se.scale"].inputs == ("act_silu", "se.gate")


def test_a_use_under_a_placeholder_name_is_named_by_the_instance(tmp_path: Path) -> None:
    """torchvision's numbered Sequentials: the gate is block.2 after an expansion and block.1
    without one, so one node block.{e + 1} names both."""
    block = BLOCK.replace('derived: {inner: "int(width * ratio)"}', 'derived: {inner: 4, e: "1 if stride == 1 else 0"}')
    block = block.replace("  se: {module", "  gate.{e + 1}: {module").replace(
        "[se, shortcut]", '["gate.{e + 1}", shortcut]'
    )
    graph = compile_spec(_write(tmp_path, block))
    keys = set(weight_shapes(graph))
    assert {"layer1.0.gate.2.fc1.weight", "layer2.0.gate.1.fc1.weight"} <= keys
    source = torch_backend.emit_source(graph)
    assert "class SqueezeExcite(" not in source  # its instances' names differ: nested layers, not a class


def test_a_use_under_a_placeholder_name_of_a_module_that_derives_values_is_a_located_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    use = "  gate.{1 + 1}: {module: efficient_channel_attention, parameters: {channels: width}}\n"
    network = _write(tmp_path, BLOCK.replace(SE_USE, use).replace("[se, shortcut]", '["gate.{1 + 1}", shortcut]'))
    with pytest.raises(RescompileError) as caught:
        compile_spec(network)
    assert str(caught.value) == (
        "blocks/gated.yaml:8:3: node 'gate.{1 + 1}' uses module 'efficient_channel_attention', which derives values "
        "(t, kernel), under a placeholder name; name the node plainly"
    )
