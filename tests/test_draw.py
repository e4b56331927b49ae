"""``rescompile draw``: the SVG is rendered by a real renderer (MuPDF, from PyPI) to pixels that are
not blank and to text that carries every stage's label; the README's picture is the current one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pymupdf
import pytest

from rescompile.cli import main
from rescompile.compiler import compile_spec
from rescompile.draw import draw_block, draw_network

README_PICTURE = Path(__file__).parent.parent / "docs" / "resnet50.svg"


def render(svg: str) -> tuple[np.ndarray, str]:
    """(RGB pixels, the text MuPDF finds on the page)."""
    page = pymupdf.open(stream=svg.encode(), filetype="svg")[0]
    pixmap = page.get_pixmap(dpi=72)
    pixels = np.frombuffer(pixmap.samples, np.uint8).reshape(pixmap.height, pixmap.width, pixmap.n)
    return pixels[..., :3], page.get_text()


def test_the_network_picture_renders_with_every_stage_label() -> None:
    pixels, text = render(draw_network(compile_spec("resnet50")))
    drawn = (pixels < 200).any(axis=2).mean()
    assert 0.02 < drawn < 0.5, f"{drawn:.1%} of the pixels are drawn"
    for label in ["input 3×224×224", "stem: imagenet", "head: classifier", "resnet50: 25,557,032 parameters"]:
        assert label in text
    for stage, depth, width, shape in [(1, 3, 64, "256×56×56"), (2, 4, 128, "512×28×28"), (4, 3, 512, "2048×7×7")]:
        assert f"layer{stage}: bottleneck × {depth}" in text
        assert f"width {width}, stride {1 if stage == 1 else 2}, shortcut projection" in text
        assert f"output {shape}" in text


def test_the_block_picture_draws_the_shortcut_beside_the_residual_path() -> None:
    svg = draw_block(compile_spec("seresnet50"), "se_bottleneck")
    pixels, text = render(svg)
    assert "se.fc1: conv" in text and "se.scale: mul" in text and "add: add" in text
    assert "shortcut projection: conv, batch_norm" in text
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    assert red.sum() > 100, "the shortcut curve is drawn in red"


def test_the_readme_picture_is_the_current_drawing() -> None:
    """Regenerate with: ./dev rescompile draw resnet50 -o docs/resnet50.svg"""
    assert "![resnet50](docs/resnet50.svg)" in (README_PICTURE.parent.parent / "README.md").read_text()
    assert README_PICTURE.read_text() == draw_network(compile_spec("resnet50"))


def test_draw_writes_the_file_and_refuses_an_unknown_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["draw", "resnet18", "-o", str(tmp_path / "net.svg")]) == 0
    assert (tmp_path / "net.svg").read_text() == draw_network(compile_spec("resnet18"))
    assert main(["draw", "resnet18", "--block", "bottleneck", "-o", str(tmp_path / "block.svg")]) == 1
    assert capsys.readouterr().err == "--block bottleneck: resnet18 has no block of that type; it has basic\n"
    assert not (tmp_path / "block.svg").exists()
