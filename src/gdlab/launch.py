"""The `gdlab` command's first lines: safe console streams, a quiet Ctrl-C while it starts, and
its start-up imports with the garbage collector paused.

Importing torch, Hydra and matplotlib creates millions of objects, and each import would set
off full collections that find nothing to free (0.2 s of a one-step run, measured by
scripts/bench_startup.py). The command pauses the collector while it imports its modules,
then freezes what they created (it lives as long as the process) and collects as usual. Only
the command does this: `import gdlab` in a user's process changes nothing.

Ctrl-C while those imports run (a second or so) ends the command at once with exit code 130
and one line, not a KeyboardInterrupt traceback from the middle of torch: nothing has been
written yet, so there is nothing to save. From the first line of the app on, Ctrl-C is what
docs/reliability.md describes (a run saves a checkpoint and says how to resume).

First of all, gdlab.entry.console_streams: `gdlab >&-` and `gdlab | head -1` are no error.
"""

from __future__ import annotations

import gc
import os
import signal
from contextlib import suppress
from types import FrameType

INTERRUPTED = 130  # 128 + SIGINT, as gdlab.entry.INTERRUPTED (not imported: it loads Hydra)


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    """SIGINT outside the app: one line and exit 130, without unwinding the imports."""
    with suppress(OSError):
        os.write(2, b"\ngdlab: interrupted\n")
    os._exit(INTERRUPTED)


def main() -> None:
    """Console-script entry point of `gdlab` (and `python -m gdlab`)."""
    # Ctrl-C is ignored where the shell started gdlab with it ignored (`gdlab … &`): keep that
    quiet_start = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if quiet_start:
        signal.signal(signal.SIGINT, _exit_interrupted)
    from gdlab.entry import console_streams  # light: Hydra and torch come with gdlab.cli

    console_streams()  # `gdlab >&-`, `gdlab | head -1`: no traceback, the files complete
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        from gdlab.cli import console_main
    finally:
        gc.freeze()  # the start-up objects: never collected, so never scanned again
        if was_enabled:
            gc.enable()
    if quiet_start:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        console_main()
    except KeyboardInterrupt:  # between the app's end and the exit (its files are closed)
        _exit_interrupted(signal.SIGINT, None)
