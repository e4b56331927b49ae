"""Writing output files so that a failure never leaves a partial file nor damages an existing one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from rescompile.spec.errors import RescompileError


def write_atomically(files: Sequence[tuple[Path, Iterable[bytes | memoryview]]]) -> None:
    """Write each file (its content given as chunks: bytes, or views of other buffers) to a
    temporary beside it, then rename them all into place. Each chunk is written before the next is
    asked for, so a producer may reuse one buffer for all of them.

    A failure before the renames (a missing folder, a full disk) leaves no partial file and every
    existing file as it was. os.open with 0o666 gives the files the permissions the umask would
    give any new file.
    """
    for path, _ in files:
        if path.is_dir():
            raise RescompileError(f"cannot write {path}: Is a directory")  # the OS wording, as below
    temporaries: list[tuple[Path, Path]] = []
    path = files[0][0]
    try:
        for path, chunks in files:
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            temporaries.append((temporary, path))
            with os.fdopen(descriptor, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
        for temporary, path in temporaries:
            os.replace(temporary, path)
    except OSError as error:
        for temporary, _ in temporaries:
            temporary.unlink(missing_ok=True)
        raise RescompileError(f"cannot write {path}: {error.strerror or error}") from None
