"""The command line: compile, validate, cost, list; and its error contract (one located line,
exit status 1, no traceback, nothing written, nothing existing damaged)."""

import contextlib
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rescompile import cli
from rescompile.cli import main
from rescompile.compiler import compile_spec

ROOT = Path(__file__).parent.parent

BAD_SPEC = """\
name: bad
input: {channels: 3, size: 32}
stem: cifar
block: basik
shortcut: B
stages: [{depth: 1, width: 8}]
"""


def run_cli(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rescompile", *arguments], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_compile_torch_writes_the_file_and_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "net.py"
    assert main(["resnet20", "--backend", "torch", "-o", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "resnet20: 269,722 parameters, 0.041 GMACs" in printed
    assert "input 3×32×32 -> output 10" in printed
    assert f"wrote {output} (torch," in printed
    assert "class BasicBlock(nn.Module):" in output.read_text()


def test_compile_onnx_and_flax_write_their_artifacts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    model_path = tmp_path / "net.onnx"
    assert main(["resnet20", "--backend", "onnx", "-o", str(model_path), "--opset", "17", "--fold-bn"]) == 0
    model = onnx.load(str(model_path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert not [node for node in model.graph.node if node.op_type == "BatchNormalization"]
    flax_path = tmp_path / "net_flax.py"
    assert main(["resnet20", "--backend", "flax", "-o", str(flax_path)]) == 0
    assert "from flax import nnx" in flax_path.read_text()
    printed = capsys.readouterr().out
    assert f"wrote {model_path} (onnx," in printed and f"wrote {flax_path} (flax," in printed


def test_onnx_height_and_width_are_dynamic_unless_fixed_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    def input_dims(path: Path) -> list[str | int]:
        dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
        return [dim.dim_param or dim.dim_value for dim in dims]

    assert main(["resnet20", "--backend", "onnx", "-o", str(tmp_path / "dynamic.onnx")]) == 0
    assert "(batch, height and width dynamic)" in capsys.readouterr().out
    assert input_dims(tmp_path / "dynamic.onnx") == ["batch", 3, "H", "W"]
    assert main(["resnet20", "--backend", "onnx", "--fixed-size", "-o", str(tmp_path / "fixed.onnx")]) == 0
    assert "(batch dimension dynamic)" in capsys.readouterr().out
    assert input_dims(tmp_path / "fixed.onnx") == ["batch", 3, 32, 32]


def test_features_writes_one_onnx_output_per_feature_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    output = tmp_path / "features.onnx"
    assert main(["resnet50d", "--size", "64", "--backend", "onnx", "--features", "1,2,3,4", "-o", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "-> feature maps layer1 256×/4, layer2 512×/8, layer3 1024×/16, layer4 2048×/32 (" in printed
    assert [value.name for value in onnx.load(str(output)).graph.output] == ["layer1", "layer2", "layer3", "layer4"]
    assert main(["resnet50d", "--backend", "onnx", "--features", "1,9", "-o", str(output)]) == 1
    assert capsys.readouterr().err.startswith("--features 1,9 does not choose among resnet50d's 5 feature maps")
    assert main(["resnet50d", "--features", "1", "-o", str(tmp_path / "net.py")]) == 1
    assert capsys.readouterr().err == "--features applies to --backend onnx only\n"


def test_onnx_embeds_given_weights(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from rescompile.compiler import compile_spec
    from rescompile.compiler.weights import random_weights, save_weights

    weights = random_weights(compile_spec("resnet20"), seed=7)
    save_weights(weights, tmp_path / "w.safetensors")
    output = tmp_path / "net.onnx"
    assert main(["resnet20", "--backend", "onnx", "--weights", str(tmp_path / "w.safetensors"), "-o", str(output)]) == 0
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(str(output)).graph.initializer}
    assert (initializers["layer2.0.conv1.weight"] == weights["layer2.0.conv1.weight"]).all()


@pytest.mark.parametrize(
    ("backend", "name"), [("torch", "resnet20_torch.py"), ("flax", "resnet20_flax.py"), ("onnx", "resnet20.onnx")]
)
def test_compile_uses_a_default_output_name(
    backend: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["resnet20", "--backend", backend]) == 0
    assert [path.name for path in tmp_path.iterdir()] == [name]


def test_spec_files_resolve_relative_parts_and_sizes_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = Path(__file__).parent.parent / "architectures" / "resnet50.yaml"
    assert main(["cost", str(spec), "--size", "64x32"]) == 0
    printed = capsys.readouterr().out
    assert "resnet50: input 3×64×32" in printed
    assert "layer4" in printed and "2048×2×1" in printed


def test_cost_table_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "resnet50"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.split()[:4] == ["total", "25,557,032", "4,089,184,256", "37,561,832"]


def test_validate_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "resnet18", "plain56"]) == 0
    printed = capsys.readouterr().out
    assert "resnet18: ok (resnet18: 11,689,512 parameters, output 1000)" in printed
    assert main(["list"]) == 0
    assert "resnet152_v1" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_source_backends_write_the_given_weights_beside_the_source(backend: str, tmp_path: Path) -> None:
    """--weights works for every backend: a source backend checks them strictly and writes them as
    OUTPUT.safetensors in its own layout, which the generated module loads."""
    from safetensors.numpy import load_file

    from rescompile.backends import flax_backend, torch_backend
    from rescompile.compiler.weights import random_weights, save_weights

    graph = compile_spec("resnet20")
    weights = random_weights(graph, seed=7)
    save_weights(weights, tmp_path / "w.safetensors")
    output = tmp_path / "model.py"
    assert (
        main(["resnet20", "--backend", backend, "--weights", str(tmp_path / "w.safetensors"), "-o", str(output)]) == 0
    )
    written = load_file(str(tmp_path / "model.safetensors"))
    if backend == "torch":
        assert written.keys() == weights.keys()
        model = torch_backend.build_module(graph)
        torch_backend.load_weights(model, graph, written)
        assert all((torch_backend.to_weights(model, graph)[name] == weights[name]).all() for name in weights)
    else:
        assert written["layer1/0/conv1/kernel"].shape == (3, 3, 16, 16)  # HWIO
        expected = flax_backend.flax_layout(graph, weights)
        assert written.keys() == expected.keys() and all((written[key] == expected[key]).all() for key in expected)
    wrong = random_weights(compile_spec("resnet32"), seed=7)
    save_weights(wrong, tmp_path / "wrong.safetensors")
    arguments = ["resnet20", "--backend", backend, "--weights", str(tmp_path / "wrong.safetensors")]
    assert main([*arguments, "-o", str(tmp_path / "other.py")]) == 1
    assert not (tmp_path / "other.py").exists() and not (tmp_path / "other.safetensors").exists()


def test_validate_cost_and_list_never_import_a_framework(tmp_path: Path) -> None:
    script = (
        "import sys\nfrom rescompile.cli import main\n"
        "assert main(['validate', 'resnet50']) == 0 and main(['cost', 'resnet50', '--by', 'block']) == 0\n"
        "assert main(['list']) == 0\n"
        "loaded = {'torch', 'jax', 'flax', 'onnx', 'onnxruntime'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True)


def test_an_error_shows_its_source_line_and_a_caret_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """RESCOMPILE_EXCERPT=1 stands for a terminal: the one line, then the line it points at."""
    (tmp_path / "spec.yaml").write_text(BAD_SPEC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESCOMPILE_EXCERPT", "1")
    assert main(["validate", "spec.yaml"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("spec.yaml:4:8: unknown block 'basik' (did you mean 'basic'?)")
    assert lines[1:] == ["  |", "4 | block: basik", "  |        ^^^^^"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            ["spec.yaml", "--backend", "torch", "-o", "out.py"],
            "spec.yaml:4:8: unknown block 'basik' (did you mean 'basic'?)",
        ),
        (["validate", "spec.yaml"], "spec.yaml:4:8: unknown block 'basik'"),
        (["missing.yaml", "-o", "out.py"], "missing.yaml:1:1: no such file: missing.yaml"),
        (["resnet20", "--backend", "torch", "-o", "no/such/folder/out.py"], "cannot write no/such/folder/out.py"),
        (["resnet20", "-o", "spec.yaml/out.py"], "cannot write spec.yaml/out.py: Not a directory"),
        (["resnet20", "-o", "newdir/"], "-o newdir/: no such folder; create it first"),
        (["resnet20", "-o", "m.onnx"], "-o m.onnx: --backend torch writes Python source; name a file ending in .py"),
        (
            ["resnet20", "--backend", "onnx", "-o", "m.py"],
            "-o m.py: --backend onnx writes an ONNX model; name a file ending in .onnx",
        ),
        (["draw", "resnet20", "-o", "net.pdf"], "-o net.pdf: draw writes an SVG picture (or PNG); name a file ending"),
        (["draw", "resnet20", "-o", "."], "-o .: is a folder; name the file to write, such as out.svg"),
        (
            ["weights", "convert", "spec.yaml", "--spec", "resnet20", "-o", "w.pth"],
            "-o w.pth: weights convert writes safetensors; name a file ending in .safetensors",
        ),
        (["resnet20", "--backend", "torch", "--opset", "18", "-o", "out.py"], "--opset applies to --backend onnx only"),
        (
            ["resnet20", "--backend", "flax", "--zero-init-residual", "-o", "out.py"],
            "--fold-bn and --zero-init-residual apply to --backend onnx only",
        ),
        (
            ["resnet20", "--backend", "onnx", "--inference", "-o", "out.py"],
            "--inference applies to --backend torch only",
        ),
        (
            ["resnet20", "--backend", "torch", "--fixed-size", "-o", "out.py"],
            "--fixed-size applies to --backend onnx only",
        ),
        (["resnet20", "--backend", "onnx", "--opset", "7", "-o", "out.onnx"], "opset 7"),
        (
            ["resnet20", "--backend", "onnx", "--weights", "spec.yaml", "-o", "out.onnx"],
            "cannot read weights from spec.yaml",
        ),
    ],
)
def test_errors_are_one_line_with_status_1_and_leave_the_output_untouched(
    arguments: list[str], expected: str, tmp_path: Path
) -> None:
    (tmp_path / "spec.yaml").write_text(BAD_SPEC)
    (tmp_path / "out.py").write_text("precious\n")
    result = run_cli(*arguments, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out.py").read_text() == "precious\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.py", "spec.yaml"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            ["resnet20", "--backend", "caffe"],
            "rescompile: argument --backend: invalid choice: 'caffe' (choose from 'torch', 'flax', 'onnx'); "
            "see 'rescompile --help'",
        ),
        ([], "rescompile: the following arguments are required: spec; see 'rescompile --help'"),
        (["cost", "resnet20", "--by", "x"], "rescompile cost: argument --by: invalid choice: 'x'"),
        (["validate"], "rescompile validate: the following arguments are required: specs"),
        (["weights", "convert", "a.pth"], "rescompile weights: the following arguments are required: --spec, -o"),
        (["bench", "resnet20", "--rounds", "x"], "rescompile bench: argument --rounds: invalid int value: 'x'"),
        (["list", "--bogus"], "rescompile list: unrecognized arguments: --bogus; see 'rescompile list --help'"),
    ],
)
def test_usage_errors_are_one_line_with_status_1_pointing_at_help(
    arguments: list[str], expected: str, tmp_path: Path
) -> None:
    result = run_cli(*arguments, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(expected), result.stderr
    assert "help'" in result.stderr and "usage:" not in result.stderr


def test_help_works(tmp_path: Path) -> None:
    for arguments in (["--help"], ["validate", "--help"], ["cost", "--help"], ["list", "--help"]):
        result = run_cli(*arguments, cwd=tmp_path)
        assert result.returncode == 0 and "usage: rescompile" in result.stdout, arguments


@pytest.mark.parametrize("name", ["validate", "cost", "list", "schema", "weights", "draw"])
def test_each_subcommand_is_described_in_whole_sentences(name: str) -> None:
    # A description split over two string statements loses its second half silently.
    description = cli._subcommand_parser(name).description
    assert description is not None and description.endswith("."), description


GOOD_SPEC = BAD_SPEC.replace("basik", "basic")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("net.yaml", "cannot write net.yaml: it is an input of this compile (net.yaml)"),
        ("./blocks/../net.yaml", "cannot write blocks/../net.yaml: it is an input of this compile (net.yaml)"),
        ("blocks/basic.yaml", "cannot write blocks/basic.yaml: it is an input of this compile (blocks/basic.yaml)"),
        ("stdout", "cannot write stdout: it is a symbolic link; rescompile writes only regular files"),
        ("/dev/null", "cannot write /dev/null: it is a character device; rescompile writes only regular files"),
    ],
)
def test_outputs_are_regular_files_and_never_an_input(
    output: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.yaml").write_text(GOOD_SPEC)
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "basic.yaml").write_text((ROOT / "architectures" / "blocks" / "basic.yaml").read_text())
    (tmp_path / "stdout").symlink_to("/proc/self/fd/1")
    before = {path: path.read_bytes() for path in (tmp_path / "net.yaml", tmp_path / "blocks" / "basic.yaml")}
    assert main(["net.yaml", "--backend", "onnx", "-o", output]) == 1
    assert capsys.readouterr().err == expected + "\n"
    assert {path: path.read_bytes() for path in before} == before
    assert (tmp_path / "stdout").is_symlink()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blocks", "net.yaml", "stdout"]


def test_the_default_output_stays_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default output is NAME.onnx or NAME_BACKEND.py, and a name cannot hold a path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.yaml").write_text(GOOD_SPEC.replace("name: bad", "name: ../escaped"))
    assert main(["net.yaml", "--backend", "onnx"]) == 1
    assert capsys.readouterr().err == (
        "net.yaml:1:7: name: a name starts with a letter and has at most 64 letters, digits, '_' or '-' "
        "(got '../escaped')\n"
    )
    assert sorted(path.name for path in tmp_path.parent.iterdir() if "escaped" in path.name) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["resnet20", "--size", "20000"], "argument --size: a size is at most 16,384, got '20000'"),
        (["cost", "resnet20", "--size", "32x16385"], "argument --size: a size is at most 16,384, got '32x16385'"),
        (
            ["resnet20", "--backend", "onnx", "--seed", "-1"],
            "argument --seed: expected a seed from 0 to 4294967295, got '-1'",
        ),
    ],
)
def test_option_values_out_of_range_are_usage_errors(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(arguments) == 1
    assert capsys.readouterr().err.count(f": {message}; see '") == 1


@pytest.mark.parametrize(
    "arguments",
    [["cost", "resnet1202", "--by", "node"], ["list"], ["schema"], ["validate", *["resnet20"] * 40]],
)
def test_a_closed_pipe_ends_a_printing_command_quietly(arguments: list[str], tmp_path: Path) -> None:
    """`rescompile cost resnet1202 --by node | head -1` was a BrokenPipeError traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rescompile", *arguments],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `head -1` does once it has its line; here before any, so every write fails
    stderr = process.stderr.read()
    assert process.wait() == 141 and stderr == ""  # 128 + SIGPIPE, as a shell reports a tool SIGPIPE ended


@pytest.mark.parametrize("backend", ["torch", "flax", "onnx"])
def test_a_negative_running_var_is_refused_by_every_backend_by_key(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ONNX accepted it and computed NaN."""
    from rescompile.compiler.weights import random_weights, save_weights

    monkeypatch.chdir(tmp_path)
    weights = random_weights(compile_spec("resnet20"))
    weights["layer2.1.bn2.running_var"][3] = -0.5
    save_weights(weights, tmp_path / "w.safetensors")
    assert main(["resnet20", "--backend", backend, "--weights", "w.safetensors"]) == 1
    assert capsys.readouterr().err == (
        "weights do not fit resnet20: layer2.1.bn2.running_var holds a negative variance (-0.5); "
        "a BatchNorm's running_var is at least 0\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["w.safetensors"]


@pytest.mark.parametrize("command", [["resnet20", "--backend", "onnx"], ["check", "resnet20"]])
def test_a_fifo_as_weights_is_refused_at_once(command: list[str], tmp_path: Path) -> None:
    """It blocked for ever, waiting for a writer."""
    os.mkfifo(tmp_path / "w.safetensors")
    result = subprocess.run(
        [sys.executable, "-m", "rescompile", *command, "--weights", "w.safetensors"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr == "cannot read w.safetensors: it is a FIFO, not a weights file\n"


@pytest.mark.parametrize("output", ["out", "out/", "./out//"])
def test_a_folder_as_output_takes_the_default_name(
    output: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-o newdir/` wrote a file named newdir."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    assert main(["resnet20", "--backend", "onnx", "-o", output]) == 0
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["resnet20.onnx"]
    assert "wrote out/resnet20.onnx" in capsys.readouterr().out


def test_draw_writes_png_by_rendering_the_svg(tmp_path: Path) -> None:
    assert main(["draw", "resnet20", "-o", str(tmp_path / "net.png")]) == 0
    assert (tmp_path / "net.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_draw_refuses_png_in_one_line_without_pymupdf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pymupdf", None)  # import pymupdf now raises ModuleNotFoundError
    assert main(["draw", "resnet20", "-o", str(tmp_path / "net.png")]) == 1
    assert capsys.readouterr().err == (
        "-o: writing PNG needs pymupdf (pip install pymupdf); or write .svg, which any browser shows\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_list_parts_names_every_builtin_part_of_every_kind_with_its_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rescompile.spec.loader import PART_MODELS, builtin_directory

    assert main(["list", "--parts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    headers = [line.split(" (")[0] for line in lines if not line.startswith("  ")]
    assert headers == list(PART_MODELS) == ["blocks", "stems", "heads", "shortcuts", "transitions", "modules"]
    listed = {line.split()[0] for line in lines if line.startswith("  ")}
    on_disk = {path.stem for kind in PART_MODELS for path in (builtin_directory() / kind).glob("*.yaml")}
    assert listed == on_disk | {"A", "B", "C"}
    assert "  bottleneck" in "\n".join(lines) and all(len(line.split(maxsplit=1)) == 2 for line in lines)
    assert any(
        line.split() == ["basic", "Two", "3×3", "convolutions;", "the", "first", "one", "carries", "the", "stride."]
        for line in lines
    )


def test_dev_keeps_the_callers_working_directory(tmp_path: Path) -> None:
    """./dev changed into the repository, so `../main/dev rescompile ./x.yaml` from another folder
    found no x.yaml (and would have written its output into the repository)."""
    stamp = ROOT / ".venv" / ".rescompile-setup"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes())
    if not stamp.is_file() or stamp.read_text().strip() != wanted.hexdigest():
        pytest.skip("./dev would set up .venv first")
    (tmp_path / "x.yaml").write_text(GOOD_SPEC.replace("name: bad", "name: x"))
    result = subprocess.run(
        [str(ROOT / "dev"), "rescompile", "draw", "./x.yaml", "-o", "x.svg"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.svg").read_text().startswith("<svg")
    assert not (ROOT / "x.svg").exists()


TOKENS = [
    *("validate", "cost", "list", "check", "schema", "weights", "draw", "bench", "convert"),
    *("--by", "--size", "--backend", "--batch", "-o", "--weights", "--train-steps", "--backends", "--kind"),
    *("--parts", "--spec", "--rounds", "node", "onnx", "torch,flax", "0", "-1", "2x", "1e9", "missing", "x.py"),
]


@given(arguments=st.lists(st.sampled_from(TOKENS), max_size=5))
def test_any_command_line_ends_in_status_0_or_one_line_and_status_1(
    arguments: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The class: argparse's usage text with exit status 2 was the odd one out."""
    stderr = io.StringIO()
    folder = tmp_path_factory.mktemp("cwd")
    previous = Path.cwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            status = main(arguments)
    finally:
        os.chdir(previous)
    assert status in (0, 1), (arguments, status)
    if status == 1:
        assert stderr.getvalue().count("\n") == 1 and "Traceback" not in stderr.getvalue(), stderr.getvalue()


def test_an_allocation_no_bound_caught_is_still_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def allocate(arguments: list[str]) -> int:
        raise MemoryError("Unable to allocate 1.00 PiB for an array with shape (2**48,) and data type float32")

    monkeypatch.setitem(cli.COMMANDS, "cost", allocate)
    assert main(["cost", "resnet20"]) == 1
    assert capsys.readouterr().err == (
        "rescompile: out of memory: Unable to allocate 1.00 PiB for an array with shape (2**48,) and data type "
        "float32\n"
    )
