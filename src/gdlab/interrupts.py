"""Ctrl-C and SIGTERM as a request to stop cleanly, not a crash.

The first signal only sets a flag: the trainer finishes its current step, writes a checkpoint,
marks the run `interrupted`, flushes its files and the command exits with the conventional
code (128 + signal number). A second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class GracefulInterrupt:
    """Context manager that turns the first SIGINT/SIGTERM into `requested`."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            sys.stderr.write(f"\ngdlab: second {signal.Signals(signum).name}: exiting now\n")
            os._exit(128 + signum)
        self.requested = signum
        sys.stderr.write(
            f"\ngdlab: {signal.Signals(signum).name} received: finishing this step and saving a "
            "checkpoint (send it again to exit at once)\n"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.requested if self.requested is not None else 0

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
