"""docs/ops.md, the user's page on the elementwise activations: its examples are the committed
example files, its command compiles them, and it documents every elementwise op of the op table."""

import re
import shlex
from pathlib import Path

import pytest
from conftest import ELEMENTWISE_OP_KINDS

from rescompile.cli import main

ROOT = Path(__file__).parent.parent
PAGE = (ROOT / "docs" / "ops.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE, re.DOTALL)


def test_the_yaml_examples_are_the_committed_files() -> None:
    committed = [(ROOT / "examples" / "blocks" / "hard_gated_basic.yaml"), (ROOT / "examples" / "activations.yaml")]
    assert blocks("yaml") == [path.read_text() for path in committed]


def test_the_command_compiles_the_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the command is run from the repository root
    [command] = blocks("bash")
    arguments = shlex.split(command)
    assert arguments[:2] == ["./dev", "rescompile"]
    output = tmp_path / "x.py"
    assert main([*arguments[2:-1], str(output)]) == 0
    assert "nn.Hardswish" in output.read_text()


def test_every_elementwise_op_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", PAGE, re.MULTILINE))
    assert documented | {"relu", "sigmoid"} == set(ELEMENTWISE_OP_KINDS)
