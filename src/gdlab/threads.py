"""A torch thread limit for jobs that share the machine with other jobs.

torch starts one intra-op thread per core. Under the joblib launcher `n_jobs` jobs run at once,
so without a limit each of them starts as many threads as there are cores and they fight over
them (oversubscription makes small runs several times slower). Each job gets its share instead:
usable cores // jobs running at once, at least one. Under SLURM (submitit) a job gets the cores
of its allocation, and under Ray the CPUs Ray reserved for its task.

The limit is said once per sweep on the console (`sweep_thread_note`, from the main process);
each job writes its own figure to its gdlab.log only.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

from gdlab.joblog import FILE_ONLY

log = logging.getLogger("gdlab")


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask, which SLURM and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def joblib_workers(n_jobs: int | None, cpus: int) -> int:
    """How many jobs joblib runs at once: n_jobs, or for negative values cpus + 1 + n_jobs."""
    if n_jobs is None or n_jobs == 0:
        return 1
    if n_jobs < 0:
        return max(1, cpus + 1 + n_jobs)
    return n_jobs


def launcher_kind(launcher: Any) -> str:
    """`joblib`, `submitit`, `ray` or `basic` (any other launcher) from hydra.launcher."""
    target = str(_get(launcher, "_target_") or "")
    if "JoblibLauncher" in target:
        return "joblib"
    if "submitit" in target.lower():
        return "submitit"
    if "RayLauncher" in target:
        return "ray"
    return "basic"


def ray_task_cpus() -> float | None:
    """The CPUs Ray reserved for the task running in this process; None outside a Ray task."""
    ray = sys.modules.get("ray")  # a Ray task has imported ray; nothing else needs to
    if ray is None or not ray.is_initialized():
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # the driver, or a Ray without this API: no reservation to follow
        return None
    return float(cpus) if cpus else None


def threads_per_job(
    launcher: Any,
    cpus: int,
    env: dict[str, str] | None = None,
    ray_cpus: float | None = None,
) -> int | None:
    """The torch thread count a job should use under `launcher` (hydra.launcher), or None for
    'leave torch's default' (one job at a time: it may use every core).

    `ray_cpus`: the CPUs Ray reserved for this job's task (`ray_task_cpus`); a fraction of a
    CPU still runs one thread."""
    env = os.environ if env is None else env
    kind = launcher_kind(launcher)
    if kind == "joblib":
        workers = min(joblib_workers(_get(launcher, "n_jobs"), cpus), cpus)
        return max(1, cpus // workers)
    if kind == "submitit" and env.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(env["SLURM_CPUS_PER_TASK"]))
    if kind == "ray" and ray_cpus:
        return max(1, math.floor(ray_cpus))
    return None


def sweep_thread_note(launcher: Any, cpus: int) -> str | None:
    """The one console line per sweep that says how many torch threads each job uses (the
    jobs themselves write their figure to their own gdlab.log only); None for the basic
    launcher, whose one job at a time keeps torch's default."""
    kind = launcher_kind(launcher)
    if kind == "joblib":
        workers = min(joblib_workers(_get(launcher, "n_jobs"), cpus), cpus)
        threads = threads_per_job(launcher, cpus)
        return (
            f"gdlab: joblib runs {workers} job{_s(workers)} at once on {cpus} "
            f"core{_s(cpus)}: torch uses {threads} thread{_s(threads)} in each"
        )
    if kind == "ray":
        remote = _get(_get(launcher, "ray"), "remote")
        asked = _get(remote, "num_cpus") or 1
        return (
            f"gdlab: each Ray task reserves {asked:g} CPU{_s(asked)} "
            "(hydra.launcher.ray.remote.num_cpus): torch uses that many threads in it"
        )
    if kind == "submitit":
        return "gdlab: under SLURM torch uses the job's SLURM_CPUS_PER_TASK threads"
    return None


def _s(n: float | None) -> str:
    return "" if n == 1 else "s"


def _get(node: Any, key: str) -> Any:
    if node is None:
        return None
    try:
        return node.get(key)
    except AttributeError:
        return getattr(node, key, None)


def limit_torch_threads(hydra_cfg: Any) -> int | None:
    """Apply `threads_per_job` to this process (a job); returns the limit it set, if any."""
    threads = threads_per_job(_get(hydra_cfg, "launcher"), usable_cpus(), ray_cpus=ray_task_cpus())
    if threads is None:
        return None
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.info("gdlab: torch uses %d thread%s in this job", threads, _s(threads), extra=FILE_ONLY)
    return threads
