"""edge_of_stability.png of a sweep: every run's loss and sharpness against the step.

The layout of Figure 1 of Cohen et al. (ICLR 2021, "Gradient Descent on Neural Networks
Typically Occurs at the Edge of Stability"): the training loss above, the sharpness below, one
colour per run (one per lr, sorted by lr), and each run's threshold (2/lr for plain SGD) as a
dashed line in its colour. Under full-batch gradient descent the sharpness rises until it meets
its run's threshold, then hovers there while the loss keeps falling, unevenly.

Drawn only where a plain job of the sweep that finished, converged or diverged measured its
sharpness (`sharpness.every > 0`: the `sharpness.history` of its metrics.json); a population
job keeps no per-step history and is skipped. The loss comes from the job's event files
(`train/loss` at every log point), else from the full objective at each measurement. The
sharpness drawn is the one the run's lr limit judges: lambda_max(H) for SGD,
lambda_max(P^-1 H) for an adaptive rule (`gdlab.curvature.SharpnessPoint.preconditioned`).

At most MAX_RUNS runs are drawn (the lowest-numbered jobs), of one problem (the first job's);
the title says what was left out. A diverging run's loss and sharpness leave the panels at the
top rather than squash the others. matplotlib and TensorBoard are imported only to draw, so
importing this module costs nothing (every run imports the sweep package).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdlab.atomic import write_bytes_atomic
from gdlab.plotting import (
    loss_axis,
    new_stacked,
    plain_ticks,
    png_bytes,
    set_title,
    shorten,
    step_ticks,
)
from gdlab.results import read_metrics
from gdlab.rules import RANKED, Status
from gdlab.sweeps.jobs import JobRow, varying_keys

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("gdlab")

EDGE_PLOT = "edge_of_stability.png"
#: the most runs one picture draws (more colours would not tell apart)
MAX_RUNS = 8
#: the loss tag every plain run writes (gdlab.sinks.tensorboard)
LOSS_TAG = "train/loss"
LR_KEY = "optimizer.lr"
#: thresholds up to this many times the largest sharpness stay in the panel
THRESHOLD_REACH = 2.0


@dataclass
class EdgeRun:
    """One job's curves, as the picture draws them."""

    row: JobRow
    lr: float | None
    history: list[dict[str, Any]]  # metrics.json's sharpness.history
    steps: list[int] = field(default_factory=list)  # the loss at each logged step
    losses: list[float] = field(default_factory=list)
    label: str = ""

    @property
    def diverged(self) -> bool:
        return self.row.status == Status.DIVERGED

    def judged(self) -> tuple[list[int], list[float]]:
        """(steps, sharpness) of the measurements: lambda_max(P^-1 H) where the rule has a
        preconditioner, lambda_max(H) otherwise; non-finite values left out."""
        return _series(self.history, "preconditioned" if self.adaptive else "lambda_max")

    @property
    def adaptive(self) -> bool:
        return any(p.get("preconditioned") is not None for p in self.history)

    def thresholds(self) -> tuple[list[int], list[float]]:
        return _series(self.history, "threshold")

    @property
    def plain_sgd_threshold(self) -> bool:
        """Whether every threshold is 2/lr (plain SGD): the legend then says so."""
        pairs = [(p.get("threshold"), p.get("lr")) for p in self.history]
        pairs = [(t, lr) for t, lr in pairs if _finite(t) and _finite(lr)]
        return bool(pairs) and all(math.isclose(t * lr, 2.0, rel_tol=1e-6) for t, lr in pairs)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    kept = [(int(p["step"]), float(p[key])) for p in history if _finite(p.get(key))]
    return [s for s, _ in kept], [v for _, v in kept]


def draw_edge_of_stability(sweep_dir: Path, rows: Sequence[JobRow]) -> Path | None:
    """edge_of_stability.png in `sweep_dir` when a job measured its sharpness (see the
    module's doc); its path, or None. A picture that can't be drawn is skipped with a warning:
    pictures never fail a sweep's summary."""
    sweep_dir = Path(sweep_dir)
    try:
        runs, left_out = load_edge_runs(sweep_dir, rows)
        if not runs:
            return None
        path = sweep_dir / EDGE_PLOT
        write_bytes_atomic(path, png_bytes(edge_figure(runs, left_out)))
        return path
    except Exception as err:  # a picture is a view of the results, never a reason to fail
        log.warning("gdlab: skipped %s: %s: %s", EDGE_PLOT, type(err).__name__, err)
        return None


def load_edge_runs(sweep_dir: Path, rows: Sequence[JobRow]) -> tuple[list[EdgeRun], str]:
    """The runs to draw, sorted by lr, and a note on those left out ("" when none): the
    first MAX_RUNS plain jobs (by job number) that finished, converged or diverged with a
    sharpness history, of the first such job's problem."""
    candidates = [
        r for r in rows if (r.status in RANKED or r.status == Status.DIVERGED) and "#" not in r.job
    ]
    candidates.sort(key=lambda r: (r.num is None, r.num or 0, r.job))
    found: list[EdgeRun] = []
    for row in candidates:
        metrics = read_metrics(sweep_dir / row.job) or {}
        history = (metrics.get("sharpness") or {}).get("history")
        if isinstance(history, list) and any(isinstance(p, dict) for p in history):
            points = [p for p in history if isinstance(p, dict) and "step" in p]
            lr = row.lr if row.lr is not None else next(
                (float(p["lr"]) for p in points if _finite(p.get("lr"))), None
            )  # fmt: skip
            found.append(EdgeRun(row, lr, points))
    if not found:
        return [], ""
    problem = found[0].row.problem
    same = [run for run in found if run.row.problem == problem]
    runs = same[:MAX_RUNS]
    notes = []
    if len(same) > len(runs):
        notes.append(f"first {len(runs)} of {len(same)} runs")
    if len(found) > len(same):
        notes.append(f"{len(found) - len(same)} runs of other problems not drawn")
    runs.sort(key=lambda run: (run.lr is None, run.lr or 0.0, run.row.num or 0))
    for run in runs:
        run.steps, run.losses = logged_losses(sweep_dir / run.row.job)
        if not run.steps:  # no event files: the full objective at each measurement
            run.steps, run.losses = _series(run.history, "loss")
    labels = run_labels([run.row for run in runs], [run.lr for run in runs])
    for run, label in zip(runs, labels, strict=True):
        run.label = label + (" (diverged)" if run.diverged else "")
    return runs, "; ".join(notes)


def run_labels(rows: Sequence[JobRow], lrs: Sequence[float | None]) -> list[str]:
    """`lr=0.1`, plus the other swept keys whose value differs between the drawn runs."""
    others = [k for k in varying_keys(rows) if k != LR_KEY]
    out = []
    for row, lr in zip(rows, lrs, strict=True):
        parts = [f"lr={lr:g}" if lr is not None else "lr=?"]
        parts += [f"{k}={row.values.get(k, '')}" for k in others]
        out.append(shorten(", ".join(parts), 60))
    return out


def logged_losses(job_dir: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of `train/loss` in a plain job's event files, by step; a later file
    (a resumed run) wins a step logged twice, and a truncated file keeps what was read. The
    same reading as `gdlab.api.read_scalars`, which this package must not import (gdlab.api
    imports the sweep summary)."""
    files = list(Path(job_dir).glob("events.out.tfevents.*"))
    if not files:
        return [], []
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    def started(file: Path) -> tuple[int, float]:
        seconds = file.name.split(".")[3] if file.name.count(".") >= 3 else ""
        return (int(seconds) if seconds.isdigit() else 0, file.stat().st_mtime)

    by_step: dict[int, float] = {}
    for path in sorted(files, key=started):
        try:
            for event in LegacyEventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    if value.tag == LOSS_TAG and value.WhichOneof("value") == "simple_value":
                        by_step[int(event.step)] = float(value.simple_value)
        except Exception:  # a truncated file from a killed job: keep what was read
            continue
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def edge_figure(runs: Sequence[EdgeRun], left_out: str = "") -> Figure:
    """Loss above, sharpness below, a colour per run; each run's threshold dashed in its
    colour (held between measurements: a schedule moves it in steps)."""
    figure, top, bottom = new_stacked()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    draw_losses(top, runs, colours)
    draw_sharpness(bottom, runs, colours)
    problem = runs[0].row.problem
    head = f"{shorten(problem, 40)}: " if problem and problem != "?" else ""
    note = f" ({left_out})" if left_out else ""
    set_title(top, f"{head}edge of stability{note}", width=55)
    return figure


def draw_losses(ax: Any, runs: Sequence[EdgeRun], colours: Sequence[str]) -> None:
    """Each run's loss against the step; a log axis when every loss is positive, cut a decade
    above the highest loss of the runs that did not diverge."""
    values: list[float] = []
    calm: list[float] = []
    for run, colour in zip(runs, colours, strict=True):
        kept = [(s, v) for s, v in zip(run.steps, run.losses, strict=True) if math.isfinite(v)]
        ax.plot([s for s, _ in kept], [v for _, v in kept], color=colour, lw=1.3)
        values += [v for _, v in kept]
        if not run.diverged:
            calm += [v for _, v in kept]
    shown = [v for v in values if not calm or v <= 10.0 * max(calm)]
    loss_axis(ax, shown)
    if shown and min(shown) > 0 and len(shown) < len(values):  # a diverging run: off the top
        ax.set_ylim(min(shown) / 1.5, 10.0 * max(calm))
    ax.set_ylabel("train loss")
    ax.grid(True, which="major", alpha=0.3)


def draw_sharpness(ax: Any, runs: Sequence[EdgeRun], colours: Sequence[str]) -> None:
    """Each run's sharpness (solid) and threshold (dashed, same colour). The panel reaches to
    the largest sharpness of the runs that did not diverge and the thresholds up to
    THRESHOLD_REACH times it (at least the lowest one); a threshold above is named in its
    run's legend entry instead."""
    judged = [run.judged() for run in runs]
    limits = [run.thresholds() for run in runs]
    calm = [v for run, (_, ys) in zip(runs, judged, strict=True) if not run.diverged for v in ys]
    every = [v for _, ys in judged for v in ys]
    reference = max(calm or every or [0.0])
    tops = [max(ys) for _, ys in limits if ys]
    shown = [t for t in tops if t <= THRESHOLD_REACH * reference]
    if tops and not shown:
        shown = [min(tops)]
    high = 1.12 * max([reference, *shown]) if reference > 0 or shown else None
    many = max((len(xs) for xs, _ in judged), default=0) > 40
    for run, colour, (xs, ys), (ts, ls) in zip(runs, colours, judged, limits, strict=True):
        label = run.label
        if ls and high is not None and max(ls) > high:
            label += f" ({threshold_name(run)} = {max(ls):.4g}, off the top)"
        ax.plot(xs, ys, color=colour, lw=1.5, marker=None if many else "o", ms=3, label=label)
        if ls:
            ax.plot(ts, ls, color=colour, ls="--", lw=1.2, drawstyle="steps-post")
    plain = all(run.plain_sgd_threshold for run in runs)
    ax.plot([], [], color="0.3", ls="--", lw=1.2,
            label="dashed: 2/lr" if plain else "dashed: each run's threshold")  # fmt: skip
    if high is not None and (max(every, default=0.0) > high or max(tops, default=0.0) > high):
        low = min([0.0, *(calm or every)])
        ax.set_ylim(low - 0.04 * (high - low), high)
    if min(every, default=0.0) < 0:
        ax.axhline(0.0, color="0.5", lw=0.8)
    plain_ticks(ax.yaxis)
    step_ticks(ax.xaxis)
    adaptive = {run.adaptive for run in runs}
    if adaptive == {True}:
        ax.set_ylabel("sharpness λ_max(P⁻¹H)")
    elif adaptive == {False}:
        ax.set_ylabel("sharpness λ_max(H)")
    else:
        ax.set_ylabel("sharpness: λ_max(H), or λ_max(P⁻¹H)")
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=7)


def threshold_name(run: EdgeRun) -> str:
    return "2/lr" if run.plain_sgd_threshold else "threshold"
