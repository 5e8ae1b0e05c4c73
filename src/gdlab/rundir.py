"""Run directories: one user at a time, never a run written over another, no leftovers.

- `lock(run_dir)` takes an exclusive `fcntl.flock` on `run_dir/.gdlab.lock` for as long as
  this command uses the directory. The OS drops the lock when the process ends, however it
  ends (SIGKILL included), so a lock is never stale; the file itself is removed on release
  and only names the holder (pid, host, command, start) for the one line a second user gets.
- `refuse_other_run(run_dir)`: a new run does not write into a directory holding another run.
- `note_dir(path)` / `remove_leftovers()`: a directory this command created (or found
  empty) that holds nothing but Hydra's scaffolding when the command ends (a refused input)
  is put back as it was: removed, with the parents it created, or emptied again.
- `hydra_quote(path)`, `resume_command(run_dir)`: a path as an override value for Hydra's
  grammar, and the resume command quoted for the shell and for Hydra, ready to paste.

Light on purpose (no torch): `gdlab.config`'s resolvers call it while Hydra composes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from gdlab.errors import GdlabError

LOCK_NAME = ".gdlab.lock"
#: what shows that a directory holds a run (besides TensorBoard event files)
RUN_FILES = ("checkpoint.pt", "metrics.json", "population.json", ".hydra/config.yaml")
#: what Hydra writes into a run directory before gdlab's app starts (and a sweep's
#: multirun.yaml, the lock, the job's *.log): a directory holding only these holds no run
SCAFFOLDING = {".hydra": ("config.yaml", "hydra.yaml", "overrides.yaml")}
FILES_WRITTEN = (LOCK_NAME, "multirun.yaml")

#: the locks this process holds: real path of the run directory -> file descriptor
_held: dict[str, int] = {}
#: directories this command may have created: absolute path -> (the highest directory
#: created with it, or None when it existed; whether it was empty before)
_noted: dict[str, tuple[Path | None, bool]] = {}


# ----------------------------------------------------------------------------- the lock


def lock(run_dir: str | os.PathLike[str]) -> bool:
    """Lock `run_dir` for this process; True when newly taken, False when already held here.

    Raises GdlabError (one line naming the holder) when another process holds it. Where no
    lock can be taken (a read-only place, a file system without locks) the run goes on
    without one: what it writes there reports its own trouble.
    """
    key = os.path.realpath(run_dir)
    if key in _held:
        return False
    try:
        import fcntl
    except ImportError:  # not POSIX
        return False
    path = os.path.join(key, LOCK_NAME)
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise GdlabError(in_use_message(run_dir, holder)) from None
        except OSError:  # ENOLCK, EOPNOTSUPP: no locks here
            os.close(fd)
            return False
        # The holder removes the file when it lets go: if it did so between our open and our
        # flock, we hold a lock on a file nobody else will open. Take the one now there.
        try:
            current, ours = os.stat(path), os.fstat(fd)
            same = (current.st_dev, current.st_ino) == (ours.st_dev, ours.st_ino)
        except OSError:
            same = False
        if same:
            _write_holder(fd)
            _held[key] = fd
            return True
        os.close(fd)
    return False


def release(run_dir: str | os.PathLike[str]) -> None:
    """Let go of the lock on `run_dir` (and remove its file), if this process holds it."""
    key = os.path.realpath(run_dir)
    fd = _held.pop(key, None)
    if fd is None:
        return
    try:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(key, LOCK_NAME))
    finally:
        os.close(fd)  # closing the descriptor drops the flock


def release_all() -> None:
    for key in list(_held):
        release(key)


def holder_info() -> dict[str, Any]:
    command = shlex.join(["gdlab", *sys.argv[1:]])
    if len(command) > 200:
        command = command[:199] + "…"
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _write_holder(fd: int) -> None:
    data = (json.dumps(holder_info()) + "\n").encode("utf-8")
    with contextlib.suppress(OSError):  # a full disk: the lock holds without the note
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def in_use_message(run_dir: str | os.PathLike[str], holder: dict[str, Any]) -> str:
    who = []
    if holder.get("pid") is not None:
        who.append(f"pid {holder['pid']}")
    if holder.get("host"):
        who.append(f"on {holder['host']}")
    if holder.get("since"):
        who.append(f"since {holder['since']}")
    command = f", running: {holder['command']}" if holder.get("command") else ""
    by = f" ({' '.join(who)}{command})" if who or command else ""
    stop = f"kill -INT {holder['pid']}" if holder.get("pid") is not None else "Ctrl-C"
    return (
        f"{run_dir} is in use by another gdlab process{by}; wait until it ends, "
        f"or stop it ({stop}) and resume it then"
    )


# ----------------------------------------------------------------------------- new runs


def run_markers(run_dir: Path) -> list[str]:
    """The files that show `run_dir` holds a run (empty when it holds none)."""
    found = [name for name in RUN_FILES if (run_dir / name).is_file()]
    if any(run_dir.glob("events.out.tfevents.*")):
        found.append("TensorBoard events")
    return found


def refuse_other_run(run_dir: str | os.PathLike[str]) -> None:
    """A new run never writes into a directory that holds another run."""
    path = Path(run_dir)
    found = run_markers(path)
    if found:
        for log_file in path.glob("*.log"):  # opened by Hydra's logging a moment ago
            if log_file.is_file() and log_file.stat().st_size == 0:
                log_file.unlink()
        raise GdlabError(
            f"{path} holds another run ({', '.join(found)}); a new run would overwrite it: "
            "choose another hydra.run.dir (or leave it out for a fresh one), or, if that run "
            f"was interrupted, continue it with {resume_command(path)}"
        )


# ----------------------------------------------------------------------------- leftovers


def note_dir(path: str | os.PathLike[str]) -> None:
    """Remember whether `path` exists now, before this command may create it."""
    target = Path(os.path.abspath(path))
    if str(target) in _noted:
        return
    if target.exists():
        empty = target.is_dir() and not any(target.iterdir())
        _noted[str(target)] = (None, empty)
        return
    top = target
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    _noted[str(target)] = (top, True)


def forget_dirs() -> None:
    _noted.clear()


def remove_leftovers() -> None:
    """Put back the noted directories that hold nothing but Hydra's scaffolding (a refused
    command): remove what Hydra wrote, then the directory and the parents made with it."""
    for key, (top, was_empty) in list(_noted.items()):
        path = Path(key)
        if was_empty and path.is_dir() and _only_scaffolding(path):
            _remove_scaffolding(path)
            if top is not None:
                _remove_empty_up_to(path, top)
    _noted.clear()


def _only_scaffolding(path: Path) -> bool:
    for entry in path.iterdir():
        if entry.name in SCAFFOLDING and entry.is_dir() and not entry.is_symlink():
            if any(f.name not in SCAFFOLDING[entry.name] for f in entry.iterdir()):
                return False
        elif not (entry.is_file() and (entry.suffix == ".log" or entry.name in FILES_WRITTEN)):
            return False
    return True


def _remove_scaffolding(path: Path) -> None:
    with contextlib.suppress(OSError):
        for entry in path.iterdir():
            if entry.is_dir():
                for file in entry.iterdir():
                    file.unlink()
                entry.rmdir()
            else:
                entry.unlink()


def _remove_empty_up_to(path: Path, top: Path) -> None:
    while True:
        try:
            path.rmdir()
        except OSError:
            return
        if path == top or path.parent == path:
            return
        path = path.parent


# ----------------------------------------------------------------------------- quoting

#: a value Hydra's override grammar reads as this very string, and the shell leaves alone
_PLAIN = re.compile(r"[A-Za-z0-9_./@%+-]*/[A-Za-z0-9_./@%+-]*")


def hydra_quote(path: str | os.PathLike[str]) -> str:
    """`path` as an override value that Hydra's parser reads back as exactly this string.

    A path of plain characters with a `/` stays as it is; any other is quoted for Hydra's
    grammar (`=`, `,`, `[`, quotes, spaces...): in double quotes when it holds none, else in
    single quotes, escaping the quote and the backslashes before it, and `${` (which
    OmegaConf would take for an interpolation).
    """
    text = os.fspath(path)
    if _PLAIN.fullmatch(text):
        return text
    quote = '"' if '"' not in text else "'"
    # backslashes are literal in a quoted value except right before a quote or at its end

    def escape(match: re.Match[str]) -> str:
        backslashes, end = match.groups()
        return backslashes * 2 + ("\\" + end if end else "")

    body = re.sub(rf"(\\*)({quote}|$)", escape, text)
    body = body.replace("${", "\\${")
    return f"{quote}{body}{quote}"


def resume_override(run_dir: str | os.PathLike[str]) -> str:
    """`trainer.resume=<run_dir>` as one override that Hydra parses."""
    return f"trainer.resume={hydra_quote(run_dir)}"


def resume_command(run_dir: str | os.PathLike[str]) -> str:
    """The command that continues the run in `run_dir`, quoted to paste into a shell."""
    return f"gdlab {shlex.quote(resume_override(run_dir))}"
