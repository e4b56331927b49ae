"""``rescompile bench``: smoke runs at tiny sizes. They check that every printed field is there,
parses and is positive, never how fast anything is (timings depend on the machine)."""

from __future__ import annotations

import re

import pytest

from rescompile.bench import peak_tflops
from rescompile.cli import main

TIMED_LINE = re.compile(
    r"^(?P<name>.+?)\s+images/s\s+(?P<images>[\d.]+)\s+ms/batch\s+(?P<ms>[\d.]+) "
    r"\(IQR (?P<low>[\d.]+)-(?P<high>[\d.]+), (?P<rounds>\d+) rounds\)\s+TFLOP/s (?P<tflops>[\d.]+)$"
)
RATIO_LINE = re.compile(r"^ratio (?P<candidate>.+) / (?P<reference>.+): (?P<ratio>[\d.]+) \(images/s\)$")


def timed_lines(printed: str) -> list[dict[str, str]]:
    return [match.groupdict() for line in printed.splitlines() if (match := TIMED_LINE.match(line))]


def assert_positive_fields(timed: dict[str, str], rounds: int) -> None:
    assert int(timed["rounds"]) == rounds
    for field in ("images", "ms", "low", "high", "tflops"):
        assert float(timed[field]) > 0, (field, timed)
    assert float(timed["low"]) <= float(timed["ms"]) <= float(timed["high"])


@pytest.mark.parametrize(
    ("arguments", "names"),
    [
        (["resnet18", "--inference"], ["rescompile torch --inference", "torchvision resnet18"]),
        (["resnet18", "--train"], ["rescompile torch", "torchvision resnet18"]),
        (["resnet18", "--backend", "onnx"], ["rescompile onnx", "torch.onnx.export resnet18"]),
        (["resnet20", "--backend", "flax", "--compile"], ["rescompile flax"]),
        pytest.param(
            ["resnet50", "--backend", "flax", "--compile"],
            ["rescompile flax", "hand-written flax resnet50"],
            marks=pytest.mark.slow,  # two ResNet-50s compiled by XLA: ~25 s
        ),
        (["resnet20", "--dtype", "bf16"], ["rescompile torch"]),
    ],
)
def test_bench_prints_positive_rates_and_the_ratio_to_the_reference(
    arguments: list[str], names: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *arguments, "--batch", "2", "--size", "32", "--rounds", "3", "--warmup", "1"]) == 0
    printed = capsys.readouterr().out
    timed = timed_lines(printed)
    assert [line["name"] for line in timed] == names
    for line in timed:
        assert_positive_fields(line, rounds=3)
    ratios = [match for line in printed.splitlines() if (match := RATIO_LINE.match(line))]
    assert len(ratios) == (1 if len(names) == 2 else 0)
    if ratios:
        assert (ratios[0]["candidate"], ratios[0]["reference"]) == tuple(names)
        assert float(ratios[0]["ratio"]) > 0
    if len(names) == 2 and "--train" not in arguments:
        assert re.search(r"^outputs agree: max abs difference [\d.e+-]+$", printed, re.MULTILINE)
    assert "FLOPs: 2 per MAC of the cost pass" in printed


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["resnet20", "--device", "cuda"], "--device cuda: torch sees no CUDA GPU here; use --device cpu"),
        (["resnet20", "--dtype", "fp16"], "--dtype fp16 needs --device cuda"),
        (["resnet20", "--inference", "--train"], "--inference lowers a model for evaluation"),
        (["resnet20", "--backend", "onnx", "--train"], "--train applies to --backend torch and flax, not onnx"),
        (["resnet20", "--backend", "flax", "--inference"], "--inference applies to --backend torch and onnx, not flax"),
        (["resnet20", "--rounds", "0"], "--batch and --rounds must be at least 1"),
        (["resnet2O"], "resnet2O"),
        (
            ["resnet20", "--batch", "100000000"],
            "--batch 100000000 needs 66,983,400,000,000 activation values per backend, over the limit of "
            "34,359,738,368 (128 GiB in fp32)",
        ),
        (["resnet50", "--size", "16384"], "--batch 8 needs 1,607,391,551,296 activation values per backend"),
    ],
)
def test_bench_errors_are_one_line(arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *arguments]) == 1
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1


def test_peak_table_knows_the_h100_and_not_a_cpu() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("cpu (2 threads)", "fp32") is None
