"""Write a file so that readers see the old one or the new one, never half of one.

Temporary file in the same directory, fsync, rename over the target, fsync the directory:
the pattern behind metrics.json, checkpoint.pt and the plots, so a crash or a full disk at any
moment leaves no torn result that looks whole. Where the write fails, the temporary file is
removed, the previous file (the last good checkpoint) is left as it was, and the error raised
is an `OSError` naming the file it was for; a full disk is `DiskFull`, a user-facing error of
one line that names the directory and says whether its last checkpoint is kept.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from gdlab.errors import GdlabError, causes

#: the errors of a file system that takes no more data: no space left, or over the quota
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: a run's checkpoint and result (gdlab.checkpoint.CHECKPOINT_NAME, gdlab.results.METRICS_JSON;
#: those modules load torch or import this one)
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL


def disk_full_message(directory: Path, reason: str | None = None) -> str:
    """`the disk is full: cannot write DIR (No space left on device)`, and, for a run that has
    not recorded its end (no metrics.json), that its last checkpoint is kept: a write that
    fails leaves the previous file as it was."""
    kept = ""
    directory = Path(directory)
    if (directory / CHECKPOINT_FILE).is_file() and not (directory / METRICS_FILE).is_file():
        kept = "; its last checkpoint is kept, to resume from once there is space"
    return f"the disk is full: cannot write {directory} ({reason or 'no space left'}){kept}"


def run_directory_of(path: Path) -> Path:
    """The directory a file of a run belongs to (a file in `.hydra/` belongs to its parent)."""
    parent = Path(path).parent
    return parent.parent if parent.name == ".hydra" else parent


class DiskFull(GdlabError):
    """A write that found the disk full (or the quota used up): one line for the user, naming
    the directory, as every GdlabError is reported (exit code 2). `errno`, `strerror` and
    `filename` are those of the OSError behind it (its `__cause__`)."""

    def __init__(self, path: Path, err: OSError) -> None:
        self.filename = str(path)
        self.errno = err.errno
        self.strerror = err.strerror
        self.directory = run_directory_of(Path(path))
        super().__init__(disk_full_message(self.directory, err.strerror))

    def __reduce__(self) -> tuple[Any, ...]:  # the same line after a trip to a joblib worker
        return (_disk_full, (str(self), self.filename, self.errno, self.strerror))


def _disk_full(message: str, filename: str, number: int, strerror: str) -> DiskFull:
    error = DiskFull(Path(filename), OSError(number, strerror))
    error.args = (message,)
    return error


def os_error_in(err: BaseException) -> OSError | None:
    """`err` itself or the first OSError among its causes and contexts (torch.save reports a
    full disk as a RuntimeError raised while handling the OSError), or None."""
    return next((cause for cause in causes(err) if isinstance(cause, OSError)), None)


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(handle)` on a temporary file, then move it to `path` atomically.

    On failure the temporary file is removed and `path` is untouched; a full disk is raised as
    `DiskFull`, another OSError behind the failure as an OSError whose `filename` is `path`."""
    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be read
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)
        found = os_error_in(err) if isinstance(err, Exception) else None
        if found is not None and found.errno in DISK_FULL:
            raise DiskFull(path, found) from err
        if found is err:
            assert isinstance(err, OSError)
            if err.filename is None or err.filename == tmp:
                err.filename = str(path)
            raise
        if found is not None:  # e.g. torch.save's RuntimeError over the OSError of a full disk
            raise OSError(found.errno, found.strerror, str(path)) from err
        raise
    fsync_directory(path.parent)
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """`data` as the whole of `path`, written atomically (a plot's PNG)."""
    return write_atomic(path, lambda handle: handle.write(data))


def fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); harmless where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename is done
        pass
    finally:
        os.close(fd)
