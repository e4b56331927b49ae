"""A bounded, seeded mutation-fuzzing run of the spec front end: no defects (see run.py)."""

import time
from pathlib import Path

import pytest

from rescompile.spec import RescompileError, builtin_directory

from . import run as fuzz

INPUTS = 200
HUNG = "hang: over 0.2 s of CPU time or 0.2 s on the wall"


def test_mutated_specs_give_a_located_line_or_a_graph() -> None:
    defects: list[str] = []
    started = time.perf_counter()
    counts = fuzz.run(INPUTS, seed=0, report=lambda line: defects.append(line) if "defect" in line else None)
    assert defects == []
    assert counts["defect"] == 0
    # Both ordinary outcomes occur: the mutations neither all break nor all miss the specs.
    assert counts["located"] > INPUTS // 4 and counts["accepted"] > 0, counts
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize(
    ("failure", "detail"),
    [
        (ValueError("Exceeds the limit (4300 digits)"), "ValueError: Exceeds the limit (4300 digits)"),
        (RecursionError("maximum recursion depth exceeded"), "RecursionError: maximum recursion depth exceeded"),
        (
            RescompileError('malformed YAML: bad\n  in "<unicode string>", position 4'),
            "message not 'file:LINE:COL: one line': 'malformed YAML: bad\\\\n  in \"<unicode string>\", position 4'",
        ),
        (RescompileError("no location"), "message not 'file:LINE:COL: one line': 'no location'"),
    ],
)
def test_the_harness_classifies_failures_as_defects(
    failure: BaseException, detail: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def compile_spec(path: Path) -> None:
        raise failure

    monkeypatch.setattr(fuzz, "compile_spec", compile_spec)
    assert fuzz.validate(builtin_directory() / "resnet20.yaml") == fuzz.Outcome("defect", detail)


def test_the_harness_classifies_a_hang_and_a_located_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(path: Path) -> None:
        started = time.process_time()
        while time.process_time() - started < 5:  # the deadline counts CPU time, not the wall's
            pass

    monkeypatch.setattr(fuzz, "HANG_SECONDS", 0.2)
    monkeypatch.setattr(fuzz, "WALL_SECONDS", 0.2)
    monkeypatch.setattr(fuzz, "compile_spec", slow)
    assert fuzz.validate(builtin_directory() / "resnet20.yaml") == fuzz.Outcome("defect", HUNG)
    monkeypatch.setattr(fuzz, "compile_spec", lambda path: time.sleep(5))  # blocked, using no CPU
    assert fuzz.validate(builtin_directory() / "resnet20.yaml") == fuzz.Outcome("defect", HUNG)
    monkeypatch.undo()
    assert fuzz.validate(builtin_directory() / "resnet20.yaml") == fuzz.Outcome("accepted", "")
    assert fuzz.validate(builtin_directory() / "nothere.yaml").kind == "located"
