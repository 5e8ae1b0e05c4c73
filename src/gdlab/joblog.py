"""The job's console lines: prefixed with the job's number in a sweep, file-only records kept off.

configs/hydra/job_logging/gdlab.yaml builds the console handler from these. In a multirun,
jobs that run at once (joblib, Ray) write to one console, so each of their lines starts with
the job's number as Hydra lists it when it launches (`#3 : optimizer.lr=0.2`). A record logged
with `extra=FILE_ONLY` (such as a job's torch thread count, said once per sweep instead) goes
to the run's gdlab.log only.
"""

from __future__ import annotations

import logging
from typing import Any

#: `log.info(..., extra=FILE_ONLY)`: into the run's gdlab.log, not onto the console
FILE_ONLY = {"gdlab_file_only": True}


def job_number() -> int | None:
    """This job's number in a multirun (hydra.job.num), None in a single run or outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        num = hydra_cfg.job.get("num")
    except Exception:  # a config without the key: no number to show
        return None
    return num if isinstance(num, int) else None


class JobFormatter(logging.Formatter):
    """A formatter that starts each line with `[#N] ` in job N of a multirun."""

    def __init__(self, fmt: str | None = None, **kwargs: Any) -> None:
        num = job_number()
        prefix = "" if num is None else f"[#{num}] "
        super().__init__(prefix + (fmt or "%(message)s"), **kwargs)


class ConsoleFilter(logging.Filter):
    """Keeps records logged with `extra=FILE_ONLY` off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "gdlab_file_only", False)
