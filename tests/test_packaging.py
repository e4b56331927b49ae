"""The wheel installs one top-level package, `rescompile`, and ships the architectures."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_built_wheel_installs_only_rescompile_and_finds_the_shipped_yaml(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ and *.egg-info in the tree it builds.
    source = tmp_path / "source"
    local = (".git", ".venv", "build", "dist", "out", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "*.onnx*")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*local))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rescompile-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"rescompile", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "rescompile/architectures/blocks/bottleneck.yaml" in names
    assert "rescompile/architectures/schemas/network.schema.json" in names  # the modelines resolve
    assert "rescompile/backends/templates/torch_model.py.jinja" in names
    assert "rescompile/py.typed" in names

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    script = (
        "import rescompile, sys\n"
        f"assert rescompile.__file__.startswith({str(site)!r}), rescompile.__file__\n"
        "graph = rescompile.compile_spec('resnet50')\n"
        "assert rescompile.cost(graph).parameters == 25_557_032\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, env={"PYTHONPATH": str(site)})
