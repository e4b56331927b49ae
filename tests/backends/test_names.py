"""Names in generated source: module paths nest exactly as written (so a part can reproduce a
foreign state_dict's keys), local variables are handed out legal and unique, and a name that
cannot be honoured is a located error at validate time."""

from __future__ import annotations

import ast
import keyword
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import COMPILE_TEST_PRESETS, network_params, network_source
from hypothesis import given, settings
from hypothesis import strategies as st

from rescompile.backends import flax_backend, torch_backend
from rescompile.backends.names import GENERATED_FILE_NAMES, Namespace, attribute_access, containers
from rescompile.backends.source import class_name, part_names
from rescompile.cli import main
from rescompile.compiler import Graph, compile_spec, cost
from rescompile.compiler.weights import weight_shapes
from rescompile.spec.errors import RescompileError
from rescompile.spec.loader import builtin_networks

# timm's keys: a deep stem conv1.0 … conv1.6 (ResNet-C/D) and an SE module se.fc1 / se.fc2.
DEEP_STEM = """\
name: deep
parameters: {width: 8}
nodes:
  conv1.0: {op: conv, out_channels: width, kernel: 3, stride: 2, padding: 1}
  conv1.1: {op: batch_norm}
  conv1.2: {op: relu}
  conv1.3: {op: conv, out_channels: width, kernel: 3, padding: 1}
  conv1.4: {op: batch_norm}
  conv1.5: {op: relu}
  conv1.6: {op: conv, out_channels: width * 2, kernel: 3, padding: 1}
  bn1: {op: batch_norm}
  act1: {op: relu}
"""

SE_BLOCK = """\
name: se_basic
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn1: {op: batch_norm}
  act1: {op: relu}
  conv2: {op: conv, out_channels: width, kernel: 3, padding: 1}
  bn2: {op: batch_norm, zero_init: true}
  se.pool: {op: global_average_pool}
  se.fc1: {op: conv, out_channels: width // 4, kernel: 1, bias: true}
  se.act: {op: relu}
  se.fc2: {op: conv, out_channels: width, kernel: 1, bias: true}
  se.gate: {op: sigmoid}
  se.scale: {op: mul, inputs: [bn2, se.gate]}
  add: {op: add, inputs: [se.scale, shortcut]}
  act2: {op: relu}
"""

NETWORK = """\
name: nested
input: {channels: 3, size: 16}
stem: deep
block: se_basic
shortcut: B
stages:
  - {depth: 1, width: 16}
  - {depth: 1, width: 32, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""


def _write(folder: Path, stem: str = DEEP_STEM, block: str = SE_BLOCK) -> Path:
    for kind, text, name in (("stems", stem, "deep"), ("blocks", block, "se_basic")):
        (folder / kind).mkdir(exist_ok=True)
        (folder / kind / f"{name}.yaml").write_text(text)
    (folder / "net.yaml").write_text(NETWORK)
    return folder / "net.yaml"


def test_nested_paths_are_the_state_dict_keys_in_torch(tmp_path: Path) -> None:
    graph = compile_spec(_write(tmp_path))
    model = torch_backend.build_module(graph)
    keys = set(model.state_dict()) - {key for key in model.state_dict() if key.endswith("num_batches_tracked")}
    assert keys == set(weight_shapes(graph))
    assert {"conv1.0.weight", "conv1.6.weight", "bn1.weight", "layer1.0.se.fc1.weight", "layer1.0.se.fc2.bias"} <= keys
    source = torch_backend.emit_source(graph)
    assert 'self.conv1 = nn.ModuleDict()\n        self.conv1["0"] = nn.Conv2d(' in source
    assert "self.se = nn.ModuleDict()" in source
    assert "out = self.se.fc1(out)" in source


def test_nested_paths_in_flax_and_all_backends_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    network = _write(tmp_path)
    source = flax_backend.emit_source(compile_spec(network))
    assert "self.se = nnx.Dict()" in source
    assert main(["check", str(network), "--backends", "torch,flax,onnx"]) == 0
    assert "all backends agree" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            SE_BLOCK.replace("se.pool:", "se:"),
            "blocks/se_basic.yaml:9:3: node 'se' cannot also hold node 'se.fc1': a module path is either a layer",
        ),
        (
            SE_BLOCK.replace("se.pool:", "se.class:").replace("inputs: [bn2, se.gate]", "inputs: [bn2, se.gate]"),
            "blocks/se_basic.yaml:9:3: node name 'se.class' must be a module path",
        ),
        (
            SE_BLOCK.replace("se.pool:", "downsample.pool:").replace(
                "se.fc1: {op: conv,", "se.fc1: {input: downsample.pool, op: conv,"
            ),
            "shortcut 'projection' is held in module 'downsample', which is also the container of node "
            "'downsample.pool' of block 'se_basic'; rename one of them",
        ),
    ],
)
def test_names_that_cannot_be_honoured_are_located_errors(
    block: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, block=block)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    message = str(raised.value)
    # The last case is located in the built-in shortcut's file, wherever the package is installed.
    assert message.startswith(expected) or message.endswith(f"projection.yaml:6:9: {expected}"), message


def test_attribute_access_and_containers() -> None:
    assert attribute_access("se.fc1") == ".se.fc1"
    assert attribute_access("conv1.0") == '.conv1["0"]'
    assert attribute_access("layer.0.conv") == '.layer["0"].conv'
    assert containers(["conv1", "se.fc1", "se.fc2", "a.0.b"]) == ["se", "a", "a.0"]


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=20))
def test_the_namespace_hands_out_legal_unique_names(candidates: list[str]) -> None:
    namespace = Namespace({"x", "out"})
    names = [namespace.create_name(candidate) for candidate in candidates]
    assert len(set(names)) == len(names)
    assert all(name.isidentifier() and not keyword.iskeyword(name) for name in names)
    assert not {"x", "out", "self", "print", "nn"} & set(names)


# The name authority (issue 24, items 1, 2 and 4; issue 20, item 3): whatever the part names, every
# part gets a class (or function) of its own, and none shadows what the generated file defines.

TWO_STAGE_NETWORK = """\
name: named
input: {{channels: 3, size: 8}}
stem: cifar
block: {first}
shortcut: {shortcut}
stages:
  - {{depth: 1, width: 4}}
  - {{depth: 2, width: 8, stride: 2, block: {second}}}
head: classifier
head_parameters: {{classes: 3}}
"""


def _plain_block(name: str, kernel: int, extra: str = "") -> str:
    padding = kernel // 2
    return (
        f"name: {name}\nout_channels: width\n{extra}nodes:\n"
        f"  conv1: {{op: conv, out_channels: width, kernel: {kernel}, stride: stride, padding: {padding}}}\n"
        "  bn1: {op: batch_norm}\n"
        "  add: {op: add, inputs: [bn1, shortcut]}\n"
        "  relu: {op: relu}\n"
    )


def _write_parts(folder: Path, parts: dict[str, str], network: str) -> Path:
    for relative, text in parts.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    (folder / "net.yaml").write_text(network)
    return folder / "net.yaml"


def top_level_names(source: str) -> list[str]:
    """Every name a generated file binds at module level (imports, classes, functions, assignments)."""
    names: list[str] = []
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            names += [(alias.asname or alias.name).split(".")[0] for alias in statement.names]
        elif isinstance(statement, ast.ClassDef | ast.FunctionDef):
            names.append(statement.name)
        elif isinstance(statement, ast.Assign):
            names += [target.id for target in statement.targets if isinstance(target, ast.Name)]
    return names


def assert_compiles_to_the_ir(graph: Graph) -> None:
    """Torch and Flax: no module-level name bound twice, the cost pass's parameter count, and (torch)
    the IR's state_dict keys and output shape."""
    for backend in (torch_backend, flax_backend):
        names = top_level_names(backend.emit_source(graph))
        assert len(names) == len(set(names)), sorted(name for name in names if names.count(name) > 1)
    model = torch_backend.build_module(graph).eval()
    assert sum(parameter.numel() for parameter in model.parameters()) == cost(graph).parameters
    keys = {key for key in model.state_dict() if not key.endswith("num_batches_tracked")}
    assert keys == set(weight_shapes(graph))
    with torch.no_grad():
        output = model(torch.zeros((1, *graph.input_shape)))
    assert tuple(output.shape) == (1, *graph.output_shape)


def _one_class_name_pairs() -> st.SearchStrategy[tuple[str, str]]:
    """Two part names that map to one class name: ``a_b``/``a-b``, ``ab``/``Ab``, ``basic``/``basicBlock``."""
    word = st.from_regex(r"[a-z][a-z0-9]{0,4}", fullmatch=True)
    return st.one_of(
        st.tuples(word, word).map(lambda words: (f"{words[0]}_{words[1]}", f"{words[0]}-{words[1]}")),
        word.map(lambda name: (name, name[0].upper() + name[1:])),
        word.map(lambda name: (name, f"{name}Block")),
    )


@settings(max_examples=5, deadline=None)
@given(_one_class_name_pairs())
def test_two_block_types_of_one_class_name_get_a_class_each(pair: tuple[str, str]) -> None:
    first, second = pair
    assert class_name(first, "Block") == class_name(second, "Block")
    with tempfile.TemporaryDirectory() as folder:
        blocks = {f"blocks/{first}.yaml": _plain_block(first, 3), f"blocks/{second}.yaml": _plain_block(second, 1)}
        network = TWO_STAGE_NETWORK.format(first=first, second=second, shortcut="B")
        graph = compile_spec(_write_parts(Path(folder), blocks, network))
    assert_compiles_to_the_ir(graph)
    source = torch_backend.emit_source(graph)
    assert source.count('(nn.Module):\n    """Block \'') == 2


def test_two_block_types_of_one_class_name_agree_in_every_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = {"blocks/a_b.yaml": _plain_block("a_b", 3), "blocks/a-b.yaml": _plain_block("a-b", 1)}
    network = _write_parts(tmp_path, blocks, TWO_STAGE_NETWORK.format(first="a_b", second="a-b", shortcut="B"))
    source = torch_backend.emit_source(compile_spec(network))
    assert "self.layer1 = self._make_stage(ABBlock, " in source
    assert "self.layer2 = self._make_stage(ABBlock_1, " in source
    assert main(["check", str(network)]) == 0
    assert "all backends agree" in capsys.readouterr().out


VARIANT_BLOCK = """\
name: x
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn1: {op: batch_norm}
  extra: {op: relu, when: stride == 2}
  add: {op: add, inputs: [extra if stride == 2 else bn1, shortcut]}
  relu: {op: relu}
"""


@pytest.mark.parametrize("user_block", ["x_first", "x_2", "x_first_2"])
def test_a_variant_never_takes_a_user_block_s_name(
    user_block: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = {"blocks/x.yaml": VARIANT_BLOCK, f"blocks/{user_block}.yaml": _plain_block(user_block, 1)}
    network = (
        "name: n\ninput: {channels: 3, size: 8}\nstem: cifar\nblock: x\nshortcut: B\nstages:\n"
        "  - {depth: 2, width: 4}\n  - {depth: 2, width: 8, stride: 2}\n"
        f"  - {{depth: 1, width: 8, block: {user_block}}}\n"
        # A third unrolling of x (its first block alone at stride 2 in a stage of one) makes x_2 too.
        "  - {depth: 1, width: 8, stride: 2}\nhead: classifier\nhead_parameters: {classes: 3}\n"
    )
    graph = compile_spec(_write_parts(tmp_path, blocks, network))
    names = [definition.name for definition in graph.definitions if definition.role == "block"]
    assert len(names) == len(set(names)) and user_block in names
    assert_compiles_to_the_ir(graph)
    assert main(["check", str(tmp_path / "net.yaml")]) == 0
    assert "all backends agree" in capsys.readouterr().out


CLASSES_BLOCK = SE_BLOCK.replace("name: se_basic\n", "name: se_basic\nclasses: {se: CLASS}\n")
SHADOWING_CLASS_NAMES = ["OrderedDict", "F", "Any", "Callable", "ResNet", "BatchNorm", "Tensor"]


@pytest.mark.parametrize("name", SHADOWING_CLASS_NAMES)
def test_a_class_named_as_the_file_s_imports_is_renamed_not_shadowing(name: str, tmp_path: Path) -> None:
    path = _write(tmp_path, block=CLASSES_BLOCK.replace("CLASS", name))
    # Blocks named b1, b2, ...: the torch file imports OrderedDict.
    path.write_text(NETWORK + 'naming: {blocks: "b{number}"}\n')
    try:
        graph = compile_spec(path)
    except RescompileError as error:
        # A name generated code itself defines (ResNet, BatchNorm) is refused, located at the class name.
        assert str(error).startswith(f"{tmp_path / 'blocks' / 'se_basic.yaml'}:2:"), error
        return
    assert_compiles_to_the_ir(graph)
    assert (name in part_names(graph).containers.values()) == (name not in GENERATED_FILE_NAMES)


@pytest.mark.parametrize("preset", network_params(builtin_networks(), COMPILE_TEST_PRESETS))
def test_generated_module_level_names_are_the_authority_s_or_part_names(preset: str, tmp_path: Path) -> None:
    """GENERATED_FILE_NAMES is what the part names must avoid: it has to hold every name the
    templates and helpers bind at module level (the op network's file defines every op's helpers)."""
    graph = compile_spec(network_source(preset, tmp_path))
    names = part_names(graph)
    handed_out = set(names.parts.values()) | set(names.containers.values())
    for backend in (torch_backend, flax_backend):
        assert set(top_level_names(backend.emit_source(graph))) - handed_out <= GENERATED_FILE_NAMES


@pytest.mark.parametrize("shortcut", ["build", "conv_init", "downsample", "block", "ceil_padding", "sum", "layers"])
def test_a_sequential_shortcut_named_as_a_generated_name_is_renamed(shortcut: str, tmp_path: Path) -> None:
    shortcut_text = (
        f"name: {shortcut}\nnodes:\n"
        "  '0': {op: conv, out_channels: out_channels, kernel: 1, stride: stride}\n"
        "  '1': {op: batch_norm}\n"
    )
    parts = {"blocks/p.yaml": _plain_block("p", 3), f"shortcuts/{shortcut}.yaml": shortcut_text}
    policy = f"{{where_shapes_match: identity, where_shapes_change: {shortcut}}}"
    graph = compile_spec(
        _write_parts(tmp_path, parts, TWO_STAGE_NETWORK.format(first="p", second="p", shortcut=policy))
    )
    assert_compiles_to_the_ir(graph)


NESTED_SE_BLOCK = (
    SE_BLOCK.replace("se.fc1:", "se.a.fc1:").replace("se.act:", "se.a.act:").replace("se.fc2:", "se.a.fc2:")
)


@pytest.mark.parametrize("classes", ["{se: Outer, se.a: Inner}", "{se.a: Inner, se: Outer}"])
def test_a_class_inside_a_class_is_refused_located(classes: str, tmp_path: Path) -> None:
    """Nested classes dropped the outer class's nodes after the inner one (se.mul, then a
    BatchNorm) and still ran: refused at the inner class's key."""
    block = NESTED_SE_BLOCK.replace("name: se_basic\n", f"name: se_basic\nclasses: {classes}\n")
    path = _write(tmp_path, block=block)
    with pytest.raises(RescompileError) as raised:
        compile_spec(path)
    column = classes.index("se.a") + 1 + len("classes: ")
    assert str(raised.value) == (
        f"{tmp_path / 'blocks' / 'se_basic.yaml'}:2:{column}: block 'se_basic': classes.se.a is inside classes.se; "
        "a container written as a class cannot hold another one: keep one of them"
    )
    # Either class alone is written, and computes the IR.
    for alone in ("{se: Outer}", "{se.a: Inner}"):
        _write(tmp_path, block=NESTED_SE_BLOCK.replace("name: se_basic\n", f"name: se_basic\nclasses: {alone}\n"))
        assert_compiles_to_the_ir(compile_spec(path))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("parameters: {depth: 1}", "parameter name 'depth' is a keyword of the generated network's _make_stage"),
        ("parameters: {layout: 1}", "parameter name 'layout' is a keyword of the generated network's _make_stage"),
        ("parameters: {downsample: 1}", "block 'p' names a parameter 'downsample', the attribute its shortcut"),
        ("derived: {downsample: width}", "block 'p' names a derived value 'downsample', the attribute its shortcut"),
    ],
)
def test_a_block_parameter_named_as_the_stage_s_own_keywords_is_refused_located(
    parameters: str, message: str, tmp_path: Path
) -> None:
    """A block parameter ``downsample`` made a constructor with a duplicate argument (SyntaxError), and
    one named ``depth`` a _make_stage call with a repeated keyword."""
    block = _plain_block("p", 3, extra=parameters + "\n")
    path = _write_parts(
        tmp_path, {"blocks/p.yaml": block}, TWO_STAGE_NETWORK.format(first="p", second="p", shortcut="B")
    )
    with pytest.raises(RescompileError) as raised:
        compile_spec(path)
    assert str(raised.value).startswith(f"{tmp_path / 'blocks' / 'p.yaml'}:3:"), raised.value
    assert message in str(raised.value)
