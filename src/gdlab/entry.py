"""What every gdlab command does around its Hydra app: one-line errors, an exit code, a clean slate.

- A user mistake (a bad override, an unknown option, a missing GPU, a damaged checkpoint)
  that escapes the app is printed as one line, `<prog>: error: ...`, exit code 2. Other
  exceptions are bugs and keep their traceback; HYDRA_FULL_ERROR=1 shows it for all.
- `run_app` returns the exit code and leaves the interpreter as it found it (Hydra's global
  state, the logging configuration Hydra installs, HYDRA_FULL_ERROR, sys.argv), so a command
  can be called from Python again and again. Only the console scripts leave the process.
  With `raise_errors=True` (gdlab's Python API) a user mistake is raised as a GdlabError
  carrying the one-line message instead of being printed.
- They leave with `os._exit` (`exit_quickly`) once their files are closed, their output flushed
  and the atexit handlers have run: tearing down torch's modules at interpreter exit costs about
  0.3 s on this machine, as much again as everything gdlab adds to `import torch`.
- A place that takes no files is one line too (exit code 2): a full disk, `the disk is full:
  cannot write <run directory> (...)`, at the start, in the middle (the event file, a
  checkpoint, gdlab.log) or at the end (the plots), the last good checkpoint kept; a read-only
  run directory or `hydra.run.dir=/proc/self`, `cannot write <directory>: <reason> (<file>)`.
  The run's log file is written by `RunLogHandler` (whole lines; a failed write is reported
  here, not as a "--- Logging error ---" traceback per line).
- `console_streams()` (console scripts and joblib's workers, first thing): a closed stdout or
  stderr (`gdlab >&-`) is /dev/null, and a reader that goes away (`gdlab | head -1`,
  `gdlab --cfg job | true`) is no error: what follows is dropped, the command finishes its
  work and its files, and exits with its own code (0 when it succeeded; not 141 as a process
  killed by SIGPIPE: the work was done). This module is light (Hydra comes with run_app).
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn

from gdlab.atomic import DISK_FULL, disk_full_message, os_error_in, run_directory_of
from gdlab.errors import GdlabError, causes

USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C outside the training loop (which saves and exits itself)

_NOT_RUNNING = object()
#: the user's HYDRA_FULL_ERROR while `run_app` has set its own; _NOT_RUNNING outside run_app
_user_full_error: object = _NOT_RUNNING


def show_tracebacks() -> bool:
    """The user's debug switch (HYDRA_FULL_ERROR=1), also while `run_app` sets it for Hydra."""
    running = _user_full_error is not _NOT_RUNNING
    return (_user_full_error if running else os.environ.get("HYDRA_FULL_ERROR")) == "1"


class UserMistake(SystemExit):
    """A user mistake found inside a Hydra app. It leaves the app and Hydra as SystemExit(2)
    does (Hydra adds a line of its own to an Exception), and `run_app` reports its message
    like the mistakes it catches itself."""

    def __init__(self, message: str) -> None:
        super().__init__(USAGE_ERROR)
        self.message = message


def run_app(
    app: Callable[[], object],
    prog: str,
    explain: Callable[[str], str] | None = None,
    argv: Sequence[str] | None = None,
    *,
    raise_errors: bool = False,
) -> int:
    """Call a `@hydra.main` app; return its exit code, user mistakes reported in one line.

    `argv` replaces the command line (sys.argv[1:]) for this call. `explain` may add the
    command's own context to a message before it is printed. `raise_errors`: raise a user
    mistake as `GdlabError(message)` (the line without `<prog>: error: `) instead of printing
    it and returning 2. Never raises SystemExit.
    """

    def mistake(message: str) -> int:
        if explain is not None:
            message = explain(message)
        if raise_errors:
            raise GdlabError(message) from None
        print(f"{prog}: error: {message}", file=sys.stderr)
        return USAGE_ERROR

    def unwritten_log(code: int) -> int:
        """A run whose log file could not be written (a full disk) did not end well."""
        failure = _RUN_LOGS.failure()
        if failure is None:
            return code
        message = unwritable_output(failure)
        if message is None:
            message = f"cannot write {failure.filename}: {failure.strerror}"
        if raise_errors:
            raise GdlabError(message) from None
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code or USAGE_ERROR

    from gdlab.usage import describe  # Hydra's and OmegaConf's errors, worded

    _RUN_LOGS.reset()
    with fresh_hydra(prog, argv):
        try:
            app()
        except UserMistake as err:
            return mistake(err.message)
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                return unwritten_log(stop.code or 0)
            print(stop.code, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\n{prog}: interrupted", file=sys.stderr)
            return INTERRUPTED
        except Exception as err:
            message = None
            if not show_tracebacks():
                message = None if _mistake_in(err) else unwritable_output(err)
                message = message or describe(err)
            if message is None:
                raise
            return mistake(message)
    return unwritten_log(0)


def _mistake_in(err: BaseException) -> bool:
    """A GdlabError among the causes: its own line says more than the OSError under it."""
    return any(isinstance(cause, GdlabError) for cause in causes(err))


# ----------------------------------------------------------------- places that take no files

#: errors only a write gives: the file system is full, over quota, or read-only
_WRITE_ONLY_ERRNOS = DISK_FULL | {errno.EROFS}


def unwritable_output(err: BaseException) -> str | None:
    """One line for a run or sweep directory that takes no files, or None when `err` is not
    that. A full disk: `the disk is full: cannot write <run directory> (...)`, saying whether
    the last checkpoint there is kept (gdlab's own writers raise `DiskFull`, a GdlabError with
    that line; this is for Hydra's writes and the log file); a read-only or odd place
    (`hydra.run.dir=/proc/self`): `cannot write <directory>: <reason> (<file>)`."""
    found = os_error_in(err)
    if found is None:
        return None
    name = os.fsdecode(found.filename) if found.filename is not None else None
    run_dir = _output_dir(err, name)
    if found.errno in DISK_FULL:
        if run_dir is None:
            return f"the disk is full: cannot write the run's files ({found.strerror})"
        return disk_full_message(run_dir, found.strerror)
    inside = name is not None and run_dir is not None and _inside(Path(name), run_dir)
    if found.errno not in _WRITE_ONLY_ERRNOS and not inside:
        return None  # an error of something else (a file read, a plugin): not ours to word
    reason = found.strerror or type(found).__name__
    if inside and name is not None and run_dir is not None and Path(name) != run_dir:
        return f"cannot write {run_dir}: {reason} ({os.path.relpath(name, run_dir)})"
    return f"cannot write {name or run_dir}: {reason}"


def _inside(path: Path, directory: Path) -> bool:
    path, directory = Path(os.path.abspath(path)), Path(os.path.abspath(directory))
    return path == directory or directory in path.parents


def _output_dir(err: BaseException, name: str | None) -> Path | None:
    """The run directory the failed write was for: the one whose log file this run opened,
    the one Hydra was setting up (its run_job frame), or the file's own directory."""
    candidates = [*reversed(_RUN_LOGS.directories), *_hydra_output_dirs(err)]
    if name is not None:
        for directory in candidates:
            if _inside(Path(name), directory):
                return directory
        return run_directory_of(Path(name))
    return candidates[0] if candidates else None


def _hydra_output_dirs(err: BaseException) -> list[Path]:
    """hydra.runtime.output_dir of the jobs Hydra's run_job was running when `err` rose
    through it (Hydra writes .hydra/ before any gdlab code runs, and names no file when a
    write fails)."""
    found: list[Path] = []
    for cause in causes(err):
        tb = cause.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code.co_name == "run_job" and "hydra" in frame.f_code.co_filename:
                output_dir = _select(frame.f_locals.get("config"), "hydra.runtime.output_dir")
                if output_dir:
                    found.append(Path(str(output_dir)))
            tb = tb.tb_next
    return found


def _select(config: Any, key: str) -> Any:
    try:
        from omegaconf import DictConfig, OmegaConf

        return OmegaConf.select(config, key) if isinstance(config, DictConfig) else None
    except Exception:
        return None


class _RunLogs:
    """The log files `RunLogHandler` opened during one `run_app` call, and the first error."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.errors: list[OSError] = []

    @property
    def directories(self) -> list[Path]:
        return [Path(f).parent for f in self.files]

    def reset(self) -> None:
        self.files.clear()
        self.errors.clear()

    def failure(self) -> OSError | None:
        return self.errors[0] if self.errors else None


_RUN_LOGS = _RunLogs()


class RunLogHandler(logging.FileHandler):
    """The run's log file (gdlab.log): whole lines, and no traceback when a write fails.

    Named by configs/hydra/job_logging/gdlab.yaml in place of logging.FileHandler. Each
    record is one unbuffered write; where it fails (a full disk), the file is cut back to its
    last whole line, the handler writes nothing more, and `run_app` ends the command with one
    line and a non-zero exit code. (logging.FileHandler would print a "--- Logging error ---"
    traceback for every record instead, and go on.) Errors of formatting stay what they are.
    """

    def __init__(
        self,
        filename: str,
        mode: str = "a",
        encoding: str | None = "utf-8",
        delay: bool = False,
        errors: str | None = None,
    ) -> None:
        path = os.path.abspath(os.fspath(filename))
        _RUN_LOGS.files.append(path)  # first: an open that fails is then known to be the run's
        self.failed: OSError | None = None
        self._size = 0
        super().__init__(path, mode, encoding or "utf-8", delay, errors)

    def _open(self) -> Any:
        mode = "wb" if "w" in self.mode else "ab"
        stream = open(self.baseFilename, mode, buffering=0)  # noqa: SIM115 - the handler's
        self._size = os.fstat(stream.fileno()).st_size
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is not None:
            return
        try:
            data = (self.format(record) + self.terminator).encode(
                self.encoding or "utf-8", self.errors or "backslashreplace"
            )
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        try:
            if self.stream is None:
                self.stream = self._open()
            view = memoryview(data)
            while view:
                written = self.stream.write(view)
                if not written:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
            self._size += len(data)
        except OSError as err:
            self._fail(err)

    def _fail(self, err: OSError) -> None:
        if err.filename is None:
            err.filename = self.baseFilename
        self.failed = err
        _RUN_LOGS.errors.append(err)
        stream, self.stream = self.stream, None
        if stream is not None:
            with suppress(OSError):
                os.ftruncate(stream.fileno(), self._size)  # no torn last line
            with suppress(OSError):
                stream.close()

    def flush(self) -> None:
        pass  # unbuffered: every record is written when it is emitted


@contextmanager
def fresh_hydra(prog: str, argv: Sequence[str] | None = None) -> Iterator[None]:
    """Run a Hydra app as in a fresh process, and put back what it changed afterwards:
    sys.argv (when `argv` is given), HYDRA_FULL_ERROR, Hydra's GlobalHydra and HydraConfig,
    and the logging configuration (handlers, levels) Hydra installs for a job."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    global _user_full_error
    saved_argv = sys.argv
    saved_user = _user_full_error
    previous_env = os.environ.get("HYDRA_FULL_ERROR")
    global_hydra = GlobalHydra.instance()
    saved_hydra, saved_hydra_cfg = global_hydra.hydra, HydraConfig.instance().cfg
    saved_logging = _logging_state()
    if argv is not None:
        sys.argv = [prog, *argv]
    _user_full_error = previous_env
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's report
    global_hydra.clear()  # Hydra refuses to start while another app holds it (a notebook's)
    HydraConfig.instance().cfg = None
    try:
        yield
    finally:
        global_hydra.hydra = saved_hydra
        HydraConfig.instance().cfg = saved_hydra_cfg
        _restore_logging(saved_logging)
        if previous_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous_env
        _user_full_error = saved_user
        sys.argv = saved_argv


_LoggerState = tuple[int, list[logging.Handler], bool, bool]


def _logging_state() -> dict[logging.Logger, _LoggerState]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    return {lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers}


def _restore_logging(saved: dict[logging.Logger, _LoggerState]) -> None:
    """Undo Hydra's logging.config.dictConfig: its handlers (the run's log file) are closed,
    the loggers that existed before get back their handlers, level and switches."""
    kept = {id(h) for state in saved.values() for h in state[1]}
    for logger, _ in _logging_state().items():
        for handler in logger.handlers:
            if id(handler) not in kept:
                handler.close()
        if logger in saved:
            level, handlers, propagate, disabled = saved[logger]
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate, logger.disabled = propagate, disabled
        else:
            logger.handlers.clear()


def exit_quickly(code: int) -> NoReturn:
    """Exit with `code`, skipping only the interpreter's module teardown (console scripts only).

    Falls back to a normal exit while another non-daemon thread is alive (it must be joined).
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others:
        sys.exit(code)
    atexit._run_exitfuncs()  # logging.shutdown, launchers' clean-up, ...
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None where the command was started with it closed
            with suppress(OSError, ValueError):  # a reader gone, a stream closed: nothing to do
                stream.flush()
    os._exit(code)


# ----------------------------------------------------------------- console streams


class QuietStream:
    """sys.stdout or sys.stderr of a console script, for a reader that may go away.

    `gdlab | head -1`: once the pipe's reader has gone, a write raises BrokenPipeError. Here
    the stream's file descriptor is pointed at /dev/null instead (what C code, child processes
    and the interpreter's last flush write then goes nowhere too), and the write counts as
    done: the command finishes its run and its files, and exits with its own code.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        #: True once the reader has gone
        self.lost = False

    def write(self, text: str) -> int:
        if self.lost:
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as err:
            if err.errno != errno.EPIPE:
                raise
            self._lose()
            return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as err:
            if err.errno != errno.EPIPE:
                raise
            self._lose()

    def _lose(self) -> None:
        self.lost = True
        try:
            fd = self._stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
        except (OSError, ValueError):
            return
        os.dup2(null, fd)
        os.close(null)
        with suppress(OSError, ValueError):
            self._stream.flush()  # what the failed write left buffered, into /dev/null

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def console_streams() -> None:
    """Make a console script's standard streams safe to write (call it first thing).

    A standard file descriptor that is closed (`gdlab >&-`) is opened on /dev/null, so that
    no file the command opens later takes its number (and C code's or a child's output with
    it), and sys.stdout/sys.stderr, None then, become real streams; both are wrapped in a
    `QuietStream`. Idempotent; changes nothing in a Python session that only imports gdlab.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if isinstance(stream, QuietStream):
            continue
        if stream is None:
            stream = open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        setattr(sys, name, QuietStream(stream))
