"""What the block-extension and module guides show is true: each guide's first YAML example is the
committed example file without its comments, and its command writes the class the guide promises."""

import re
import shlex
from pathlib import Path

import pytest

from rescompile.cli import main

ROOT = Path(__file__).parent.parent
GUIDES = [
    ("extending_blocks.md", "examples/blocks/se_basic.yaml", "class SeBasicBlock"),
    ("modules.md", "examples/modules/se_eca_gate.yaml", "class SeEcaGate(nn.Module)"),
]
"""Each guide, the example file its first YAML block shows, and what its command's output holds."""


def blocks(page: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.DOTALL)


@pytest.mark.parametrize(("page", "example", "_"), GUIDES)
def test_the_guides_example_is_the_committed_file_without_its_comments(page: str, example: str, _: str) -> None:
    text = (ROOT / example).read_text()
    body = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
    assert blocks(page, "yaml")[0] == body


@pytest.mark.parametrize(("page", "_", "written"), GUIDES)
def test_the_guides_command_writes_its_class(
    page: str, _: str, written: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/test_docs.py runs every docs command; this checks what the guide's command writes."""
    for command in [line for block in blocks(page, "bash") for line in block.splitlines()]:
        assert command.startswith("./dev rescompile ")
        arguments = [
            str(tmp_path / "out.py") if argument.startswith("/tmp/") else argument
            for argument in shlex.split(command)[2:]
        ]
        monkeypatch.chdir(ROOT)  # the guides' commands read examples/ from the repository root
        assert main(arguments) == 0
        assert written in (tmp_path / "out.py").read_text()
