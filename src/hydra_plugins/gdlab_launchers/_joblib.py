"""The work behind `hydra/launcher=joblib` (joblib_launcher.py): warm workers, composed configs,
and Ctrl-C for the whole sweep.

Ctrl-C in a terminal reaches the sweep's parent and its workers at once (one process group).
A running job then stops as a plain run does: it finishes its step, saves a checkpoint and
marks itself `interrupted`. The parent neither raises KeyboardInterrupt (joblib would then
kill the workers, in the middle of writing those checkpoints) nor starts a job not yet
started: it asks the running jobs to stop (`gdlab.interrupts.STOP_REQUEST`, for a signal
sent to the parent alone, such as SIGTERM from a scheduler), waits for them and exits with
130 (143 after SIGTERM). A second signal exits at once, workers included. The workers start
with these signals blocked and, once set up, note a signal that comes between jobs instead of
printing a KeyboardInterrupt traceback (`worker_init`, gdlab.interrupts.WORKER).
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
from joblib import Parallel, delayed, effective_n_jobs
from omegaconf import DictConfig, open_dict

from gdlab.entry import console_streams, unwritable_output
from gdlab.errors import GdlabError
from gdlab.interrupts import HANDLED, STOP_REQUEST, WORKER

log = logging.getLogger(__name__)

#: what a worker's memory may grow by before loky replaces it (`allow_memory_growth`)
WORKER_MEMORY_GROWTH = 8 * 2**30
#: what a job imports: the app with Hydra and torch, the trainer and its sinks, matplotlib
JOB_MODULES = ("gdlab.cli", "gdlab.experiment", "gdlab.population.job", "gdlab.sinks.plots")


#: the signals a sweep's parent and its workers handle (the workers start with them blocked)
SIGNALS = (*HANDLED, STOP_REQUEST)


def parallel_arguments(joblib_cfg: Any) -> dict[str, Any]:
    """joblib.Parallel's arguments from hydra.launcher, as Hydra's launcher passes them: the
    loky backend always (threads can't run Hydra jobs side by side), and `worker_init` for
    each worker (the same for the warm-up and the launch: joblib reuses the executor only
    for the same arguments)."""
    arguments = dict(joblib_cfg)
    arguments["backend"] = "loky"
    process_joblib_cfg(arguments)
    arguments["initializer"] = worker_init
    return arguments


def worker_init() -> None:
    """First thing in each worker: signals noted, not raised, between jobs; then unblocked (a
    worker starts with them blocked: a Ctrl-C while it imports waits until here); a console
    whose reader went away is no error (gdlab.entry.console_streams)."""
    WORKER.listen()
    with suppress(Exception):
        console_streams()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def allow_memory_growth() -> None:
    """Raise loky's leak guard in this worker to WORKER_MEMORY_GROWTH.

    loky replaces a worker whose resident memory grew by 300 MB since its first task, taking
    it for a leak. A population job of 10^5 members holds that much for a while, and the
    allocator keeps the freed pages, so every such job would cost a new worker that imports
    torch and compiles the step again (seconds each, for jobs of under a second)."""
    from joblib.externals.loky import process_executor

    limit = getattr(process_executor, "_MAX_MEMORY_LEAK_SIZE", 0)
    process_executor._MAX_MEMORY_LEAK_SIZE = max(limit, WORKER_MEMORY_GROWTH)


def import_job_modules() -> int:
    """Import what a gdlab job needs, in a worker, with the collector paused (as the `gdlab`
    command does: gdlab.launch); returns the worker's process id."""
    allow_memory_growth()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for module in JOB_MODULES:
            importlib.import_module(module)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
    return os.getpid()


class WarmUp:
    """Starts joblib's workers in a background thread, so that they import gdlab while the
    sweeper checks the sweep; joblib keeps them for the launch (the same reusable executor)."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        self.arguments = arguments
        self.workers: list[int] = []
        #: when the sweep's workers were asked for: a signal a worker noted before is stale
        self.started_at = time.time()
        # Not a daemon: loky's executor thread inherits it, and must keep the process's exit
        # waiting for loky's own clean-up (as under Hydra's launcher), not for idle workers.
        self.thread = threading.Thread(target=self._run, name="gdlab-joblib-warm-up", daemon=False)

    @classmethod
    def start(cls, joblib_cfg: Any) -> WarmUp:
        warm_up = cls(parallel_arguments(joblib_cfg))
        warm_up.thread.start()
        return warm_up

    def _run(self) -> None:
        # The workers started from this thread inherit its blocked signals: a Ctrl-C while
        # they import is noted once they are set up (worker_init), not a traceback in each.
        # The resource trackers first: starting one unblocks SIGINT and SIGTERM again.
        start_resource_trackers()
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            count = effective_n_jobs(self.arguments.get("n_jobs"))  # -1: one per core
            self.workers = Parallel(**self.arguments)(
                delayed(import_job_modules)() for _ in range(count)
            )
        except Exception as err:  # the launch starts its workers itself, as Hydra's does
            log.debug("joblib warm-up failed: %s", err)

    def wait(self) -> None:
        self.thread.join()


@dataclass
class Stopped:
    """What a worker returns for a job that a signal stopped (`started`: its run saved a
    checkpoint and marked itself interrupted) or kept from starting."""

    code: int
    started: bool


def start_resource_trackers() -> None:
    """Start loky's and multiprocessing's resource trackers (the executor would start them)
    now: each unblocks SIGINT and SIGTERM in the thread that starts it, when it is done."""
    from joblib.externals.loky.backend import resource_tracker as loky_tracker

    for tracker in (loky_tracker, importlib.import_module("multiprocessing.resource_tracker")):
        with suppress(Exception):
            tracker.ensure_running()


def execute_job(
    idx: int,
    overrides: Sequence[str],
    sweep_config: DictConfig | None,
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
    sweep_start: float = 0.0,
) -> JobReturn | Stopped:
    """One job in a worker: Hydra's joblib `execute_job`, with the config composed already
    (None: compose it here, as Hydra's launcher does). In a worker, a job stopped by a signal
    is returned as `Stopped` (an exception would make joblib kill the other workers), and
    after a signal no job starts (`sweep_start`: when the sweep began)."""
    job = (idx, overrides, sweep_config, hydra_context, config, task_function, singleton_state)
    if not WORKER.active:  # one job at a time, in the sweep's own process
        return _execute_job(*job)
    pending = WORKER.since(sweep_start)
    if pending is not None:
        return Stopped(128 + (signal.SIGINT if pending == STOP_REQUEST else pending), False)
    try:
        return _execute_job(*job)
    except SystemExit as stop:  # the run saved its checkpoint: 130 or 143
        return Stopped(stop.code if isinstance(stop.code, int) else 1, True)
    except OSError as err:  # Hydra's own writes (.hydra/): worded here, where the frames are
        message = unwritable_output(err)
        if message is None:
            raise
        raise GdlabError(message) from err


def _execute_job(
    idx: int,
    overrides: Sequence[str],
    sweep_config: DictConfig | None,
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    allow_memory_growth()
    setup_globals()
    Singleton.set_state(singleton_state)
    if sweep_config is None:
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def launch(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    """Hydra's joblib launch, on the warm workers, each job with its composed config."""
    setup_globals()
    assert launcher.config is not None and launcher.task_function is not None
    assert launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    arguments = parallel_arguments(launcher.joblib)
    log.info(
        "Joblib.Parallel(%s) is launching %d jobs",
        ",".join(f"{k}={v}" for k, v in arguments.items() if k != "initializer"),
        len(job_overrides),
    )
    log.info("Launching jobs, sweep output dir : %s", sweep_dir)
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
    sweep_start = launcher.warm_up.started_at if launcher.warm_up is not None else time.time()
    with SweepStop(effective_n_jobs(arguments.get("n_jobs")) > 1) as stop:
        if launcher.warm_up is not None:
            launcher.warm_up.wait()
        compositions = launcher.compositions
        configs = [compositions.take(overrides) for overrides in job_overrides]
        singleton_state = Singleton.get_state()
        compositions.detach()
        try:
            runs = Parallel(**arguments)(
                delayed(execute_job)(
                    initial_job_idx + idx,
                    overrides,
                    configs[idx],
                    launcher.hydra_context,
                    launcher.config,
                    launcher.task_function,
                    singleton_state,
                    sweep_start,
                )
                for idx, overrides in enumerate(job_overrides)
            )
        finally:
            compositions.attach_again()
    assert isinstance(runs, list)
    stopped = [r for r in runs if isinstance(r, Stopped)]
    if stop.requested is not None or stopped:
        # as a plain run that a signal stopped: every started job saved its checkpoint
        raise SystemExit(128 + stop.requested if stop.requested else stopped[0].code)
    assert all(isinstance(r, JobReturn) for r in runs)
    return runs


class SweepStop:
    """The sweep's parent, while its workers run jobs: the first SIGINT or SIGTERM asks every
    worker to stop its job (STOP_REQUEST) and lets joblib collect what they return; a second
    one kills the workers and exits at once. Only in the main thread and with workers (with
    one job at a time the jobs run in this process, and stop as plain runs do)."""

    def __init__(self, active: bool) -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SweepStop:
        if self.active:
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            sys.stderr.write(f"\ngdlab: second {name}: exiting now\n")
            for pid in worker_pids():
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            os._exit(128 + signum)
        self.requested = signum
        sys.stderr.write(
            f"\ngdlab: {name} received: the running jobs finish their step and save a "
            "checkpoint, no other job starts (send it again to exit at once)\n"
        )
        for pid in worker_pids():  # those that got it from the terminal as well ignore this
            with suppress(OSError):
                os.kill(pid, STOP_REQUEST)


def worker_pids() -> list[int]:
    """The process ids of joblib's (loky's) reusable executor's workers."""
    try:
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        return [int(pid) for pid in list(getattr(executor, "_processes", None) or {})]
    except Exception:
        return []
