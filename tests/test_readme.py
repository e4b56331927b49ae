"""Everything the README shows runs as written: each `./dev rescompile ...` line of its bash
blocks, and each python block."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_api import FEATURES_EXAMPLE, FLAX_FEATURES_EXAMPLE

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


COMMANDS = [
    line.split("#")[0].strip()
    for block in blocks("bash")
    for line in block.splitlines()
    if line.startswith("./dev rescompile")
]


SHELL_COMMANDS = [
    line.split(" #")[0].strip()
    for block in blocks("bash")
    for line in block.splitlines()
    if line.startswith((".venv/bin/", "XLA_FLAGS="))
]
"""Commands run as written from the repository root (the distributed-training examples): each
example checks its own result (the loss fell, the replicas are identical) in its exit status."""


@pytest.mark.parametrize("command", SHELL_COMMANDS)
def test_readme_shell_command_runs(command: str) -> None:
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replicas identical: True" in result.stdout


def test_the_readme_shows_commands() -> None:
    assert "./dev rescompile architectures/resnet152.yaml --backend torch" in COMMANDS
    assert len(SHELL_COMMANDS) == 2, SHELL_COMMANDS


CHECKED_BY_TESTS = {
    "./dev rescompile check convnext_tiny --size 97 --backends torch,flax,onnx",
    "./dev rescompile check resnet20 --size 32 --batch 8 --train-steps 10",
    "./dev rescompile check resnet50",
}
"""Commands whose check other tests make by default, run as written in the slow tail only: the first is
tests/test_timm_presets.py's test_all_backends_agree at 97×97, the second tests/test_training.py's
ten steps of resnet20 (32×32, batch 8; its command is run there too, for 3 steps), the third the
flax and ONNX backend tests' resnet50 at 224×224 against torch (test_resnet50_224_*)."""


@pytest.mark.parametrize(
    "command",
    [pytest.param(command, marks=[pytest.mark.slow] if command in CHECKED_BY_TESTS else []) for command in COMMANDS],
)
def test_readme_command_runs(command: str, tmp_path: Path) -> None:
    for folder in ("architectures", "examples", "docs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    arguments = shlex.split(command)[2:]
    result = subprocess.run(
        [sys.executable, "-m", "rescompile", *arguments], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


RUN_IN_TEST_API = {FEATURES_EXAMPLE.strip(), FLAX_FEATURES_EXAMPLE.strip()}
"""Python blocks tests/test_api.py runs as written (checking that the README holds them verbatim)
and whose printed result it checks: run here again, in a fresh interpreter, in the slow tail only.
The Flax one (resnet50d at 224 in eager Flax) was the default suite's slowest test."""


@pytest.mark.parametrize(
    "index",
    [
        pytest.param(index, marks=[pytest.mark.slow] if block.strip() in RUN_IN_TEST_API else [])
        for index, block in enumerate(blocks("python"))
    ],
)
def test_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", blocks("python")[index]], cwd=tmp_path, check=True, capture_output=True)
