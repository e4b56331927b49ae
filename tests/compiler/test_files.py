"""write_atomically: content from chunks produced one at a time, nothing left behind on failure or
interrupt, and only regular files that are not inputs ever replaced."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rescompile.compiler.files import check_output, write_atomically
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


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda path: path.symlink_to("/proc/self/fd/1"), "a symbolic link"),
        (lambda path: path.symlink_to(path.with_name("elsewhere")), "a symbolic link"),
        (os.mkfifo, "a FIFO"),
    ],
)
def test_only_regular_files_are_replaced(make: Callable[[Path], None], kind: str, tmp_path: Path) -> None:
    target = tmp_path / "out"
    make(target)
    with pytest.raises(RescompileError) as raised:
        write_atomically([(target, [b"generated"])])
    assert str(raised.value) == f"cannot write {target}: it is {kind}; rescompile writes only regular files"
    assert target.is_symlink() or stat.S_ISFIFO(target.lstat().st_mode)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_a_character_device_is_refused() -> None:
    with pytest.raises(RescompileError) as raised:
        write_atomically([(Path("/dev/null"), [b"generated"])])
    assert str(raised.value) == "cannot write /dev/null: it is a character device; rescompile writes only regular files"
    assert stat.S_ISCHR(Path("/dev/null").lstat().st_mode)


def test_an_input_is_never_an_output_under_any_spelling(tmp_path: Path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text("precious\n")
    (tmp_path / "hard.yaml").hardlink_to(spec)
    for spelling in (spec, tmp_path / "." / "net.yaml", tmp_path / "hard.yaml"):
        with pytest.raises(RescompileError) as raised:
            check_output(spelling, [spec])
        assert str(raised.value) == f"cannot write {spelling}: it is an input of this compile ({spec})"
    check_output(tmp_path / "other.py", [spec])  # absent: fine
    assert spec.read_text() == "precious\n"


# A writer that announces its first chunk, then waits to be interrupted.
INTERRUPTED_WRITER = """\
import sys, time
from pathlib import Path
from rescompile.compiler.files import write_atomically

def chunks():
    yield b"partial"
    print("writing", flush=True)
    time.sleep(30)
    yield b"never"

write_atomically([(Path(sys.argv[1]), chunks())])
"""


def _default_interrupt() -> None:
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # as nohup or a background job may not have them
        signal.signal(number, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("signal_number", "status"), [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_an_interrupted_write_leaves_no_temporary_and_the_old_file_intact(
    signal_number: int, status: int, tmp_path: Path
) -> None:
    """SIGINT raises KeyboardInterrupt (uncaught in a bare script, Python then dies of SIGINT; the
    CLI says 'interrupted' with status 130); SIGTERM and SIGHUP (a closed terminal) become exits with
    status 143 and 129. All clean up (SIGHUP left the .partial temporary)."""
    target = tmp_path / "out"
    target.write_bytes(b"before")
    writer = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A job started in the background by a shell without job control inherits SIGINT ignored,
        # and Python then installs no KeyboardInterrupt handler: give the writer the default, as a
        # terminal's foreground process has.
        preexec_fn=_default_interrupt,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == "writing\n"
    assert any(path.name.endswith(".partial") for path in tmp_path.iterdir())
    writer.send_signal(signal_number)
    assert writer.wait(timeout=10) == status
    assert target.read_bytes() == b"before"
    assert list(tmp_path.iterdir()) == [target]
