"""write_atomically: content from chunks produced one at a time, and nothing left behind on failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rescompile.compiler.files import write_atomically
from rescompile.spec import RescompileError


def test_each_chunk_is_written_before_the_next_is_produced(tmp_path: Path) -> None:
    """A producer may hand out views of one buffer it overwrites for every chunk."""
    buffer = bytearray(3)

    def chunks() -> Iterator[memoryview]:
        for letter in b"abc":
            buffer[:] = bytes([letter]) * 3
            yield memoryview(buffer)

    write_atomically([(tmp_path / "out", chunks())])
    assert (tmp_path / "out").read_bytes() == b"aaabbbccc"


def test_a_failing_producer_leaves_no_file_and_the_old_one_intact(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"before")

    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(RescompileError, match=r"cannot write .*out: No space left on device"):
        write_atomically([(target, chunks())])
    assert target.read_bytes() == b"before"
    assert list(tmp_path.iterdir()) == [target]
