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


#: files a sweep directory holds beside its jobs: Hydra's record of the sweep (the basic and
#: population sweepers write it when the sweep starts) and gdlab's summary (when it ends)
SWEEP_MARKS = ("multirun.yaml", "summary.csv")
#: files of a sweep directory someone may give instead of the directory itself
SWEEP_FILES = ("multirun.yaml", "summary.csv", "summary.md", "lr.png")


def sweep_of(job_dir: Path, top: Path) -> Path:
    """The sweep directory a job directory belongs to: the nearest folder above it, up to
    `top`, that holds a SWEEP_MARKS file; else the folder the job directory is in."""
    job_dir, top = Path(job_dir), Path(top)
    if job_dir == top or top not in job_dir.parents:
        return top if job_dir == top else job_dir.parent
    for folder in job_dir.parents:
        if any((folder / mark).exists() for mark in SWEEP_MARKS):
            return folder
        if folder == top:
            break
    return job_dir.parent


def sweeps_under(path: Path) -> list[Path]:
    """The sweep directories at or under `path`, each once, sorted: `[path]` for a sweep
    directory, several for a folder of sweeps such as outputs/multirun/<date>."""
    path = Path(path)
    if (path / "multirun.yaml").exists():
        return [path]  # Hydra's own sweep, even one whose job directories lie deeper
    return sorted({sweep_of(job, path) for job in find_job_dirs(path)})


def sweep_dirs(path: Path, single_run_hint: str) -> list[Path]:
    """The sweeps `path` holds: `[path]` for a sweep directory, each sweep of a folder of
    sweeps (outputs/multirun/<date>); otherwise one line saying what `path` is.
    `single_run_hint` says what to do with a single run's directory."""
    from gdlab.errors import GdlabError

    path = Path(path)
    wanted = "give a sweep directory, such as outputs/multirun/<date>/<time>-<pid>"
    if path.is_file() or (path.exists() and not path.is_dir()):
        if path.name in SWEEP_FILES and path.parent.is_dir():
            wanted = f"give the sweep directory it is in, {path.parent}"
        raise GdlabError(f"{path} is a file, not a sweep directory; {wanted}")
    if not path.is_dir():
        raise GdlabError(f"{path}: no such directory ({wanted})")
    if (path / "metrics.json").exists() and (path / ".hydra").is_dir():
        if any((path.parent / mark).exists() for mark in SWEEP_MARKS):
            single_run_hint = f"its sweep is {path.parent}"
        raise GdlabError(f"{path} is a single run's directory; {single_run_hint}")
    sweeps = sweeps_under(path)
    if not sweeps or not find_job_dirs(sweeps[0]):
        raise GdlabError(f"{path}: no job directories (none with a .hydra/overrides.yaml) under it")
    return sweeps


def name_sweeps(sweeps: Sequence[Path], shown: int = 5) -> str:
    """`a, b, c and 4 more`: the first `shown` sweep directories."""
    names = ", ".join(str(s) for s in sweeps[:shown])
    return names + (f" and {len(sweeps) - shown} more" if len(sweeps) > shown else "")


def check_sweep_dir(path: Path, single_run_hint: str) -> Path:
    """The one sweep `path` holds (`path` itself, or the only sweep in a folder of sweeps);
    otherwise one line saying what it is, and for a folder of several sweeps which they are
    (never one table of several sweeps). `single_run_hint` says what to do with a single
    run's directory."""
    from gdlab.errors import GdlabError

    sweeps = sweep_dirs(path, single_run_hint)
    if len(sweeps) > 1:
        raise GdlabError(
            f"{path} holds {len(sweeps)} sweeps, not one: {name_sweeps(sweeps)}; give one of them"
        )
    return sweeps[0]
