"""A job that raised inside a multirun: logged, recorded in its metrics.json, never fatal.

Also what a job returns to Hydra (`objective_value`), which an Optuna sweeper minimises, and
what the sweep callback does around an Optuna search: refuse sweep settings its plugins turn
into tracebacks (`check_sweep`), and never present a failed trial as the best (`optuna_start`,
`optuna_end`: with every trial failed or diverged, one line says there is no best).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdlab.atomic import DiskFull
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
    except (OSError, DiskFull) as err:  # the run directory itself: the summary says missing
        log.error("gdlab: cannot record the failure in %s: %s", run_dir, err)
    return math.inf


def objective_value(result: RunResult) -> float:
    """What a job returns to Hydra (an Optuna sweeper minimises it): the run's score, the
    number gdlab ranks by (`gdlab.rules.score`), so Hydra's best and gdlab's are the same
    run; infinity for one that diverged, failed or was interrupted."""
    if result.status in RANKED and not math.isnan(result.score):
        return float(result.score)
    return math.inf


# ---------------------------------------------------------------- an Optuna search's best

#: the logger of hydra-optuna-sweeper's sweep (it logs "Best parameters" and "Best value")
OPTUNA_LOGGER = "hydra_plugins.hydra_optuna_sweeper._impl"
#: the file Optuna's sweeper writes in the sweep directory
OPTUNA_RESULTS = "optimization_results.yaml"


def _target(config: Any, group: str) -> str:
    from omegaconf import OmegaConf

    return str(OmegaConf.select(config, f"hydra.{group}._target_", default="") or "")


def is_optuna(config: Any) -> bool:
    """Whether this multirun's sweeper is hydra-optuna-sweeper's (hparams_search=optuna)."""
    return "optuna" in _target(config, "sweeper").lower()


def _count_problem(key: str, value: Any, allowed: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return None
    return f"{key}={value!r} is not allowed: {allowed}"


def check_sweep(config: Any) -> None:
    """Refuse, before the multirun starts, the sweep settings its plugins turn into
    tracebacks: Optuna's `n_trials` or `n_jobs` below 1, joblib's `n_jobs=0`."""
    from omegaconf import OmegaConf

    from gdlab.errors import GdlabError

    if is_optuna(config):
        checks = (
            ("n_trials", "the number of trials to run, an integer >= 1"),
            ("n_jobs", "the trials Optuna asks for at once, an integer >= 1"),
        )
        for name, allowed in checks:
            value = OmegaConf.select(config, f"hydra.sweeper.{name}")
            message = _count_problem(f"hydra.sweeper.{name}", value, allowed)
            if message is not None:
                raise GdlabError(message)
    if _target(config, "launcher").endswith("JoblibLauncher"):
        from hydra_plugins.gdlab_launchers.joblib_launcher import check_n_jobs

        check_n_jobs(OmegaConf.select(config, "hydra.launcher.n_jobs"))


class OptunaBest(logging.Filter):
    """Holds the Optuna sweeper's "Best parameters" line until its "Best value" line says
    whether there is a best: a trial whose value is finite. Without one (every trial failed
    or diverged, each scored infinity) both lines are dropped: the end of the multirun says so
    in one line (`optuna_end`) instead of presenting a failed trial as the best."""

    def __init__(self) -> None:
        super().__init__()
        self.held: logging.LogRecord | None = None
        self.no_best = False

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "gdlab_released", False):
            return True
        message = record.getMessage()
        if message.startswith("Best parameters:"):
            self.held = record
            return False
        if not message.startswith("Best value:"):
            return True
        held, self.held = self.held, None
        try:
            value = float(message.split(":", 1)[1])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            self.no_best = True
            return False
        if held is not None:  # the held line first, in its place
            held.gdlab_released = True
            logging.getLogger(record.name).handle(held)
        return True


_filter: OptunaBest | None = None


def optuna_start(config: Any) -> None:
    """At the start of a multirun (the sweep callback): refuse bad sweep settings
    (`check_sweep`) and, for an Optuna search, hold back a best that is no best."""
    global _filter
    check_sweep(config)
    if is_optuna(config):
        optuna_end_filter()
        _filter = OptunaBest()
        logging.getLogger(OPTUNA_LOGGER).addFilter(_filter)


def optuna_end_filter() -> None:
    global _filter
    if _filter is not None:
        logging.getLogger(OPTUNA_LOGGER).removeFilter(_filter)
        _filter = None


def optuna_end(config: Any, summary: Any = None) -> str | None:
    """At the end of an Optuna search (the sweep callback): when no trial has a finite value,
    rewrite `optimization_results.yaml` to say there is no best (no failed trial's parameters
    under `best_params`) and print one line saying so; returns that line (None: a best)."""
    optuna_end_filter()
    if not is_optuna(config):
        return None
    from omegaconf import OmegaConf

    path = Path(str(OmegaConf.select(config, "hydra.sweep.dir", default="."))) / OPTUNA_RESULTS
    try:
        results = OmegaConf.to_container(OmegaConf.load(path))
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or "best_value" not in results:
        return None  # a multi-objective study's Pareto front, or not Optuna's file
    best = results.get("best_value")
    if isinstance(best, int | float) and math.isfinite(best):
        return None
    line = f"gdlab: Optuna has no best trial: {no_best_reason(summary)}"
    results.update(best_params=None, best_value=None, note=line.removeprefix("gdlab: "))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(results)), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:  # the line below still says it; the file keeps Optuna's words
        tmp.unlink(missing_ok=True)
        log.error("gdlab: cannot rewrite %s: %s", path, err)
    print(line, file=sys.stderr, flush=True)
    return line


def no_best_reason(summary: Any) -> str:
    """`none of its 20 trials finished or converged (20 failed)`."""
    rows = list(getattr(summary, "rows", None) or [])
    if not rows:
        return "no trial finished or converged (each scored infinity)"
    counts: dict[str, int] = {}
    for row in rows:
        status = str(getattr(row, "status", "unknown"))
        counts[status] = counts.get(status, 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    every = "its trial" if len(rows) == 1 else f"its {len(rows)} trials"
    return f"none of {every} finished or converged ({tally})"
