"""User text from a spec never runs: hostile text in every position that reaches generated source
is emitted as a safe literal (or rejected at validate time with a located error).

Each payload would run ``Path("PWNED").touch()`` at compile or import time if it were pasted into
the generated source unescaped; the tests prove the file parses, nothing ran, and the text reads
back unchanged from the generated docstring or default value.
"""

from __future__ import annotations

import ast
import keyword
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rescompile.backends import flax_backend, onnx_backend, torch_backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler.pipeline import compile_spec
from rescompile.compiler.weights import random_weights
from rescompile.spec.errors import RescompileError
from rescompile.spec.models import MODULE_ATTRIBUTES, MODULE_LEVEL_NAMES, RESERVED_NAMES

PAYLOADS = [
    'x"""; __import__("pathlib").Path("PWNED").touch(); """',
    "x'''; __import__('pathlib').Path('PWNED').touch(); '''",
    '"\n__import__("pathlib").Path("PWNED").touch()\n"',
    "ends in a backslash \\",
    'ends in a quote "',
    "an invalid escape \\N{ and \\x",
    "control characters \x00 \r \t \x1b \x7f \u2028 and \U0001f600",
]


def _yaml_string(text: str) -> str:
    """``text`` as a YAML double-quoted scalar (YAML's escapes are a superset of JSON's)."""
    escaped = "".join(
        {"\\": "\\\\", '"': '\\"', "\n": "\\n"}.get(character)
        or (character if character.isprintable() else f"\\u{ord(character):04x}")
        for character in text
    )
    return f'"{escaped}"'


def _hostile_network(folder: Path, payload: str) -> Path:
    """A network whose every free-text and string-valued position holds ``payload``: network, block,
    shortcut, stem and head descriptions; a block's string parameter default and its per-network
    value; a string constant inside a derived expression's comparison."""
    text = _yaml_string(payload)
    for kind in ("blocks", "stems", "heads", "shortcuts"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    (folder / "blocks" / "hostile.yaml").write_text(
        f"name: hostile\ndescription: {text}\n"
        f"parameters: {{mode: {text}, tag: {text}}}\n"
        # The comparison holds the payload as a string constant inside an expression.
        f"derived: {{same: {_yaml_string('1 if mode == ' + repr(payload) + ' else 2')}}}\n"
        "out_channels: width * same\n"
        "nodes:\n"
        "  conv1: {op: conv, out_channels: width * same, kernel: 3, stride: stride, padding: 1}\n"
        "  bn1: {op: batch_norm, zero_init: true}\n"
        "  add: {op: add, inputs: [bn1, shortcut]}\n"
        "  relu: {op: relu}\n"
    )
    (folder / "shortcuts" / "hostile_projection.yaml").write_text(
        f"name: hostile_projection\ndescription: {text}\nmodule: downsample\nnodes:\n"
        '  "0": {op: conv, out_channels: out_channels, kernel: 1, stride: stride}\n'
        '  "1": {op: batch_norm}\n'
    )
    (folder / "stems" / "hostile_stem.yaml").write_text(
        f"name: hostile_stem\ndescription: {text}\nparameters: {{width: 8, label: {text}}}\nnodes:\n"
        "  conv1: {op: conv, out_channels: width, kernel: 3, padding: 1}\n"
        "  bn1: {op: batch_norm}\n"
        "  relu: {op: relu}\n"
    )
    (folder / "heads" / "hostile_head.yaml").write_text(
        f"name: hostile_head\ndescription: {text}\nparameters: {{classes: 10, label: {text}}}\nnodes:\n"
        "  pool: {op: global_average_pool}\n"
        "  flatten: {op: flatten}\n"
        "  fc: {op: linear, out_features: classes}\n"
    )
    network = folder / "net.yaml"
    network.write_text(
        f"name: hostile_net\ndescription: {text}\ninput: {{channels: 3, size: 8}}\n"
        "stem: hostile_stem\nblock: hostile\n"
        f"block_parameters: {{tag: {_yaml_string(payload + ' (per network)')}}}\n"
        "shortcut: {where_shapes_match: identity, where_shapes_change: hostile_projection}\n"
        "stages:\n  - {depth: 1, width: 8}\n  - {depth: 1, width: 16, stride: 2}\n"
        "head: hostile_head\n"
    )
    return network


def _docstrings(source: str) -> list[str]:
    tree = ast.parse(source)
    nodes = [tree, *(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef | ast.FunctionDef))]
    return [docstring for node in nodes if (docstring := ast.get_docstring(node, clean=False))]


def _string_constants(source: str) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def _defaults(source: str, function: str) -> list[object]:
    """The literal default values of every function or method named ``function``."""
    return [
        ast.literal_eval(default)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name == function
        for default in node.args.defaults
    ]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_text_in_every_position_parses_runs_nothing_and_reads_back(
    payload: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    graph = compile_spec(_hostile_network(tmp_path, payload))
    for backend in (torch_backend, flax_backend):
        source = backend.emit_source(graph)
        docstrings = _docstrings(source)
        # Network (module docstring), block and shortcut: each description reads back verbatim.
        assert sum(payload in docstring for docstring in docstrings) >= 3, backend.__name__
        assert payload in _defaults(source, "__init__"), backend.__name__
        assert f"{payload} (per network)" in _string_constants(source), backend.__name__
    torch_backend.build_module(graph)
    flax_backend.build_module(graph)
    onnx_backend.emit_model(graph, seed=0).proto()
    assert not (tmp_path / "PWNED").exists()


def test_the_command_line_compiles_and_checks_hostile_text_without_running_it(tmp_path: Path) -> None:
    network = _hostile_network(tmp_path, PAYLOADS[0])
    for arguments in (
        [str(network), "--backend", "torch", "-o", "model.py"],
        [str(network), "--backend", "flax", "-o", "model_flax.py"],
        ["check", str(network), "--backends", "torch,flax,onnx"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "rescompile", *arguments], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
    subprocess.run([sys.executable, "model.py"], cwd=tmp_path, check=True)  # importing runs nothing either
    assert not (tmp_path / "PWNED").exists()


NETWORK = "input: {channels: 3, size: 32}\nstem: cifar\nblock: basic\nshortcut: A\nstages:\n  - {depth: 1, width: 16}\n"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"net.yaml": 'name: "../escaped"\n' + NETWORK}, "net.yaml:1:7: name: a name starts with a letter"),
        ({"net.yaml": 'name: "a\\"\\"\\"b"\n' + NETWORK}, "net.yaml:1:7: name: a name starts with a letter"),
        (
            {
                "net.yaml": "name: net\n" + NETWORK.replace("basic", "odd"),
                "blocks/odd.yaml": 'name: "x(nn.Module): pass\\nimport os\\nclass y"\nout_channels: width\nnodes:\n'
                "  add: {op: add, inputs: [input, shortcut]}\n",
            },
            "blocks/odd.yaml:1:7: name: a name starts with a letter",
        ),
        (
            {
                "net.yaml": "name: net\n" + NETWORK.replace("shortcut: A", "shortcut: odd"),
                "shortcuts/odd.yaml": "name: odd\nmodule: 'nn; import os'\nnodes:\n"
                "  pad: {op: pad_channels, after: 0}\n",
            },
            "shortcuts/odd.yaml:2:9: module: expected a Python-style identifier",
        ),
        (
            {
                "net.yaml": "name: net\n" + NETWORK.replace("basic", "odd"),
                "blocks/odd.yaml": "name: odd\nparameters: {__class__: 1}\nout_channels: width\nnodes:\n"
                "  add: {op: add, inputs: [input, shortcut]}\n",
            },
            "blocks/odd.yaml:2:14: parameter name '__class__' must be a Python-style identifier",
        ),
        (
            {
                "net.yaml": "name: net\n" + NETWORK.replace("basic", "odd"),
                "blocks/odd.yaml": "name: odd\nderived: {self: width}\nout_channels: width\nnodes:\n"
                "  add: {op: add, inputs: [input, shortcut]}\n",
            },
            "blocks/odd.yaml:2:11: derived name 'self' must be a new Python-style identifier",
        ),
        (
            {
                "net.yaml": "name: net\n" + NETWORK.replace("basic", "odd"),
                "blocks/odd.yaml": "name: odd\nout_channels: width\nnodes:\n"
                "  'a-b': {op: relu}\n  add: {op: add, inputs: [a-b, shortcut]}\n",
            },
            "blocks/odd.yaml:4:3: node name 'a-b' must be a module path: Python-style identifiers or numbers",
        ),
    ],
)
def test_names_that_would_be_code_are_located_errors_at_validate_time(
    files: dict[str, str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(RescompileError) as raised:
        compile_spec(tmp_path / "net.yaml")
    assert str(raised.value).startswith(expected), str(raised.value)


SEGMENT = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True).filter(
    lambda name: not keyword.iskeyword(name) and name not in RESERVED_NAMES | MODULE_LEVEL_NAMES | MODULE_ATTRIBUTES
)
NODE_NAMES = st.lists(
    st.lists(SEGMENT, min_size=1, max_size=2).map(".".join), min_size=5, max_size=5, unique=True
).filter(lambda names: "shortcut" not in names and "input" not in names)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=NODE_NAMES, description=st.text(max_size=30), value=st.text(max_size=30))
def test_accepted_specs_with_drawn_names_and_text_compile_in_every_backend_to_the_ir_shapes(
    names: list[str], description: str, value: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every spec validate accepts compiles in every backend, and its generated source parses and
    computes the IR's shapes; every spec it refuses gets one located line."""
    folder = tmp_path_factory.mktemp("drawn")
    conv1, bn1, relu, conv2, bn2 = names
    text = _yaml_string(description)
    (folder / "blocks").mkdir()
    (folder / "blocks" / "drawn.yaml").write_text(
        f"name: drawn\ndescription: {text}\nparameters: {{tag: {_yaml_string(value)}}}\nout_channels: width\n"
        "nodes:\n"
        f"  {conv1}: {{op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}}\n"
        f"  {bn1}: {{op: batch_norm}}\n"
        f"  {relu}: {{op: relu}}\n"
        f"  {conv2}: {{op: conv, out_channels: width, kernel: 3, padding: 1}}\n"
        f"  {bn2}: {{op: batch_norm, zero_init: true}}\n"
        f"  merge: {{op: add, inputs: [{bn2}, shortcut]}}\n"
    )
    (folder / "net.yaml").write_text(
        f"name: drawn\ndescription: {text}\ninput: {{channels: 3, size: 12}}\nstem: cifar\nblock: drawn\n"
        "shortcut: B\nstages:\n  - {depth: 1, width: 8}\n  - {depth: 1, width: 16, stride: 2}\n"
        "head: classifier\nhead_parameters: {classes: 3}\n"
    )
    try:
        graph = compile_spec(folder / "net.yaml")
    except RescompileError as error:
        assert re.fullmatch(r"[^\n]+:\d+:\d+: [^\n]+", str(error)), str(error)
        return
    for emit in (torch_backend.emit_source, flax_backend.emit_source):
        ast.parse(emit(graph))
    weights = random_weights(graph)
    x = np.zeros((1, *graph.input_shape), np.float32)
    for backend in BACKENDS.values():
        outputs = backend.module_outputs(graph, weights, x)
        assert [output.shape[1:] for output in outputs.values()] == [module.out_shape for module in graph.modules]
