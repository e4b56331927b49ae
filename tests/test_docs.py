"""Everything the documentation shows runs as written, on every page of the docs site and the
README: each `./dev rescompile ...` line of their bash blocks (in a fresh folder holding copies of
architectures/, examples/ and docs/), each command they run from the repository root, and each
python block (in a fresh folder, in this process). The generated reference pages are what their script writes now,
and every page's code fences are balanced."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rescompile.cli import main

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def block_lines(language: str) -> list[tuple[str, str]]:
    return [
        (page_name(page), line)
        for page in PAGES
        for block in blocks(page.read_text(), language)
        for line in block.splitlines()
    ]


COMMANDS = [
    (page, line.split("#")[0].strip()) for page, line in block_lines("bash") if line.startswith("./dev rescompile")
]
SHELL_COMMANDS = [
    (page, line.split(" #")[0].strip())
    for page, line in block_lines("bash")
    if line.startswith((".venv/bin/", "XLA_FLAGS="))
]
"""Commands run as written from the repository root (the distributed-training examples): each
example checks its own result (the loss fell, the replicas are identical) in its exit status."""
PYTHON_BLOCKS = [(page_name(page), block) for page in PAGES for block in blocks(page.read_text(), "python")]


def ids(items: list[tuple[str, str]]) -> list[str]:
    return [f"{page}:{index}" for index, (page, _) in enumerate(items)]


def test_the_docs_show_commands_and_programs() -> None:
    assert {command for _, command in COMMANDS} >= CHECKED_BY_TESTS
    pages = {page for page, _ in COMMANDS + PYTHON_BLOCKS}
    assert {"README.md", "docs/tutorial.md", "docs/backbones.md", "docs/language.md"} <= pages
    assert len(SHELL_COMMANDS) == 2, SHELL_COMMANDS


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_code_fences_are_balanced(page: Path) -> None:
    """An opening fence names its language and a closing fence is bare, so a fence left open
    shows as a closing fence with a language (or as one still open at the end of the page)."""
    opened_at = None
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        if not line.lstrip().startswith("```"):
            continue
        assert line == line.lstrip(), f"{page_name(page)}:{number}: an indented fence"
        if opened_at is None:
            assert line != "```", f"{page_name(page)}:{number}: an opening fence names its language"
            opened_at = number
        else:
            assert line == "```", f"{page_name(page)}:{number}: the fence opened at line {opened_at} is not closed"
            opened_at = None
    assert opened_at is None, f"{page_name(page)}:{opened_at}: a fence is never closed"


def test_reference_pages_are_what_the_script_writes() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/reference_pages.py", "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("page", "command"), SHELL_COMMANDS, ids=ids(SHELL_COMMANDS))
def test_shell_command_runs(page: str, command: str) -> None:
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replicas identical: True" in result.stdout


CHECKED_BY_TESTS = {
    "./dev rescompile check convnext_tiny --size 97 --backends torch,flax,onnx",
    "./dev rescompile check regnetz_b16 --size 97 --backends torch,flax,onnx",
    "./dev rescompile check resnet20 --size 32 --batch 8 --train-steps 10",
    "./dev rescompile check resnet50",
}
"""Commands whose check other tests make by default, run as written in the slow tail only: the first two
are tests/test_timm_presets.py's test_all_backends_agree (convnext_tiny and regnetz_b16 at 33×33, odd
through every stage as 97 is; at 97 in the slow tail), the third tests/test_training.py's
ten steps of resnet20 (32×32, batch 8; its command is run there too, for 3 steps), the fourth the
flax and ONNX backend tests' resnet50 at 224×224 against torch (test_resnet50_224_*)."""


FIRST_PAGE: dict[str, str] = {}
for _page, _command in COMMANDS:
    FIRST_PAGE.setdefault(_command, _page)
DISTINCT_COMMANDS = [(page, command) for command, page in FIRST_PAGE.items()]
"""Each command once, with the first page that shows it: several pages repeat a command (the
tutorial and the README both compile wrn16_4), and one run proves it runs."""


@pytest.mark.parametrize(
    ("page", "command"),
    [
        pytest.param(page, command, marks=[pytest.mark.slow] * (command in CHECKED_BY_TESTS))
        for page, command in DISTINCT_COMMANDS
    ],
    ids=ids(DISTINCT_COMMANDS),
)
def test_command_runs(
    page: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process, through the command line's own entry point (a fresh interpreter for each
    command cost more than most commands): test_the_quick_start_runs_as_a_program runs one as a
    program."""
    for folder in ("architectures", "examples", "docs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    status = main(shlex.split(command)[2:])
    error = capsys.readouterr().err
    assert status == 0, error
    assert "Traceback" not in error


def test_the_quick_start_runs_as_a_program(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "architectures", tmp_path / "architectures")
    arguments = shlex.split(COMMANDS[0][1])[2:]
    assert COMMANDS[0] == ("README.md", "./dev rescompile architectures/resnet152.yaml --backend torch")
    result = subprocess.run(
        [sys.executable, "-m", "rescompile", *arguments], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "resnet152_torch.py").is_file()


@pytest.mark.parametrize(("page", "program"), PYTHON_BLOCKS, ids=ids(PYTHON_BLOCKS))
def test_python_block_runs(page: str, program: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, as a script in a fresh folder (a fresh interpreter for each block spent
    more time importing torch and jax than most blocks spend running)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [page])
    exec(compile(program, f"{page} (python block)", "exec"), {"__name__": "__main__"})
