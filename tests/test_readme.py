"""The README is the front page: the quick start first, short, and its links lead into the docs
site. tests/test_docs.py runs its commands and programs, as every docs page's."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
QUICK_START = [
    "./dev rescompile architectures/resnet152.yaml --backend torch",
    "./dev test",
]


def test_the_first_commands_are_the_quick_start() -> None:
    first_block = re.search(r"^```(\w+)\n(.*?)^```$", README, flags=re.DOTALL | re.MULTILINE)
    assert first_block is not None and first_block.group(1) == "bash"
    commands = [line.split("#")[0].strip() for line in first_block.group(2).splitlines()]
    assert commands == QUICK_START


def test_the_readme_is_a_front_page() -> None:
    assert len(README.splitlines()) <= 120


def test_every_link_of_the_readme_reaches_a_page() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith("http")]
    assert {"docs/tutorial.md", "docs/reference/ops.md", "docs/reference/cli.md", "docs/reference/api.md"} <= set(local)
    assert [link for link in local if not (ROOT / link).is_file()] == []
