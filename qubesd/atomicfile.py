"""Replacing a file so that a crash leaves either the old or the new bytes, never a mix."""

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_file(path: Path, data: bytes, mode: int,
                 before_rename: Callable[[str], None] | None = None) -> None:
    """Write a temporary file beside ``path``, fsync it, rename it over ``path``, fsync
    the directory. ``before_rename`` (tests) runs with the temporary path just before the
    rename; whatever it raises leaves ``path`` untouched and the temporary file removed."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}~", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
