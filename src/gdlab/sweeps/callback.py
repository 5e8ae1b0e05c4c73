"""The Hydra callback (configs/config.yaml, hydra.callbacks): the summary when a multirun ends.

Hydra instantiates it for every run, so this module (and what it imports) stays light: no
torch, no matplotlib, no TensorBoard at import time.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gdlab.sweeps.summary import SweepSummary, print_summary, write_summary

#: the summary of the last multirun that ended in this process (`last_sweep_failed`)
_last_summary: SweepSummary | None = None


#: whether the last multirun's summary could not be written (the exit code says so)
_summary_lost = False


def last_sweep_failed() -> bool:
    """Whether the multirun that just ended in this process had a failed (or lost) job, or
    could not write its summary."""
    return _summary_lost or (_last_summary is not None and bool(_last_summary.failed))


class SweepSummaryCallback(Callback):
    """Hydra callback (configs/config.yaml, hydra.callbacks): the summary when a multirun ends,
    and a torch thread limit when each job starts under a parallel launcher."""

    def __init__(self, top: int = 10) -> None:
        self.top = top

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from gdlab.entry import UserMistake
        from gdlab.errors import GdlabError
        from gdlab.sweeps.failures import optuna_start
        from gdlab.threads import sweep_thread_note, usable_cpus

        try:  # Optuna's n_trials/n_jobs < 1: one line, before anything runs
            optuna_start(config)
        except GdlabError as err:  # Hydra turns an Exception raised here into a warning
            raise UserMistake(str(err)) from None
        note = sweep_thread_note(config.hydra.launcher, usable_cpus())
        if note:
            print(note, flush=True)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from gdlab.threads import limit_torch_threads

        limit_torch_threads(config.hydra)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from gdlab.sweeps.failures import optuna_end

        try:
            self._summarize(config)
        finally:  # an Optuna search with no finished trial: "no best", in one line
            optuna_end(config, _last_summary)

    def _summarize(self, config: DictConfig) -> None:
        global _last_summary, _summary_lost
        from gdlab.errors import GdlabError

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        plot = bool(OmegaConf.select(config, "logger.plots", default=True))
        try:
            summary = write_summary(sweep_dir, plot=plot)
        except (GdlabError, OSError) as err:  # one line: the jobs' results are on disk
            _last_summary, _summary_lost = None, True
            print(f"gdlab: could not write the sweep summary: {err}", file=sys.stderr)
            print(f"gdlab: the jobs' results are kept; gdlab-report {sweep_dir}", file=sys.stderr)
            return
        except Exception:  # a bug: its traceback; `gdlab-report` can retry
            _last_summary, _summary_lost = None, True
            print("gdlab: could not write the sweep summary:", file=sys.stderr)
            traceback.print_exc()
            return
        _last_summary = summary
        print_summary(summary, top=self.top)
        if summary.failed:
            names = ", ".join(r.job for r in summary.failed[:5])
            more = "" if len(summary.failed) <= 5 else f" and {len(summary.failed) - 5} more"
            print(f"gdlab: {len(summary.failed)} job(s) failed: {names}{more}", file=sys.stderr)
