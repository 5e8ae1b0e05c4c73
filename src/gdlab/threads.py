"""A torch thread limit for jobs that share the machine with other jobs.

torch starts one intra-op thread per core. Under the joblib launcher `n_jobs` jobs run at once,
so without a limit each of them starts as many threads as there are cores and they fight over
them (oversubscription makes small runs several times slower). Each job gets its share instead:
usable cores // jobs running at once, at least one. Under SLURM (submitit) a job gets the cores
of its allocation.
"""

from __future__ import annotations

import logging
import os
from typing import Any

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


def threads_per_job(launcher: Any, cpus: int, env: dict[str, str] | None = None) -> int | None:
    """The torch thread count a job should use under `launcher` (hydra.launcher), or None for
    'leave torch's default' (one job at a time: it may use every core)."""
    env = os.environ if env is None else env
    target = str(_get(launcher, "_target_") or "")
    if "JoblibLauncher" in target:
        workers = min(joblib_workers(_get(launcher, "n_jobs"), cpus), cpus)
        return max(1, cpus // workers)
    if "submitit" in target.lower() and env.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(env["SLURM_CPUS_PER_TASK"]))
    return None


def _get(node: Any, key: str) -> Any:
    if node is None:
        return None
    try:
        return node.get(key)
    except AttributeError:
        return getattr(node, key, None)


def limit_torch_threads(hydra_cfg: Any) -> int | None:
    """Apply `threads_per_job` to this process (a job); returns the limit it set, if any."""
    threads = threads_per_job(_get(hydra_cfg, "launcher"), usable_cpus())
    if threads is None:
        return None
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.info("gdlab: torch uses %d thread%s in this job", threads, "" if threads == 1 else "s")
    return threads
