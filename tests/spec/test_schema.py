"""The JSON Schema for editors: generated from the pydantic models, committed beside the built-ins,
carried by every built-in file's modeline, accepting every built-in and refusing what the loader
refuses for the reasons a schema can see (unknown key, wrong type, unknown op)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rescompile.cli import main
from rescompile.compiler.ops import OP_TYPES
from rescompile.spec import RescompileError, builtin_directory
from rescompile.spec.loader import load_network
from rescompile.spec.models import TEMPLATE_OPS
from rescompile.spec.schema import FOLDERS, KINDS, file_name, json_schema, modeline, op_names, schema_text

SCHEMAS = builtin_directory() / "schemas"


def builtin_files() -> list[tuple[str, Path]]:
    files = [("network", path) for path in sorted(builtin_directory().glob("*.yaml"))]
    for kind, folder in FOLDERS.items():
        files += [(kind, path) for path in sorted((builtin_directory() / folder).glob("*.yaml"))]
    return files


def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("kind", KINDS)
def test_the_committed_schema_is_the_generated_one(kind: str) -> None:
    """Regenerate after a change to the models: rescompile schema -o architectures/schemas"""
    assert (SCHEMAS / file_name(kind)).read_text() == schema_text(kind)


def test_schema_writes_every_kind_into_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "-o", str(tmp_path)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(file_name(kind) for kind in KINDS)
    assert (tmp_path / "block.schema.json").read_text() == schema_text("block")
    assert main(["schema", "--kind", "stem"]) == 0
    assert capsys.readouterr().out.endswith(schema_text("stem"))


def test_schema_creates_its_folder_and_refuses_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "-o", str(tmp_path / "new" / "schemas")]) == 0
    assert len(list((tmp_path / "new" / "schemas").iterdir())) == len(KINDS)
    (tmp_path / "file").write_text("kept")
    assert main(["schema", "-o", str(tmp_path / "file")]) == 1
    message = f"-o {tmp_path / 'file'}: not a folder; schema -o names the folder to write into\n"
    assert capsys.readouterr().err.endswith(message)
    assert (tmp_path / "file").read_text() == "kept"


@pytest.mark.parametrize(("kind", "path"), builtin_files(), ids=lambda value: getattr(value, "name", value))
def test_every_builtin_carries_the_modeline_and_validates(kind: str, path: Path) -> None:
    folder = "" if path.parent == builtin_directory() else "../"
    first_line = path.read_text().splitlines()[0]
    assert first_line == modeline(kind, folder)
    assert (path.parent / first_line.split("$schema=")[1]).is_file()
    validator(kind).validate(yaml.safe_load(path.read_text()))


def test_every_key_has_a_description_and_op_is_an_enum_of_the_op_table() -> None:
    def undescribed(node: object, path: str) -> list[str]:
        found: list[str] = []
        if isinstance(node, dict):
            for key, value in node.get("properties", {}).items():
                if "description" not in value:
                    found.append(f"{path}.{key}")
            for key, value in node.items():
                found += undescribed(value, f"{path}/{key}")
        elif isinstance(node, list):
            for value in node:
                found += undescribed(value, path)
        return found

    for kind in KINDS:
        assert undescribed(json_schema(kind), kind) == []
    # Every IR op, and the template forms that unroll into IR ops (spec/unroll.py).
    assert set(op_names()) == {op.kind for op in OP_TYPES} | set(TEMPLATE_OPS)
    op_node, chosen_op, module_use = json_schema("block")["properties"]["nodes"]["additionalProperties"]["anyOf"]
    assert op_node["properties"]["op"]["enum"] == op_names()
    assert chosen_op["properties"]["op"]["pattern"] == "^\\{[A-Za-z_][A-Za-z0-9_]*\\}$"  # op: "{act}"
    assert module_use["required"] == ["module"]


NETWORK = """\
name: net
input: {channels: 3, size: 32}
stem: cifar
block: basic
shortcut: A
stages:
  - {depth: 1, width: 16}
"""
BAD_NETWORKS = {
    "unknown key": NETWORK + "dropout: 0.5\n",
    "wrong type": NETWORK.replace("depth: 1", "depth: [1]"),
    "unknown key in a stage": NETWORK.replace("width: 16}", "width: 16, widht: 3}"),
}
BLOCK = """\
name: tiny
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  add: {op: add, inputs: [conv1, shortcut]}
"""
BAD_BLOCKS = {
    "unknown op": BLOCK.replace("op: conv", "op: convolution"),
    "unknown key in a node": BLOCK.replace("padding: 1", "padding: 1, pading: 1"),
    "wrong type": BLOCK.replace("inputs: [conv1, shortcut]", "inputs: conv1"),
    "unknown op inserted by an extension": "name: tiny\nextends: basic\ninsert_after:\n  bn1:\n    x2: {op: relux}\n",
    "extension without a name": "extends: basic\nremove: [relu1]\n",
    "extension removing a name that is not text": "name: tiny\nextends: basic\nremove: [{relu1: 1}]\n",
    "extension replacing with an unknown key": "name: tiny\nextends: basic\nreplace:\n  bn1: {op: relu, kernel: 3}\n",
    "module use with an unknown key": BLOCK.replace(
        "  add:", "  se: {module: squeeze_excite, parameters: {channels: width, reduced: 4}, inputs: [conv1]}\n  add:"
    ),
}


@pytest.mark.parametrize("text", BAD_NETWORKS.values(), ids=BAD_NETWORKS)
def test_the_schema_refuses_bad_networks_the_loader_refuses(text: str, tmp_path: Path) -> None:
    (tmp_path / "net.yaml").write_text(text)
    with pytest.raises(RescompileError):
        load_network(tmp_path / "net.yaml")
    _assert_refused("network", yaml.safe_load(text))


@pytest.mark.parametrize("text", BAD_BLOCKS.values(), ids=BAD_BLOCKS)
def test_the_schema_refuses_bad_blocks_the_loader_refuses(text: str, tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "tiny.yaml").write_text(text)
    (tmp_path / "net.yaml").write_text(NETWORK.replace("block: basic", "block: tiny"))
    assert main(["validate", str(tmp_path / "net.yaml")]) == 1
    _assert_refused("block", yaml.safe_load(text))


MODULE_USE = "  se: {module: squeeze_excite, parameters: {channels: width, reduced: 4}}\n  add: {op: add, inputs: [se,"


@pytest.mark.parametrize("block", [BLOCK, BLOCK.replace("  add: {op: add, inputs: [conv1,", MODULE_USE)])
def test_the_good_examples_pass_both(block: str, tmp_path: Path) -> None:
    validator("network").validate(yaml.safe_load(NETWORK))
    validator("block").validate(yaml.safe_load(block))
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "tiny.yaml").write_text(block)
    (tmp_path / "net.yaml").write_text(NETWORK.replace("block: basic", "block: tiny"))
    assert main(["validate", str(tmp_path / "net.yaml")]) == 0


def _assert_refused(kind: str, document: Any) -> None:
    errors = list(validator(kind).iter_errors(document))
    assert errors, f"the {kind} schema accepts what the loader refuses"
