"""What docs/modules.md shows is true: its example is the committed module file, and its command
runs as written."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
MODULES = (ROOT / "docs" / "modules.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", MODULES, flags=re.DOTALL)


def test_the_guides_example_is_the_committed_module_without_its_comments() -> None:
    text = (ROOT / "examples" / "modules" / "se_eca_gate.yaml").read_text()
    body = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
    assert blocks("yaml")[0] == body


@pytest.mark.parametrize("command", [line for block in blocks("bash") for line in block.splitlines()])
def test_the_guides_command_runs_and_writes_the_module_class(command: str, tmp_path: Path) -> None:
    assert command.startswith("./dev rescompile ")
    arguments = [
        str(tmp_path / "out.py") if argument.startswith("/tmp/") else argument for argument in shlex.split(command)
    ]
    result = subprocess.run(
        [sys.executable, "-m", "rescompile", *arguments[2:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "class SeEcaGate(nn.Module)" in (tmp_path / "out.py").read_text()
