"""The sweep summary: every job read back from disk, ranked, written as summary.csv and .md.

A multirun (`gdlab -m ...`) writes one complete run directory per job under the sweep
directory. `write_summary` reads every job's `.hydra/` and `metrics.json` back from disk and
writes `summary.csv` and `summary.md` beside them, best job first (and lr.png when the
learning rate varies). Reading from disk (not from Hydra's in-memory job returns) is what lets
`gdlab-report DIR` rebuild the same table later, for any sweep, also one whose jobs were
interrupted, and makes it work the same for the basic, joblib and submitit launchers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gdlab.results import read_metrics, read_population
from gdlab.rules import EPS, clamp_excess, rank_key, score
from gdlab.sweeps.jobs import (
    FAILED,
    RANKED,
    JobRow,
    find_job_dirs,
    job_num,
    load_yaml,
    override_keys,
    split_override,
    varying_keys,
)
from gdlab.sweeps.lr_plot import LR_PLOT, draw_lr_plot, lr_varies
from gdlab.sweeps.naming import tidy_numbers

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"


# --------------------------------------------------------------------------- reading jobs back


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
        overrides = [str(o) for o in load_yaml(job_dir / ".hydra" / "overrides.yaml") or []]
    except (OSError, yaml.YAMLError):
        overrides = []
    row = JobRow(job=name, num=job_num(job_dir), overrides=overrides, status="interrupted")
    row.values = dict(split_override(o) for o in overrides)
    try:
        config = load_yaml(job_dir / ".hydra" / "config.yaml") or {}
        row.lr = _number((config.get("optimizer") or {}).get("lr"))
        row.momentum = _number((config.get("optimizer") or {}).get("momentum"))
        fields = dict(config.get("objective") or {})
        fields.pop("_target_", None)
        dtype = (config.get("device") or {}).get("dtype")
        row.problem = problem_key(
            {"name": objective_choice(job_dir), "fields": fields, "dtype": dtype}
        )
    except (OSError, AttributeError, yaml.YAMLError):
        pass
    metrics = read_metrics(job_dir)  # None: no metrics.json; unreadable: a failed record
    if metrics is not None:
        row.status = str(metrics.get("status") or "failed")
        row.steps = metrics.get("steps")
        row.final_loss = _number(metrics.get("final_loss"))
        row.minimum = _number(metrics.get("minimum"))
        row.distance_to_minimizer = _number(metrics.get("distance_to_minimizer"))
        row.wall_time_s = _number(metrics.get("wall_time_s"))
        row.lr_limit = _number(metrics.get("lr_limit"))
        row.dtype = metrics.get("dtype")
        final = (metrics.get("sharpness") or {}).get("final") or {}
        row.sharpness_lambda_max = _number(final.get("lambda_max"))
        row.sharpness_lr_limit = _number(final.get("lr_limit"))
        row.error = metrics.get("error") or (
            metrics.get("stop_reason") if row.status not in RANKED else None
        )
        if row.status == "diverged" and row.final_loss is None:
            row.final_loss = math.inf  # JSON has no infinity; a diverged loss is not finite
        if isinstance(metrics.get("problem"), dict):
            row.problem = problem_key(metrics["problem"])
        _judge(row, metrics)
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


def load_population(job_dir: Path, sweep_dir: Path) -> list[JobRow] | None:
    """A population job's members (hydra/sweeper=population), one row each, as its own plain
    job would appear; None when `job_dir` has no readable population.json (a plain job, or a
    population job that never got to write it: `load_job` then reports it)."""
    job_dir, sweep_dir = Path(job_dir), Path(sweep_dir)
    data = read_population(job_dir)
    if data is None:
        return None
    columns = [data[k] for k in ("overrides", "status", "steps", "final_loss", "lr")]
    columns += [data[k] for k in ("distance_to_minimizer", "error", "stop_reason")]
    count = len(columns[0])
    columns += [data.get(k) or [None] * count for k in ("excess_loss", "score", "lr_limit")]
    columns += [data.get(f"sharpness_{k}") or [None] * count for k in ("lambda_max", "lr_limit")]
    name = job_dir.relative_to(sweep_dir).as_posix() if job_dir != sweep_dir else "."
    num, per_member = job_num(job_dir), _number(data.get("wall_time_per_member_s"))
    minimum, dtype = _number(data.get("minimum")), data.get("dtype")
    problem = data.get("problem")
    problem = problem_key(problem) if isinstance(problem, dict) else ""
    has_score = "score" in data
    rows = []
    for i, (overrides, status, steps, loss, lr, distance, error, reason, *judged) in enumerate(
        zip(*columns, strict=True)
    ):
        excess, run_score, limit, sharpness, sharpness_limit = judged
        row_sharpness = _number(sharpness), _number(sharpness_limit)
        row = JobRow(f"{name}#{i}", num, [str(o) for o in overrides], str(status or "failed"))
        row.values = dict(split_override(o) for o in row.overrides)
        row.steps, row.final_loss, row.lr = steps, _number(loss), _number(lr)
        row.minimum, row.distance_to_minimizer = minimum, _number(distance)
        row.wall_time_s, row.lr_limit, row.dtype = per_member, _number(limit), dtype
        row.momentum = _number(row.values.get("optimizer.momentum"))
        row.problem = problem
        row.sharpness_lambda_max, row.sharpness_lr_limit = row_sharpness
        row.error = error or (reason if row.status not in RANKED else None)
        if row.status == "diverged" and row.final_loss is None:
            row.final_loss = math.inf  # JSON has no infinity; a diverged loss is not finite
        record = {"excess_loss": excess, "score": run_score} if has_score else {}
        _judge(row, record)
        rows.append(row)
    momentum = _momentum_of(job_dir)
    for row in rows:
        if row.momentum is None:
            row.momentum = momentum
    return rows


def objective_choice(job_dir: Path) -> str | None:
    """The objective option a job's command chose (`.hydra/hydra.yaml`), as its run records
    it in metrics.json's `problem`: so a job that failed groups with its problem."""
    try:
        hydra_yaml = load_yaml(job_dir / ".hydra" / "hydra.yaml") or {}
        return str(hydra_yaml["hydra"]["runtime"]["choices"]["objective"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def _momentum_of(job_dir: Path) -> float | None:
    """optimizer.momentum of a job's config (the members' shared value)."""
    try:
        config = load_yaml(job_dir / ".hydra" / "config.yaml") or {}
        return _number((config.get("optimizer") or {}).get("momentum"))
    except (OSError, AttributeError, yaml.YAMLError):
        return None


def _judge(row: JobRow, record: dict[str, Any]) -> None:
    """The row's excess loss and score, as its run recorded them. Records from before gdlab
    kept a score (no `score` key) are judged here by the same rules, from what they hold."""
    if "score" in record:
        row.excess_loss = _number(record.get("excess_loss"))
        row.score = _number(record.get("score"))
        if row.score is None:
            row.score = math.inf  # JSON has no infinity: null is a run never ranked
        return
    row.excess_loss = clamp_excess(row.final_loss, row.minimum)
    eps = EPS.get(str(row.dtype), EPS["float32"])
    row.score = score(
        row.status,
        row.final_loss,
        row.excess_loss,
        row.minimum,
        row.distance_to_minimizer,
        row.steps,
        eps,
    )


def problem_key(problem: dict[str, Any]) -> str:
    """A problem as a comparable text: its objective's name and every field (JSON)."""
    return json.dumps(problem, sort_keys=True, default=str)


def problem_labels(rows: Sequence[JobRow]) -> None:
    """Replace each row's problem key by a short label: the objective's name, plus the fields
    (and dtype) that tell problems of the same name apart (`quadratic a=2`)."""
    decoded: dict[str, dict[str, Any]] = {}
    for key in {r.problem for r in rows}:
        try:
            problem = json.loads(key) if key else {}
        except ValueError:
            problem = {}
        fields = dict(problem.get("fields") or {})
        if problem.get("dtype"):
            fields["dtype"] = problem["dtype"]
        name = str(problem.get("name") or fields.get("_target_", "?")).rsplit(".", 1)[-1]
        decoded[key] = {"name": name, "fields": fields}
    siblings: dict[str, list[dict[str, Any]]] = {}
    for problem in decoded.values():
        siblings.setdefault(problem["name"], []).append(problem["fields"])
    labels = {}
    for key, problem in decoded.items():
        fields, others = problem["fields"], siblings[problem["name"]]
        varying = sorted(
            k for k in fields if len({json.dumps(f.get(k), default=str) for f in others}) > 1
        )
        labels[key] = " ".join([problem["name"], *(f"{k}={fields[k]}" for k in varying)])
    for row in rows:
        row.problem = labels.get(row.problem, row.problem)


def collect_jobs(sweep_dir: Path) -> list[JobRow]:
    """Every job of a sweep, read back and ranked; a population job gives a row per member."""
    sweep_dir = Path(sweep_dir)
    rows: list[JobRow] = []
    for job_dir in find_job_dirs(sweep_dir):
        members = load_population(job_dir, sweep_dir)
        rows.extend(members if members is not None else [load_job(job_dir, sweep_dir)])
    problem_labels(rows)
    return rank_jobs(rows)


# --------------------------------------------------------------------------- ranking


def rank_jobs(rows: Sequence[JobRow]) -> list[JobRow]:
    """Best first within each problem, by the rule book's score (`gdlab.rules.score`, what
    each run returned to the sweeper), then fewer steps; then the problem's diverged,
    interrupted and failed jobs, unranked, in job order. Problems are never ranked against
    each other: each has its own rank 1, and they are listed in order of their first job."""
    first: dict[str, tuple[int, int]] = {}  # problems with a ranked run first, then job order
    for i, row in enumerate(rows):
        order = row.num if row.num is not None else len(rows) + i
        first[row.problem] = min(first.get(row.problem, (1, order)), (1, order))
    for row in rows:
        if row.status in RANKED:
            first[row.problem] = (0, first[row.problem][1])

    def key(item: tuple[int, JobRow]) -> tuple[Any, ...]:
        i, row = item
        order = (row.num if row.num is not None else 1 << 30, i)
        return (first[row.problem], *rank_key(row.status, row.score, row.steps, order))

    ordered = [row for _, row in sorted(enumerate(rows), key=key)]
    positions: dict[str, int] = {}
    for row in ordered:
        if row.status in RANKED:
            positions[row.problem] = positions.get(row.problem, 0) + 1
            row.rank = positions[row.problem]
        else:
            row.rank = None
    return ordered


def problems_of(rows: Sequence[JobRow]) -> list[str]:
    """The sweep's problems, in table order."""
    return list(dict.fromkeys(r.problem for r in rows))


# --------------------------------------------------------------------------- tables


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
    "problem",
    "status",
    "steps",
    "final_loss",
    "excess_loss",
    "distance_to_minimizer",
    "score",
    "wall_time_s",
    "lr",
    "lr_limit",
    "error",
)


#: columns of sweeps that measured sharpness (sharpness.every > 0), after CSV_COLUMNS
SHARPNESS_COLUMNS = ("sharpness.lambda_max", "sharpness.lr_limit")


def has_sharpness(rows: Sequence[JobRow]) -> bool:
    return any(r.sharpness_lambda_max is not None for r in rows)


def summary_csv(rows: Sequence[JobRow]) -> str:
    """summary.csv: one row per job, best first; one extra column per override key (and the
    final sharpness where it was measured)."""
    keys = override_keys(rows)
    sharp = has_sharpness(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    extra = list(SHARPNESS_COLUMNS) if sharp else []
    writer.writerow([*CSV_COLUMNS[:3], *keys, *CSV_COLUMNS[3:], *extra])
    for row in rows:
        sharpness = [_fmt(row.sharpness_lambda_max, "r"), _fmt(row.sharpness_lr_limit, "r")]
        writer.writerow(
            [
                row.rank or "",
                row.job,
                " ".join(row.overrides),
                *(row.values.get(k, "") for k in keys),
                row.problem,
                row.status,
                "" if row.steps is None else row.steps,
                _fmt(row.final_loss, "r"),
                _fmt(row.excess_loss, "r"),
                _fmt(row.distance_to_minimizer, "r"),
                _fmt(row.score, "r"),
                _fmt(row.wall_time_s, ".4f"),
                _fmt(row.lr, "r"),
                _fmt(row.lr_limit, "r"),
                "; ".join(x for x in (row.error, row.note) if x),
                *(sharpness if sharp else []),
            ]
        )
    return out.getvalue()


def markdown_table(rows: Sequence[JobRow], limit: int | None = None) -> str:
    """The summary as a Markdown table (the first `limit` rows), for summary.md and the console."""
    keys = varying_keys(rows) or override_keys(rows)
    show_excess = any(r.excess_loss is not None for r in rows)
    show_problem = len(problems_of(rows)) > 1
    header = ["problem"] if show_problem else []
    header += ["rank", *keys, "status", "steps", "final loss"]
    header += ["excess loss"] if show_excess else []
    show_sharpness = has_sharpness(rows)
    header += ["λ_max", "lr limit"] if show_sharpness else []
    header += ["distance to min", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    shown = rows if limit is None else rows[:limit]
    for row in shown:
        status = row.status + (" *" if row.note else "")
        cells = [row.problem] if show_problem else []
        cells += [str(row.rank or "-"), *(tidy_numbers(row.values.get(k, "")) for k in keys)]
        cells.append(status)
        cells += [_fmt(row.steps, "d"), _fmt(row.final_loss)]
        cells += [_fmt(row.excess_loss, ".3g")] if show_excess else []
        if show_sharpness:
            cells += [_fmt(row.sharpness_lambda_max, ".4g"), _fmt(row.sharpness_lr_limit, ".4g")]
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
    """`N runs: 3 converged, 1 diverged; best: optimizer.lr=0.5 (excess loss 0)`, with the
    best of each problem where the sweep holds several.

    A row is a job of a plain multirun or a member of a population job: "runs" covers both.
    """
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts(rows).items()))
    text = f"{len(rows)} run{'s' if len(rows) != 1 else ''}: {tally or 'none'}"
    problems = problems_of(rows)
    keys = [k for k in varying_keys(rows) if not k.startswith("objective")]
    parts = []
    for problem in problems:
        best = next((r for r in rows if r.problem == problem and r.rank == 1), None)
        label = f"best of {problem}" if len(problems) > 1 else "best"
        if best is None:
            parts.append(f"{label}: none ranked (no run finished or converged)")
            continue
        setting = " ".join(
            f"{k}={tidy_numbers(best.values[k])}" for k in keys if k in best.values
        ) or " ".join(best.overrides)
        if best.excess_loss is not None:
            result = f"excess loss {_fmt(best.excess_loss, '.3g')}"
        else:
            result = f"loss {_fmt(best.final_loss)}"
        parts.append(f"{label}: {setting or best.job} ({result})")
    return "; ".join([text, *parts])


def summary_markdown(sweep_dir: Path, rows: Sequence[JobRow]) -> str:
    lines = [
        f"# Sweep {Path(sweep_dir).name}",
        "",
        headline(rows),
        "",
        "Ranked within each problem (never across problems) by score: runs at the minimum to "
        "their dtype's precision first, nearest to the minimiser first; then runs that "
        "converged elsewhere, by excess loss; then the rest, by excess loss (f - f* in "
        "float64; the final loss where f* is unknown); ties to fewer steps. Diverged, "
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


# --------------------------------------------------------------------------- the files


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
    #: the race's paths.png, paths.gif, losses.png and TensorBoard run (gdlab.sweeps.race)
    race_paths: list[Path] = field(default_factory=list)
    #: edge_of_stability.png, where the jobs measured their sharpness (gdlab.sweeps.edge_plot)
    edge_path: Path | None = None

    @property
    def failed(self) -> list[JobRow]:
        return [r for r in self.rows if r.status in FAILED]


def write_summary(sweep_dir: Path, plot: bool = True) -> SweepSummary:
    """Read every job of the sweep back and write summary.csv, summary.md (and lr.png, the
    race's pictures when the runs share one landscape of one or two numbers, and
    edge_of_stability.png when they measured their sharpness)."""
    sweep_dir = Path(sweep_dir)
    rows = collect_jobs(sweep_dir)
    csv_path, md_path = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD
    _write_text_atomic(csv_path, summary_csv(rows))
    _write_text_atomic(md_path, summary_markdown(sweep_dir, rows))
    summary = SweepSummary(sweep_dir, rows, csv_path, md_path)
    if plot and lr_varies(rows):  # matplotlib is imported only here, to draw it
        summary.plot_path = draw_lr_plot(rows, sweep_dir / LR_PLOT)
    if plot:  # a race only where the ranked runs share one problem of one or two numbers
        from gdlab.sweeps.race import draw_race  # torch and matplotlib only to draw

        summary.race_paths = draw_race(sweep_dir, rows)
    if plot and has_sharpness(rows):
        from gdlab.sweeps.edge_plot import draw_edge_of_stability

        summary.edge_path = draw_edge_of_stability(sweep_dir, rows)
    return summary


def print_summary(summary: SweepSummary, top: int = 10, stream: Any = None) -> None:
    """The top of the table and where the rest is, on the console."""
    stream = stream or sys.stdout
    print(f"gdlab: sweep {summary.sweep_dir}: {headline(summary.rows)}", file=stream)
    if summary.rows and top > 0:
        print(markdown_table(summary.rows, limit=top), file=stream)
    written = [summary.csv_path, summary.md_path, summary.plot_path, *summary.race_paths]
    written.append(summary.edge_path)
    print("gdlab: wrote " + ", ".join(str(p) for p in written if p is not None), file=stream)
    stream.flush()
