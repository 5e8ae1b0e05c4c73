"""A job that raised inside a multirun: logged, recorded in its metrics.json, never fatal.

Also what a job returns to Hydra (`objective_value`), which an Optuna sweeper minimises.
"""

from __future__ import annotations

import logging
import math
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from gdlab.results import write_failure
from gdlab.sweeps.jobs import RANKED

if TYPE_CHECKING:
    from gdlab.events import RunResult

log = logging.getLogger("gdlab")


def record_failure(run_dir: Path, error: BaseException) -> None:
    """metrics.json for a job that raised: status `failed` and the error, so the summary shows it.

    The other keys are those of a finished run's metrics.json, null where unknown
    (`gdlab.results.failure_document`); the last logged point (if any) stays in the event
    files, where the summary finds it.
    """
    write_failure(Path(run_dir), error)


def job_failed(run_dir: Path, error: BaseException) -> float:
    """Handle a job that raised inside a multirun: log it, record it, let the sweep go on.

    A user mistake (GdlabError) is one line; anything else keeps its traceback in the log.
    Returns the value an Optuna sweeper minimises: infinity, never the best.
    """
    from gdlab.errors import GdlabError

    if isinstance(error, GdlabError):
        log.error("gdlab: error: %s", error)
    else:
        log.error("gdlab: job failed\n%s", "".join(traceback.format_exception(error)).rstrip())
    try:
        record_failure(run_dir, error)
    except OSError as err:  # the run directory itself is the problem: the summary says missing
        log.error("gdlab: cannot record the failure in %s: %s", run_dir, err)
    return math.inf


def objective_value(result: RunResult) -> float:
    """What a job returns to Hydra (an Optuna sweeper minimises it): the run's score, the
    number gdlab ranks by (`gdlab.rules.score`), so Hydra's best and gdlab's are the same
    run; infinity for one that diverged, failed or was interrupted."""
    if result.status in RANKED and not math.isnan(result.score):
        return float(result.score)
    return math.inf
