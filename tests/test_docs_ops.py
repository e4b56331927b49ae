"""docs/ops.md, the user's page on the elementwise activations, constants and attention pooling: its
examples are the committed example files, its commands compile them, and it documents every
elementwise op of the op table and the ops of its second half."""

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
    committed = [
        ROOT / "examples" / "blocks" / "hard_gated_basic.yaml",
        ROOT / "examples" / "activations.yaml",
        ROOT / "examples" / "blocks" / "context_basic.yaml",
        ROOT / "examples" / "global_context.yaml",
    ]
    assert blocks("yaml") == [path.read_text() for path in committed]


@pytest.mark.parametrize(("index", "written"), [(0, "nn.Hardswish"), (1, "Softmax")])
def test_the_commands_compile_the_examples(
    index: int, written: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the commands are run from the repository root
    arguments = shlex.split(blocks("bash")[index])
    assert arguments[:2] == ["./dev", "rescompile"]
    output = tmp_path / Path(arguments[-1]).name
    assert main([*arguments[2:-1], str(output)]) == 0
    assert written.encode() in output.read_bytes()


def test_every_elementwise_op_and_the_pooling_ops_are_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` ", PAGE, re.MULTILINE))
    others = {"add", "mul", "clamp", "spatial_softmax", "weighted_spatial_sum"}
    assert documented | {"relu", "sigmoid"} == set(ELEMENTWISE_OP_KINDS) | others
