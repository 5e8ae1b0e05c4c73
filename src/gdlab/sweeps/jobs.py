"""A sweep's job directories and the row read back from each: what the other sweep modules share.

A job directory is one with a `.hydra/overrides.yaml` under the sweep directory. `JobRow` is one
job (or one member of a population job) as the summary and the lr plot see it. Nothing here
reads a result; `gdlab.sweeps.summary` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gdlab.rules import FAILED, RANKED, UNRANKED_ORDER

__all__ = ["FAILED", "RANKED", "UNRANKED_ORDER"]  # the rule book's, re-exported for the sweep


@dataclass
class JobRow:
    """One job of a sweep, read back from its directory."""

    job: str  # the job directory, relative to the sweep directory
    num: int | None
    overrides: list[str]
    status: str
    steps: int | None = None
    final_loss: float | None = None
    minimum: float | None = None
    distance_to_minimizer: float | None = None
    wall_time_s: float | None = None
    lr: float | None = None
    error: str | None = None
    note: str | None = None  # where a value came from when it is not metrics.json
    rank: int | None = None
    values: dict[str, str] = field(default_factory=dict)  # override key -> value text
    #: the problem the job trained (objective with its fields and data): ranks are per problem
    problem: str = ""
    #: f(theta) - f* in float64 at the final parameters; None where f* is unknown or the run
    #: has no result
    excess_loss: float | None = None
    #: the largest stable lr for the job's update rule (None where the curvature is unknown)
    lr_limit: float | None = None
    momentum: float | None = None  # the job's optimizer.momentum (for per-momentum lines)
    #: the score the job returned to the sweeper, by which it is ranked (lower is better)
    score: float | None = None
    dtype: str | None = None
    #: the final measurement of sharpness.every > 0: the Hessian's largest eigenvalue, and
    #: the largest stable lr of the job's rule there (gdlab.curvature)
    sharpness_lambda_max: float | None = None
    sharpness_lr_limit: float | None = None


def split_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def override_keys(rows: Sequence[JobRow]) -> list[str]:
    """The override keys of a sweep, those whose value varies across jobs first."""
    by_columns = getattr(rows, "override_keys", None)  # a table's rows (sweeps.summary.Rows)
    if callable(by_columns):
        return list(by_columns())
    keys: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.values.items():
            keys.setdefault(key, set()).add(value)
    varying = sorted(k for k, v in keys.items() if len(v) > 1)
    fixed = sorted(k for k, v in keys.items() if len(v) <= 1)
    return varying + fixed


def varying_keys(rows: Sequence[JobRow]) -> list[str]:
    """The override keys whose value differs between jobs (a key some jobs lack counts)."""
    by_columns = getattr(rows, "varying_keys", None)  # a table's rows (sweeps.summary.Rows)
    if callable(by_columns):
        return list(by_columns())
    keys = {k for row in rows for k in row.values}
    return sorted(k for k in keys if len({row.values.get(k) for row in rows}) > 1)


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory under `sweep_dir`: those with a `.hydra/overrides.yaml`."""
    return sorted(p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/overrides.yaml"))


def load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=loader)


def job_num(job_dir: Path) -> int | None:
    """The job's number in its sweep (`hydra.job.num` in `.hydra/hydra.yaml`), if readable."""
    try:
        hydra_yaml = load_yaml(Path(job_dir) / ".hydra" / "hydra.yaml")
        return int(hydra_yaml["hydra"]["job"]["num"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def check_sweep_dir(path: Path, single_run_hint: str) -> Path:
    """`path` if it is a sweep directory (one with job directories under it); otherwise one
    line saying what it is. `single_run_hint` says what to do with a single run's directory."""
    from gdlab.errors import GdlabError

    path = Path(path)
    if not path.is_dir():
        raise GdlabError(f"{path}: no such directory (give a sweep directory)")
    if (path / "metrics.json").exists() and (path / ".hydra").is_dir():
        raise GdlabError(f"{path} is a single run's directory; {single_run_hint}")
    if not find_job_dirs(path):
        raise GdlabError(f"{path}: no job directories (none with a .hydra/overrides.yaml) under it")
    return path
