"""Writing output files so that a failure never leaves a partial file nor damages an existing one.

Outputs are only ever regular files: a path that names a symbolic link, a device, a FIFO or a
socket is refused rather than replaced (``-o /dev/stdout`` would otherwise swap the link for a
file), and so is a path that is one of the compile's own inputs.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from rescompile.spec.errors import RescompileError

# The kinds of file an output may not be, worded for "cannot write PATH: it is ...".
_SPECIAL_FILES = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def check_output(path: Path, inputs: Collection[Path] = ()) -> None:
    """Refuse ``path`` as an output unless it is absent or a regular file that is not one of
    ``inputs`` (compared as files, so another spelling or a hard link of an input is refused too)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise RescompileError(f"cannot write {path}: {error.strerror or error}") from None
    if stat.S_ISDIR(mode):
        raise RescompileError(f"cannot write {path}: Is a directory")  # the OS wording, as below
    for test, kind in _SPECIAL_FILES:
        if test(mode):
            raise RescompileError(f"cannot write {path}: it is {kind}; rescompile writes only regular files")
    for source in inputs:
        if source.exists() and os.path.samefile(path, source):
            raise RescompileError(f"cannot write {path}: it is an input of this compile ({source})")


def write_atomically(files: Sequence[tuple[Path, Iterable[bytes | memoryview]]]) -> None:
    """Write each file (its content given as chunks: bytes, or views of other buffers) to a
    temporary beside it, then rename them all into place. Each chunk is written before the next is
    asked for, so a producer may reuse one buffer for all of them.

    A failure before the renames (a missing folder, a full disk, Ctrl-C, SIGTERM) leaves no
    partial file, no temporary and every existing file as it was. os.open with 0o666 gives the
    files the permissions the umask would give any new file.
    """
    for path, _ in files:
        check_output(path)
    temporaries: list[tuple[Path, Path]] = []
    path = files[0][0]
    try:
        with _terminate_as_exception():
            for path, chunks in files:
                temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
                # Listed before it exists, so that an interrupt between the two still removes it.
                temporaries.append((temporary, path))
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                with os.fdopen(descriptor, "wb") as handle:
                    for chunk in chunks:
                        handle.write(chunk)
            for temporary, path in temporaries:
                os.replace(temporary, path)
    except BaseException as error:
        for temporary, _ in temporaries:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise RescompileError(f"cannot write {path}: {error.strerror or error}") from None
        raise


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived during a write: raised so that the write removes its temporaries;
    it exits with the status a shell reports for that signal (128 + its number)."""


TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""The signals whose default action ends the process and which a write turns into :class:`Terminated`
(SIGINT already raises KeyboardInterrupt; SIGKILL cannot be caught)."""


@contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """Within the block, each of :data:`TERMINATING_SIGNALS` raises :class:`Terminated` instead of
    killing the process outright. Only the main thread may set handlers, and a handler someone else
    installed (or an ignored signal: ``nohup``) is theirs: those stay as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Terminated(128 + signum)

    handled = [number for number in TERMINATING_SIGNALS if signal.getsignal(number) == signal.SIG_DFL]
    previous = {number: signal.signal(number, terminate) for number in handled}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
