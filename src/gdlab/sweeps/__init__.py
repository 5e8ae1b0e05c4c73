"""Sweeps you can compare: job directory names, failed jobs, and the sweep summary.

One job per module, each importing its siblings by their full path (never this package):

- `jobs`: JobRow, the statuses, the job directories of a sweep;
- `naming`: a job's overrides as its directory name (`hydra.sweep.subdir`);
- `hparams`: the hyperparameters of a job, for TensorBoard HParams;
- `failures`: a job that raised, recorded; what a job returns to Hydra;
- `summary`: every job read back from disk, ranked, written as summary.csv and summary.md;
- `lr_plot`: lr.png, final excess loss against learning rate, a panel per problem;
- `callback`: the Hydra callback that writes the summary when a multirun ends.

This package is imported by every run (Hydra instantiates the callback up front), so it stays
light: no torch, no matplotlib, no TensorBoard at import time. The names below are re-exported
for `from gdlab.sweeps import ...`.
"""

from gdlab.sweeps.callback import SweepSummaryCallback, last_sweep_failed
from gdlab.sweeps.failures import job_failed, objective_value, record_failure
from gdlab.sweeps.hparams import hparam_value, override_hparams
from gdlab.sweeps.jobs import FAILED, RANKED, JobRow, find_job_dirs, varying_keys
from gdlab.sweeps.naming import MAX_DIRNAME, job_dirname, tidy_numbers
from gdlab.sweeps.summary import (
    SweepSummary,
    collect_jobs,
    headline,
    print_summary,
    rank_jobs,
    write_summary,
)

__all__ = [
    "FAILED",
    "MAX_DIRNAME",
    "RANKED",
    "JobRow",
    "SweepSummary",
    "SweepSummaryCallback",
    "collect_jobs",
    "find_job_dirs",
    "headline",
    "hparam_value",
    "job_dirname",
    "job_failed",
    "last_sweep_failed",
    "objective_value",
    "override_hparams",
    "print_summary",
    "rank_jobs",
    "record_failure",
    "tidy_numbers",
    "varying_keys",
    "write_summary",
]
