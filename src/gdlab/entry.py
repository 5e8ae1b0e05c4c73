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
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from gdlab.errors import GdlabError
from gdlab.usage import describe

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

    with fresh_hydra(prog, argv):
        try:
            app()
        except UserMistake as err:
            return mistake(err.message)
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                return stop.code or 0
            print(stop.code, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\n{prog}: interrupted", file=sys.stderr)
            return INTERRUPTED
        except Exception as err:
            message = None if show_tracebacks() else describe(err)
            if message is None:
                raise
            return mistake(message)
    return 0


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
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
