"""The work behind `hydra/launcher=joblib` (joblib_launcher.py): warm workers, composed configs."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
from joblib import Parallel, delayed, effective_n_jobs
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

#: what a worker's memory may grow by before loky replaces it (`allow_memory_growth`)
WORKER_MEMORY_GROWTH = 8 * 2**30
#: what a job imports: the app with Hydra and torch, the trainer and its sinks, matplotlib
JOB_MODULES = ("gdlab.cli", "gdlab.experiment", "gdlab.population.job", "gdlab.sinks.plots")


def parallel_arguments(joblib_cfg: Any) -> dict[str, Any]:
    """joblib.Parallel's arguments from hydra.launcher, as Hydra's launcher passes them: the
    loky backend always (threads can't run Hydra jobs side by side)."""
    arguments = dict(joblib_cfg)
    arguments["backend"] = "loky"
    process_joblib_cfg(arguments)
    return arguments


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
        # Not a daemon: loky's executor thread inherits it, and must keep the process's exit
        # waiting for loky's own clean-up (as under Hydra's launcher), not for idle workers.
        self.thread = threading.Thread(target=self._run, name="gdlab-joblib-warm-up", daemon=False)

    @classmethod
    def start(cls, joblib_cfg: Any) -> WarmUp:
        warm_up = cls(parallel_arguments(joblib_cfg))
        warm_up.thread.start()
        return warm_up

    def _run(self) -> None:
        try:
            count = effective_n_jobs(self.arguments.get("n_jobs"))  # -1: one per core
            self.workers = Parallel(**self.arguments)(
                delayed(import_job_modules)() for _ in range(count)
            )
        except Exception as err:  # the launch starts its workers itself, as Hydra's does
            log.debug("joblib warm-up failed: %s", err)

    def wait(self) -> None:
        self.thread.join()


def execute_job(
    idx: int,
    overrides: Sequence[str],
    sweep_config: DictConfig | None,
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    """One job in a worker: Hydra's joblib `execute_job`, with the config composed already
    (None: compose it here, as Hydra's launcher does)."""
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
        ",".join(f"{k}={v}" for k, v in arguments.items()),
        len(job_overrides),
    )
    log.info("Launching jobs, sweep output dir : %s", sweep_dir)
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
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
            )
            for idx, overrides in enumerate(job_overrides)
        )
    finally:
        compositions.attach_again()
    assert isinstance(runs, list) and all(isinstance(r, JobReturn) for r in runs)
    return runs
