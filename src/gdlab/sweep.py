"""Sweeps you can compare: job directory names, failed jobs, and the sweep summary.

A multirun (`gdlab -m ...`) writes one complete run directory per job under the sweep
directory. When the sweep ends, Hydra calls `SweepSummary.on_multirun_end`, which reads every
job's `.hydra/` and `metrics.json` back from disk and writes `summary.csv` and `summary.md`
beside them, best job first. Reading from disk (not from Hydra's in-memory job returns) is what
lets `gdlab-report DIR` rebuild the same table later, for any sweep, also one whose jobs were
interrupted, and makes it work the same for the basic, joblib and submitit launchers.

This module is imported by every run (Hydra instantiates the callback up front), so it must
stay light: no torch, no matplotlib, no TensorBoard at import time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

if TYPE_CHECKING:
    from gdlab.events import RunResult

log = logging.getLogger("gdlab")

#: statuses that count as a result and may be ranked; every other one is listed, never ranked
RANKED = ("finished", "converged")
#: statuses that make a sweep's exit code non-zero (diverged is a result, not a failure);
#: a job without metrics.json is "interrupted"
FAILED = ("failed", "interrupted")
#: unranked rows are listed in this order after the ranked ones
UNRANKED_ORDER = ("diverged", "interrupted", "failed")
#: longest job directory name kept as is (file systems allow 255 bytes per name)
MAX_DIRNAME = 120
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
LR_PLOT = "lr.png"
LR_KEY = "optimizer.lr"
#: a population job's per-member results (hydra/sweeper=population, hydra_plugins/...)
POPULATION_JSON = "population.json"


# --------------------------------------------------------------------------- job directories

#: a decimal with 10 or more digits after the point: machine-made (Hydra's float `range`,
#: Optuna's samples), e.g. 0.15000000000000002 or 0.018662266976517967
_LONG_DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d{10,}(?:[eE][+-]?\d+)?(?![\w.])")


def tidy_numbers(text: str) -> str:
    """Long machine-made decimals in `text` to 6 significant digits (0.15000000000000002 is
    0.15), for names and tables people read; summary.csv keeps the exact values."""
    return _LONG_DECIMAL.sub(lambda m: format(float(m.group()), ".6g"), text)


def job_dirname(override_dirname: Any, sweep_dir: Any = None, num: Any = None) -> str:
    """hydra.sweep.subdir: the job's overrides as a readable, safe and unique directory name.

    Hydra's `override_dirname` (`objective=quadratic,optimizer.lr=0.1`) is kept as it is when it
    is a usable name; long machine-made decimals are cut to 6 significant digits
    (`tidy_numbers`), a `/` becomes `_`, a name longer than MAX_DIRNAME keeps its start plus a
    hash of the whole, and a job without overrides is `defaults`. When another job of the same
    sweep already owns the name (the same overrides twice, or an Optuna trial repeating a
    setting), `-job<num>` is appended, so two jobs never share a directory.
    """
    name = tidy_numbers(str(override_dirname or ""))
    name = name.replace(os.sep, "_").replace("\0", "_").strip()
    if name in ("", ".", ".."):
        name = "defaults" if name == "" else f"_{name}"
    if len(name.encode("utf-8")) > MAX_DIRNAME:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]
        name = name.encode("utf-8")[: MAX_DIRNAME - 12].decode("utf-8", "ignore") + "~" + digest
    if sweep_dir is None or num is None or not Path(str(sweep_dir)).is_dir():
        return name
    return _claim(Path(str(sweep_dir)), name, int(num))


def _claim(sweep_dir: Path, name: str, num: int) -> str:
    """Create `sweep_dir/name` for job `num`, or a numbered variant if another job has it.

    `os.mkdir` is atomic, so parallel jobs (joblib, submitit) cannot both win the same name.
    The same job run again (a requeued SLURM job) finds its own number in `.hydra/hydra.yaml`
    and keeps its directory.
    """
    for candidate in (name, f"{name}-job{num}"):
        path = sweep_dir / candidate
        try:
            path.mkdir()
            return candidate
        except FileExistsError:
            if _job_num(path) == num:
                return candidate
    return f"{name}-job{num}"


def _job_num(job_dir: Path) -> int | None:
    try:
        hydra_yaml = _load_yaml(job_dir / ".hydra" / "hydra.yaml")
        return int(hydra_yaml["hydra"]["job"]["num"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


# --------------------------------------------------------------------------- hparams of a job


def override_hparams(cfg: DictConfig, overrides: Iterable[str]) -> dict[str, Any]:
    """The composed value of every key the command line set, flattened for TensorBoard HParams.

    `optimizer.lr=0.1` gives `{"optimizer.lr": 0.1}` read back from the config (so `1e-1` and
    `0.1` agree); a group choice such as `objective=quadratic` gives its option name. Values are
    what HParams can show: numbers, strings, booleans (lists become their YAML text).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hparams: dict[str, Any] = {}
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # an override Hydra accepted but we cannot re-parse: skip the extras
        return hparams
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() or key.startswith("hydra") or not key:
            continue
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None or isinstance(value, DictConfig):
            value = override.value()  # a config group: its option name
        hparam = hparam_value(value)
        if hparam is not None:
            hparams[key] = hparam
    return hparams


def hparam_value(value: Any) -> float | int | str | bool | None:
    """A value HParams can hold: numbers, strings and booleans as they are, the rest as text."""
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    value = getattr(value, "value", value)  # config enums
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


# --------------------------------------------------------------------------- failed jobs


def record_failure(run_dir: Path, error: BaseException) -> None:
    """metrics.json for a job that raised: status `failed` and the error, so the summary shows it.

    The other keys are those of a finished run's metrics.json, null where unknown; the last
    logged point (if any) stays in the event files, where the summary finds it.
    """
    from gdlab.sinks.metrics import write_json_atomic

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    document = {
        "status": "failed",
        "error": f"{type(error).__name__}: {message}" if message else type(error).__name__,
        "steps": None,
        "final_loss": None,
        "params": {},
        "grad_norm": None,
        "distance_to_minimizer": None,
        "minimum": None,
        "stop_reason": None,
        "wall_time_s": None,
        "steps_per_s": None,
        "objective": None,
        "device": None,
        "dtype": None,
    }
    write_json_atomic(run_dir / "metrics.json", document)


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
    """What a job returns to Hydra (an Optuna sweeper minimises it): the final loss of a run
    that finished or converged, infinity for one that diverged or was interrupted."""
    if result.status in RANKED and math.isfinite(result.final_loss):
        return float(result.final_loss)
    return math.inf


# --------------------------------------------------------------------------- the summary


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
    stability_lr: float | None = None  # 2/L on a quadratic, where the job knows it

    @property
    def excess_loss(self) -> float | None:
        """final loss minus the known minimum (the final loss itself when it is unknown)."""
        if self.final_loss is None:
            return None
        return self.final_loss - self.minimum if self.minimum is not None else self.final_loss


def split_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory under `sweep_dir`: those with a `.hydra/overrides.yaml`."""
    return sorted(p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/overrides.yaml"))


def _load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=loader)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def load_job(job_dir: Path, sweep_dir: Path) -> JobRow:
    """Read one job back: its overrides and config from `.hydra/`, its result from metrics.json.

    A job without metrics.json was interrupted (or is still running); its steps and loss then
    come from the last point in its event files, when it logged any.
    """
    job_dir, sweep_dir = Path(job_dir), Path(sweep_dir)
    name = job_dir.relative_to(sweep_dir).as_posix() if job_dir != sweep_dir else "."
    try:
        overrides = [str(o) for o in _load_yaml(job_dir / ".hydra" / "overrides.yaml") or []]
    except (OSError, yaml.YAMLError):
        overrides = []
    row = JobRow(job=name, num=_job_num(job_dir), overrides=overrides, status="interrupted")
    row.values = dict(split_override(o) for o in overrides)
    try:
        config = _load_yaml(job_dir / ".hydra" / "config.yaml") or {}
        row.lr = _number((config.get("optimizer") or {}).get("lr"))
    except (OSError, AttributeError, yaml.YAMLError):
        pass
    try:
        metrics = json.loads((job_dir / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        metrics = None
    except (OSError, ValueError) as err:
        metrics = {"status": "failed", "error": f"unreadable metrics.json: {err}"}
    if metrics is not None:
        row.status = str(metrics.get("status") or "failed")
        row.steps = metrics.get("steps")
        row.final_loss = _number(metrics.get("final_loss"))
        row.minimum = _number(metrics.get("minimum"))
        row.distance_to_minimizer = _number(metrics.get("distance_to_minimizer"))
        row.wall_time_s = _number(metrics.get("wall_time_s"))
        row.error = metrics.get("error") or (
            metrics.get("stop_reason") if row.status not in RANKED else None
        )
        if row.status == "diverged" and row.final_loss is None:
            row.final_loss = math.inf  # JSON has no infinity; a diverged loss is not finite
    if row.status not in RANKED and row.steps is None:
        last = last_logged_point(job_dir)
        if last is not None:
            row.steps, row.final_loss = last
            row.note = "last logged point"
    return row


def last_logged_point(job_dir: Path) -> tuple[int, float] | None:
    """The step and loss of the last `train/loss` point in a job's event files, if any."""
    files = sorted(Path(job_dir).glob("events.out.tfevents.*"))
    if not files:
        return None
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    last: tuple[int, float] | None = None
    for path in files:
        try:
            for event in LegacyEventFileLoader(str(path)).Load():  # raw: simple_value kept
                for value in event.summary.value:
                    if value.tag == "train/loss" and (last is None or event.step >= last[0]):
                        last = (int(event.step), float(value.simple_value))
        except Exception:  # a truncated file from a killed job: keep what was read
            continue
    return last


def _sort_key(row: JobRow) -> tuple[float, float, float, int]:
    excess = row.excess_loss
    excess = math.inf if excess is None or math.isnan(excess) else excess
    distance = math.inf if row.distance_to_minimizer is None else row.distance_to_minimizer
    steps = math.inf if row.steps is None else row.steps
    return (excess, distance, steps, row.num if row.num is not None else 1 << 30)


def rank_jobs(rows: Sequence[JobRow]) -> list[JobRow]:
    """Best first: finished and converged jobs by excess loss (then distance, then fewer steps);
    then diverged, interrupted and failed jobs, unranked, in job order."""
    ranked = sorted((r for r in rows if r.status in RANKED), key=_sort_key)
    for position, row in enumerate(ranked, start=1):
        row.rank = position

    def unranked_key(row: JobRow) -> tuple[int, int, str]:
        order = UNRANKED_ORDER.index(row.status) if row.status in UNRANKED_ORDER else 0
        return (order, row.num if row.num is not None else 1 << 30, row.job)

    rest = sorted((r for r in rows if r.status not in RANKED), key=unranked_key)
    for row in rest:
        row.rank = None
    return [*ranked, *rest]


def load_population(job_dir: Path, sweep_dir: Path) -> list[JobRow] | None:
    """A population job's members (hydra/sweeper=population), one row each, as its own plain
    job would appear; None when `job_dir` has no readable population.json (a plain job, or a
    population job that never got to write it: `load_job` then reports it)."""
    job_dir, sweep_dir = Path(job_dir), Path(sweep_dir)
    try:
        data = json.loads((job_dir / POPULATION_JSON).read_text(encoding="utf-8"))
        columns = [data[k] for k in ("overrides", "status", "steps", "final_loss", "lr")]
        columns += [data[k] for k in ("distance_to_minimizer", "error", "stop_reason")]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    name = job_dir.relative_to(sweep_dir).as_posix() if job_dir != sweep_dir else "."
    num, per_member = _job_num(job_dir), _number(data.get("wall_time_per_member_s"))
    minimum, stability = _number(data.get("minimum")), _number(data.get("stability_lr"))
    rows = []
    for i, (overrides, status, steps, loss, lr, distance, error, reason) in enumerate(
        zip(*columns, strict=True)
    ):
        row = JobRow(f"{name}#{i}", num, [str(o) for o in overrides], str(status or "failed"))
        row.values = dict(split_override(o) for o in row.overrides)
        row.steps, row.final_loss, row.lr = steps, _number(loss), _number(lr)
        row.minimum, row.distance_to_minimizer = minimum, _number(distance)
        row.wall_time_s, row.stability_lr = per_member, stability
        row.error = error or (reason if row.status not in RANKED else None)
        if row.status == "diverged" and row.final_loss is None:
            row.final_loss = math.inf  # JSON has no infinity; a diverged loss is not finite
        rows.append(row)
    return rows


def collect_jobs(sweep_dir: Path) -> list[JobRow]:
    """Every job of a sweep, read back and ranked; a population job gives a row per member."""
    sweep_dir = Path(sweep_dir)
    rows: list[JobRow] = []
    for job_dir in find_job_dirs(sweep_dir):
        members = load_population(job_dir, sweep_dir)
        rows.extend(members if members is not None else [load_job(job_dir, sweep_dir)])
    return rank_jobs(rows)


def override_keys(rows: Sequence[JobRow]) -> list[str]:
    """The override keys of a sweep, those whose value varies across jobs first."""
    keys: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.values.items():
            keys.setdefault(key, set()).add(value)
    varying = sorted(k for k, v in keys.items() if len(v) > 1)
    fixed = sorted(k for k, v in keys.items() if len(v) <= 1)
    return varying + fixed


def varying_keys(rows: Sequence[JobRow]) -> list[str]:
    """The override keys whose value differs between jobs (a key some jobs lack counts)."""
    keys = {k for row in rows for k in row.values}
    return sorted(k for k in keys if len({row.values.get(k) for row in rows}) > 1)


def _fmt(value: float | int | None, spec: str = ".6g") -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value) if spec == "r" else format(value, spec)  # "r": every digit, for CSV


CSV_COLUMNS = (
    "rank",
    "job",
    "overrides",
    "status",
    "steps",
    "final_loss",
    "excess_loss",
    "distance_to_minimizer",
    "wall_time_s",
    "lr",
    "error",
)


def summary_csv(rows: Sequence[JobRow]) -> str:
    """summary.csv: one row per job, best first; one extra column per override key."""
    keys = override_keys(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS[:3], *keys, *CSV_COLUMNS[3:]])
    for row in rows:
        writer.writerow(
            [
                row.rank or "",
                row.job,
                " ".join(row.overrides),
                *(row.values.get(k, "") for k in keys),
                row.status,
                "" if row.steps is None else row.steps,
                _fmt(row.final_loss, "r"),
                _fmt(row.excess_loss, "r"),
                _fmt(row.distance_to_minimizer, "r"),
                _fmt(row.wall_time_s, ".4f"),
                _fmt(row.lr, "r"),
                "; ".join(x for x in (row.error, row.note) if x),
            ]
        )
    return out.getvalue()


def markdown_table(rows: Sequence[JobRow], limit: int | None = None) -> str:
    """The summary as a Markdown table (the first `limit` rows), for summary.md and the console."""
    keys = varying_keys(rows) or override_keys(rows)
    show_excess = any(r.minimum is not None for r in rows)
    header = ["rank", *keys, "status", "steps", "final loss"]
    header += ["excess loss"] if show_excess else []
    header += ["distance to min", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    shown = rows if limit is None else rows[:limit]
    for row in shown:
        status = row.status + (" *" if row.note else "")
        cells = [str(row.rank or "-"), *(tidy_numbers(row.values.get(k, "")) for k in keys)]
        cells.append(status)
        cells += [_fmt(row.steps, "d"), _fmt(row.final_loss)]
        cells += [_fmt(row.excess_loss, ".3g")] if show_excess else []
        cells += [_fmt(row.distance_to_minimizer, ".3g"), _fmt(row.wall_time_s, ".3f")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if limit is not None and len(rows) > limit:
        lines.append(f"| … {len(rows) - limit} more in summary.md |" + " |" * (len(header) - 1))
    return "\n".join(lines)


def counts(rows: Sequence[JobRow]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for row in rows:
        tally[row.status] = tally.get(row.status, 0) + 1
    return tally


def headline(rows: Sequence[JobRow]) -> str:
    """`N runs: 3 converged, 1 diverged; best: optimizer.lr=0.5 (loss 5)`.

    A row is a job of a plain multirun or a member of a population job: "runs" covers both.
    """
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts(rows).items()))
    text = f"{len(rows)} run{'s' if len(rows) != 1 else ''}: {tally or 'none'}"
    best = rows[0] if rows and rows[0].rank == 1 else None
    if best is not None:
        keys = varying_keys(rows)  # what sets the best job apart; all its overrides if none
        setting = " ".join(
            f"{k}={tidy_numbers(best.values[k])}" for k in keys if k in best.values
        ) or " ".join(best.overrides)
        text += f"; best: {setting or best.job} (loss {_fmt(best.final_loss)})"
    else:
        text += "; no job finished, none ranked"
    return text


def summary_markdown(sweep_dir: Path, rows: Sequence[JobRow]) -> str:
    lines = [
        f"# Sweep {Path(sweep_dir).name}",
        "",
        headline(rows),
        "",
        "Ranked by excess loss (final loss minus the known minimum, or the final loss where the "
        "minimum is unknown), then distance to the minimiser, then fewer steps. Diverged, "
        "interrupted and failed jobs are listed after, never ranked. "
        "`*`: steps and loss of the last logged point (the job did not finish).",
        "",
        markdown_table(rows),
        "",
    ]
    failures = [r for r in rows if r.error and r.status not in RANKED]
    if failures:
        lines += ["## Why jobs did not finish", ""]
        lines += [f"- `{r.job}` ({r.status}): {r.error}" for r in failures]
        lines.append("")
    return "\n".join(lines)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class SweepSummary:
    """What `write_summary` produced: the rows and the files."""

    sweep_dir: Path
    rows: list[JobRow]
    csv_path: Path
    md_path: Path
    plot_path: Path | None = None

    @property
    def failed(self) -> list[JobRow]:
        return [r for r in self.rows if r.status in FAILED]


def write_summary(sweep_dir: Path, plot: bool = True) -> SweepSummary:
    """Read every job of the sweep back and write summary.csv, summary.md (and lr.png)."""
    sweep_dir = Path(sweep_dir)
    rows = collect_jobs(sweep_dir)
    csv_path, md_path = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD
    _write_text_atomic(csv_path, summary_csv(rows))
    _write_text_atomic(md_path, summary_markdown(sweep_dir, rows))
    summary = SweepSummary(sweep_dir, rows, csv_path, md_path)
    if plot and lr_varies(rows):
        from gdlab.sinks.plots import draw_lr_plot  # matplotlib only when there is a plot

        summary.plot_path = draw_lr_plot(rows, sweep_dir / LR_PLOT)
    return summary


def lr_varies(rows: Sequence[JobRow]) -> bool:
    return len({r.lr for r in rows if r.lr is not None}) > 1


def print_summary(summary: SweepSummary, top: int = 10, stream: Any = None) -> None:
    """The top of the table and where the rest is, on the console."""
    stream = stream or sys.stdout
    print(f"gdlab: sweep {summary.sweep_dir}: {headline(summary.rows)}", file=stream)
    if summary.rows and top > 0:
        print(markdown_table(summary.rows, limit=top), file=stream)
    written = [summary.csv_path, summary.md_path, summary.plot_path]
    print("gdlab: wrote " + ", ".join(str(p) for p in written if p is not None), file=stream)
    stream.flush()


# --------------------------------------------------------------------------- the Hydra callback

_last_summary: SweepSummary | None = None


def last_sweep_failed() -> bool:
    """Whether the multirun that just ended in this process had a failed (or lost) job."""
    return _last_summary is not None and bool(_last_summary.failed)


class SweepSummaryCallback(Callback):
    """Hydra callback (configs/config.yaml, hydra.callbacks): the summary when a multirun ends,
    and a torch thread limit when each job starts under a parallel launcher."""

    def __init__(self, top: int = 10) -> None:
        self.top = top

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from gdlab.threads import limit_torch_threads

        limit_torch_threads(config.hydra)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _last_summary
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        plot = bool(OmegaConf.select(config, "logger.plots", default=True))
        try:
            summary = write_summary(sweep_dir, plot=plot)
        except Exception:  # the jobs' results are on disk; `gdlab-report` can retry
            _last_summary = None
            print("gdlab: could not write the sweep summary:", file=sys.stderr)
            traceback.print_exc()
            return
        _last_summary = summary
        print_summary(summary, top=self.top)
        if summary.failed:
            names = ", ".join(r.job for r in summary.failed[:5])
            more = "" if len(summary.failed) <= 5 else f" and {len(summary.failed) - 5} more"
            print(f"gdlab: {len(summary.failed)} job(s) failed: {names}{more}", file=sys.stderr)
