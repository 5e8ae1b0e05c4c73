"""Ctrl-C and SIGTERM as a request to stop cleanly, not a crash.

The first signal only sets a flag: the trainer finishes its current step, writes a checkpoint,
marks the run `interrupted`, flushes its files and the command exits with the conventional
code (128 + signal number). A second signal exits at once.

In a worker process of gdlab's joblib launcher (`WORKER`, set up by
hydra_plugins.gdlab_launchers._joblib), a signal that comes while no run listens (between
jobs, while a job is being set up) is noted instead of raising KeyboardInterrupt: the next
run takes it as its own first signal, and a job that has not started is not started. The
sweep's parent asks running jobs to stop with `STOP_REQUEST` (SIGUSR1), which counts as a first
Ctrl-C at most: a job that got the terminal's Ctrl-C as well still needs a second to exit at
once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType, TracebackType

HANDLED = (signal.SIGINT, signal.SIGTERM)
#: what the parent of a joblib sweep sends a worker to stop its job cleanly
STOP_REQUEST = signal.SIGUSR1


class WorkerSignals:
    """The signals of a launcher's worker process, noted between runs (see the module)."""

    def __init__(self) -> None:
        self.active = False
        #: the first signal noted (STOP_REQUEST: the parent's request), and when
        self.pending: int | None = None
        self.at = 0.0

    def listen(self) -> None:
        """In the worker's main thread: note SIGINT, SIGTERM and STOP_REQUEST from now on."""
        self.active = True
        for signum in (*HANDLED, STOP_REQUEST):
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.note(signum)

    def note(self, signum: int) -> None:
        if self.pending is None:
            self.pending, self.at = signum, time.time()

    def since(self, start: float) -> int | None:
        """The signal noted since `start` (the sweep's); an older one is forgotten."""
        if self.pending is not None and self.at < start:
            self.pending = None
        return self.pending


WORKER = WorkerSignals()


class GracefulInterrupt:
    """Context manager that turns the first SIGINT/SIGTERM into `requested`."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}
        self._direct = False  # a signal of its own, not only the sweep's STOP_REQUEST

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if WORKER.active:
            WORKER.note(signum)  # the worker's next jobs are not started
            if signum == STOP_REQUEST:  # the sweep's parent: a first Ctrl-C at most
                if self.requested is None:
                    self._handle(signal.SIGINT, frame)
                    self._direct = False
                return
            if self.requested is not None and not self._direct:  # the parent asked first
                self._direct = True
                return
        self._direct = True
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
            for signum in (*HANDLED, STOP_REQUEST) if WORKER.active else HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
            if WORKER.active and WORKER.pending is not None:  # came while the job was set up
                self._handle(WORKER.pending, None)
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
