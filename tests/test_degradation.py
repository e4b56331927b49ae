"""The degradation experiment (experiments/degradation.py): its pipeline end to end at smoke size
(the plot and the table are written and well-formed; the result itself is the full run's, in
docs/), and its two pieces of arithmetic, the schedule and the translations, by hand."""

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

ROOT = Path(__file__).parent.parent
EXPERIMENT = ROOT / "experiments" / "degradation.py"
# NOTE: the experiment is a script of the source tree, not a module of the package, so it is
# imported from its folder; its training workers (spawned) inherit that through sys.path.
sys.path.insert(0, str(EXPERIMENT.parent))
from degradation import SHIFT, Curve, Recipe, main, table, translate  # noqa: E402


def test_a_smoke_run_writes_the_plot_the_table_and_the_curves(tmp_path: Path) -> None:
    arguments = ["--nets", "plain20,resnet20", "--seeds", "1", "--epochs", "2", "--jobs", "1"]
    assert main([*arguments, "--output", str(tmp_path)]) == 0

    assert (tmp_path / "degradation.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    height, width, _ = matplotlib.image.imread(tmp_path / "degradation.png").shape
    assert width > height > 200  # two panels side by side

    table = (tmp_path / "degradation.md").read_text()
    number = r"(\d+\.\d\d)"
    rows = re.findall(rf"^\| (\w+) \| {number} ± {number} \| {number} ± {number} \| \d+ \|$", table, flags=re.M)
    assert [row[0] for row in rows] == ["plain20", "resnet20"]
    for _, train_error, train_deviation, test_error, test_deviation in rows:
        assert 0 <= float(train_error) <= 100 and 0 <= float(test_error) <= 100
        assert float(train_deviation) == float(test_deviation) == 0  # one seed
    assert "after 2 epochs" in table

    curves = json.loads((tmp_path / "degradation.json").read_text())
    assert [(curve["net"], curve["seed"]) for curve in curves] == [("plain20", 0), ("resnet20", 0)]
    assert all(len(curve["train_error"]) == len(curve["test_error"]) == 2 for curve in curves)


def test_the_command_has_help_and_names_an_unknown_net(capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run([sys.executable, str(EXPERIMENT), "--help"], capture_output=True, text=True, check=True)
    assert "--epochs" in result.stdout and "--seeds" in result.stdout
    with pytest.raises(SystemExit) as raised:
        main(["--nets", "plain21"])
    assert raised.value.code == 2
    assert "unknown built-in plain21" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--nets", "resnet50d"])  # its stem and average-pool shortcuts shrink 8×8 below 1×1
    assert "resnet50d cannot take the 8×8 digits: " in capsys.readouterr().err


def test_the_docs_show_the_committed_run() -> None:
    """docs/degradation.md is the table of the curves in docs/degradation.json, and
    docs/reproducing.md shows its rows (less the wall-time column): a rerun that updates one and not
    the others fails here."""
    curves = [Curve(**curve) for curve in json.loads((ROOT / "docs" / "degradation.json").read_text())]
    written = table(curves)
    assert written in (ROOT / "docs" / "degradation.md").read_text()
    rows = [row.rsplit(" | ", 1)[0] + " |" for row in written.splitlines() if row.startswith("| ") and "±" in row]
    assert len(rows) == 8
    page = (ROOT / "docs" / "reproducing.md").read_text()
    assert [row for row in rows if row not in page] == []


def test_the_learning_rate_falls_tenfold_at_half_and_three_quarters_of_training() -> None:
    recipe = Recipe(epochs=8)
    assert [recipe.learning_rate_at(epoch) for epoch in range(8)] == pytest.approx(
        [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


def test_translations_move_each_image_by_at_most_one_pixel_and_fill_with_zeros() -> None:
    images = torch.arange(1, 65, dtype=torch.float32).reshape(1, 1, 8, 8).repeat(64, 1, 1, 1)
    moved = translate(images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images[0, 0], (SHIFT,) * 4)
    crops = {(row, column): padded[row : row + 8, column : column + 8] for row in range(3) for column in range(3)}
    seen = set()
    for image in moved[:, 0]:
        matches = [offset for offset, crop in crops.items() if torch.equal(image, crop)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 9  # 64 draws of 9 offsets: every one appears (seeded)
