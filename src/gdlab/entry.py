"""What every gdlab command does around its Hydra app: one-line errors and a quick exit.

- A user mistake (a bad override, an unknown option, a missing GPU, a damaged checkpoint)
  that escapes the app is printed as one line, `<prog>: error: ...`, exit code 2. Other
  exceptions are bugs and keep their traceback; HYDRA_FULL_ERROR=1 shows it for all.
- The process then leaves with `os._exit` once its files are closed, its output flushed and
  the atexit handlers have run: tearing down torch's modules at interpreter exit costs about
  0.3 s on this machine, as much again as everything gdlab adds to `import torch`.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from gdlab.usage import describe

USAGE_ERROR = 2
#: the user's debug switch, read before `run_app` sets the variable for Hydra
SHOW_TRACEBACKS = os.environ.get("HYDRA_FULL_ERROR") == "1"


def run_app(
    app: Callable[[], object], prog: str, explain: Callable[[str], str] | None = None
) -> int:
    """Call a `@hydra.main` app; return its exit code, user mistakes reported in one line.

    `explain` may add the command's own context to a message before it is printed.
    """
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's report
    try:
        app()
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except Exception as err:
        message = None if SHOW_TRACEBACKS else describe(err)
        if message is None:
            raise
        if explain is not None:
            message = explain(message)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return USAGE_ERROR
    return 0


def exit_quickly(code: int) -> NoReturn:
    """Exit with `code`, skipping only the interpreter's module teardown.

    Falls back to a normal exit while another non-daemon thread is alive (it must be joined).
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others:
        sys.exit(code)
    atexit._run_exitfuncs()  # logging.shutdown, launchers' clean-up, ...
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
