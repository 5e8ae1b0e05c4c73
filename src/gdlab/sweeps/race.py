"""A race on one landscape: the runs of a sweep on one picture of the objective they share.

`gdlab.sweeps.summary.write_summary` calls `draw_race` for every sweep (so `gdlab-report`
redraws it); it draws only when the sweep's ranked runs share one problem of one or two
parameter numbers:

- `paths.png`: every drawn run's path on the contour lines of f (two numbers) or on the curve
  f (one number), a colour per run (the best on top), dots at the same steps on every path,
  the start and the minimiser (and an objective's other minima) marked, a legend naming the
  update rule, the lr and whatever else differs between the runs. The view is framed and cut
  as a run's landscape.png is (`gdlab.sinks.plots`: `view_box`, `draw_contours`,
  `draw_curve`, `clip_path`, `mark_exit`), around the runs that did not diverge;
- `paths.gif`: the same race as an animation (matplotlib's FuncAnimation, Pillow writer), at
  most MAX_FRAMES frames plus the finish held, every run at the same step in each frame;
- `losses.png`: every drawn run's loss − f* against the step, on a log axis (the loss itself
  where f* is unknown, or where a loss lies below it);
- `race/`: an event file with both PNGs as TensorBoard images, beside the jobs' runs.

Where the paths come from: a plain job's event files (`train/loss` and its parameters'
scalars at every log point, `gdlab.sinks.tensorboard.param_scalar_tags`). A population member,
and a job that logged no parameters (`logger.tensorboard=false`), is replayed through the plain
trainer (`gdlab.population.tensorboard.replay`), on the CPU, with an in-memory sink.

At most MAX_PATHS runs are drawn. A population sweep draws the best member of each line (a
setting of the swept keys other than the lr), so that a thousand members don't bury the
picture; a plain sweep draws every job, or the best of each line when it has more than
MAX_PATHS. Where there are more lines than that, the best MAX_PATHS are drawn.

This module imports nothing heavy: torch, matplotlib and TensorBoard are imported only to draw
(the sweep package is imported by every run).
"""

from __future__ import annotations

import bisect
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdlab.atomic import write_bytes_atomic
from gdlab.sweeps.jobs import FAILED, load_yaml, varying_keys
from gdlab.sweeps.naming import tidy_numbers

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from omegaconf import DictConfig

    from gdlab.events import LogRecord
    from gdlab.sweeps.jobs import JobRow

log = logging.getLogger("gdlab")

PATHS_PNG = "paths.png"
PATHS_GIF = "paths.gif"
LOSSES_PNG = "losses.png"
#: the TensorBoard run (a directory of the sweep) holding the race's images
RACE_RUN = "race"
#: the most runs one race draws
MAX_PATHS = 20
#: the GIF's frames: the race, then the finish held (Pillow merges identical frames into one)
MAX_FRAMES = 80
HOLD_FRAMES = 20
FPS = 15
GIF_DPI = 80
PNG_DPI = 100
#: the size of the axes (inches) and the margin left of them; the legend adds its width
AXES_SIZE = (5.6, 4.1)
MARGIN_LEFT = 0.75
FIGSIZE_HEIGHT = 5.0
LR_KEY = "optimizer.lr"
#: paths.png dots every step of runs up to this many steps, a round tenth of them beyond
MAX_DOTS = 60


@dataclass
class Racer:
    """One drawn run: its row, its legend label, and its logged points."""

    row: JobRow
    label: str
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    #: every parameter number at each logged point (in the objective's parameter order)
    points: list[list[float]] = field(default_factory=list)

    def trimmed(self) -> Racer:
        """The points up to the first that is not finite, or whose loss is not (a diverging
        run's last ones)."""
        keep = len(self.points)
        for i, (point, loss) in enumerate(zip(self.points, self.losses, strict=True)):
            if not (math.isfinite(loss) and all(math.isfinite(v) for v in point)):
                keep = i
                break
        return Racer(self.row, self.label, self.steps[:keep], self.losses[:keep],
                     self.points[:keep])  # fmt: skip


@dataclass
class Race:
    """What a race draws: the shared objective and the runs."""

    problem: str  # the problem's label in the summary
    loss: Any  # the objective's loss, for one setting of the parameters
    template: dict[str, Any]  # the parameters' names, shapes, dtype (the start)
    names: list[str]  # one axis label per parameter number
    minimizer: list[float] | None
    minimum: float | None
    dtype: str | None
    racers: list[Racer]
    #: the objective's other minimisers (`minimizers`, where it lists several: Himmelblau's)
    others: list[list[float]] = field(default_factory=list)
    population: bool = False  # the runs are the best members of population lines

    @property
    def dim(self) -> int:
        return len(self.names)


# --------------------------------------------------------------------------- which runs


def race_rows(rows: Sequence[JobRow]) -> list[JobRow]:
    """The rows of the one problem the sweep's ranked rows share, best first (failed and
    interrupted ones left out); none when the ranked rows have several problems, or there is
    none."""
    problems = {r.problem for r in rows if r.rank is not None}
    if len(problems) != 1:
        return []
    (problem,) = problems
    return [r for r in rows if r.problem == problem and r.status not in FAILED]


def is_member(row: JobRow) -> bool:
    """Whether the row is a member of a population job (`<job>#<i>`)."""
    head, sep, tail = row.job.rpartition("#")
    return bool(sep and head and tail.isdigit())


def job_dir_of(sweep_dir: Path, row: JobRow) -> Path:
    """The directory of the job a row (or member) comes from."""
    name = row.job.rpartition("#")[0] if is_member(row) else row.job
    return Path(sweep_dir) if name == "." else Path(sweep_dir) / name


def choose(rows: Sequence[JobRow]) -> list[JobRow]:
    """The rows a race draws (rows: one problem's, best first): all of a plain sweep's up to
    MAX_PATHS; else the best of each line (a setting of the swept keys other than the lr),
    the best MAX_PATHS lines."""
    if len(rows) <= MAX_PATHS and not any(is_member(r) for r in rows):
        return list(rows)
    others = [k for k in varying_keys(rows) if k != LR_KEY]
    best: dict[tuple[str | None, ...], JobRow] = {}
    for row in rows:
        best.setdefault(tuple(row.values.get(k) for k in others), row)
    return list(best.values())[:MAX_PATHS]


def recorded_numbers(job_dir: Path, member: bool) -> int | None:
    """At least how many parameter numbers a job's results record: all of them in a plain
    job's metrics.json, the small parameters' in population.json (its first member's); None
    where unknown. Read before a problem is built, which may hold a large data set."""
    from gdlab.results import read_metrics, read_population

    if member:  # per member, null for those never trained: the first trained one's
        columns = (read_population(job_dir) or {}).get("params")
        params = None
        if isinstance(columns, dict):
            params = {k: next((x for x in v if x is not None), None) for k, v in columns.items()}
    else:
        params = (read_metrics(job_dir) or {}).get("params")
    if not isinstance(params, dict) or not params:
        return None

    def count(value: Any) -> int:
        if isinstance(value, list):
            return sum(count(v) for v in value)
        return 0 if value is None else 1

    return sum(count(v) for v in params.values())


# --------------------------------------------------------------------------- the runs' paths


def job_config(job_dir: Path, updates: dict[str, Any] | None = None) -> DictConfig:
    """A job's composed config (`.hydra/config.yaml`) as a plain run on the CPU would compose
    it: without a population's label, with `updates` (config key -> value)."""
    from omegaconf import OmegaConf, open_dict

    from hydra_plugins.gdlab_population._plan import LABEL_KEY

    cfg = OmegaConf.create(load_yaml(Path(job_dir) / ".hydra" / "config.yaml") or {})
    with open_dict(cfg):
        cfg.pop(LABEL_KEY, None)
    OmegaConf.update(cfg, "device.type", "cpu")  # a few numbers: the CPU, on any machine
    OmegaConf.update(cfg, "trainer.progress", False)
    OmegaConf.update(cfg, "trainer.resume", None)
    for key, value in (updates or {}).items():
        OmegaConf.update(cfg, key, value)
    return cfg


def member_updates(row: JobRow) -> dict[str, Any]:
    """A population member's batchable settings (config key -> value), parsed from its
    overrides as Hydra parses a command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gdlab.settings import BATCHABLE, coerce

    parser = OverridesParser.create()
    updates = {}
    for text in row.overrides:
        override = parser.parse_override(text)
        key = override.key_or_group
        if key in BATCHABLE:
            updates[key] = coerce(key, override.value())
    return updates


class PathSink:
    """Keeps every logged point's step, loss and parameter numbers (a replay's sink)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.points: list[list[float]] = []

    def start(self, info: Any) -> None:
        pass

    def log(self, record: LogRecord) -> None:
        from gdlab.sinks.plots import flat

        self.steps.append(record.step)
        self.losses.append(record.loss)
        self.points.append(flat(record.params))

    def finish(self, result: Any) -> None:
        pass

    def close(self) -> None:
        pass


def replayed_path(job_dir: Path, updates: dict[str, Any]) -> tuple[list, list, list]:
    """(steps, losses, points) of the job's run with `updates`, replayed on the CPU."""
    from gdlab.population.tensorboard import replay

    sink = PathSink()
    replay(job_config(job_dir), updates, lambda: [sink])
    return sink.steps, sink.losses, sink.points


def logged_path(job_dir: Path, template: dict[str, Any]) -> tuple[list, list, list]:
    """(steps, losses, points) from a plain job's event files: the log points that carry the
    loss and every parameter number (a resumed run's later file wins a step logged twice)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    from gdlab.sinks.tensorboard import param_scalar_tags

    tags = [tag for name, value in template.items() for tag, _ in param_scalar_tags(name, value)]
    by_step: dict[int, tuple[float, list[float]]] = {}
    for path in sorted(Path(job_dir).glob("events.out.tfevents.*")):
        try:
            for event in LegacyEventFileLoader(str(path)).Load():
                values = {v.tag: v.simple_value for v in event.summary.value}
                if "train/loss" in values and all(t in values for t in tags):
                    by_step[int(event.step)] = (values["train/loss"], [values[t] for t in tags])
        except Exception:  # a truncated file from a killed job: keep what was read
            continue
    steps = sorted(by_step)
    return steps, [by_step[s][0] for s in steps], [by_step[s][1] for s in steps]


def labels(rows: Sequence[JobRow], optimizers: Sequence[dict[str, Any]]) -> list[str]:
    """`adam lr=0.05`, plus the optimizer settings that differ between the drawn runs of the
    same rule (`momentum=0.9`) and the other swept keys that differ (`trainer.seed=1`), then
    how the run ended: `adam lr=0.05 (converged, 412 steps)`."""
    names = [str(o.get("name", "?")) for o in optimizers]
    varying: dict[str, list[str]] = {}
    for rule in dict.fromkeys(names):
        same = [o for o, n in zip(optimizers, names, strict=True) if n == rule]
        keys = sorted({k for o in same for k in o} - {"name", "lr"})
        varying[rule] = [k for k in keys if len({repr(o.get(k)) for o in same}) > 1]
    swept = [k for k in varying_keys(rows) if not k.startswith(("optimizer", "objective", "+"))]
    out = []
    for row, optimizer, rule in zip(rows, optimizers, names, strict=True):
        parts = [rule]
        if row.lr is not None:
            parts.append(f"lr={row.lr:g}")
        for key in varying[rule]:
            parts.append(f"{key}={tidy_numbers(str(flat_value(optimizer.get(key))))}")
        for key in swept:
            parts.append(f"{key}={tidy_numbers(row.values.get(key, ''))}")
        steps = "" if row.steps is None else f", {row.steps} step{'s' if row.steps != 1 else ''}"
        out.append(f"{' '.join(parts)} ({row.status}{steps})")
    return out


def flat_value(value: Any) -> Any:
    """A config value as a label shows it: a nested dict's fields joined."""
    if isinstance(value, dict):
        return ",".join(f"{k}={flat_value(v)}" for k, v in value.items())
    return value


def load_race(sweep_dir: Path, rows: Sequence[JobRow]) -> Race | None:
    """The race of a sweep's rows (see the module's doc), or None when there is none: the
    ranked runs have several problems, or one of more than two parameter numbers."""
    from omegaconf import OmegaConf

    from gdlab.problem import build_problem
    from gdlab.sinks.plots import axis_names, flat

    sweep_dir = Path(sweep_dir)
    candidates = race_rows(rows)
    if not candidates:
        return None
    first = job_dir_of(sweep_dir, candidates[0])
    if (recorded_numbers(first, is_member(candidates[0])) or 0) > 2:
        return None  # before building a problem with data, maybe a large one
    chosen = choose(candidates)
    problem = build_problem(job_config(first))
    template, _ = problem.initial_params(int(problem.values["trainer.seed"]))
    if sum(v.numel() for v in template.values()) not in (1, 2):
        return None
    minimizer = problem.minimizer
    target = flat({k: minimizer[k] for k in template}) if minimizer else None
    listed = getattr(problem.objective, "minimizers", None) or []
    others = [flat({k: m[k] for k in template}) for m in listed if isinstance(m, dict)]
    racers, optimizers = [], []
    for row in chosen:
        job_dir = job_dir_of(sweep_dir, row)
        updates = member_updates(row) if is_member(row) else {}
        data: tuple[list, list, list] = ([], [], [])
        if not is_member(row):
            data = logged_path(job_dir, template)
        if not data[0]:
            try:
                data = replayed_path(job_dir, updates)
            except Exception as err:  # a job whose config no longer builds: not drawn
                log.warning("gdlab: race: could not replay %s: %s", row.job, err)
                continue
        racer = Racer(row, "", *data).trimmed()
        if not racer.points:
            continue
        racers.append(racer)
        optimizer = OmegaConf.to_container(job_config(job_dir, updates).optimizer, resolve=True)
        optimizers.append(optimizer if isinstance(optimizer, dict) else {})
    if not racers:
        return None
    for racer, label in zip(racers, labels([r.row for r in racers], optimizers), strict=True):
        racer.label = label
    minimum = next((r.row.minimum for r in racers if r.row.minimum is not None), None)
    return Race(
        problem=candidates[0].problem,
        loss=problem.objective.loss,
        template=template,
        names=axis_names(template),
        minimizer=target,
        minimum=minimum if minimum is not None else problem.minimum,
        dtype=racers[0].row.dtype or problem.dtype_name,
        racers=racers,
        population=any(is_member(r.row) for r in racers),
        others=[m for m in others if target is None or m != target],
    )


# --------------------------------------------------------------------------- the pictures


def colour(i: int, count: int) -> str:
    """The i-th run's colour: tab10, or tab20 for more than ten runs."""
    import matplotlib

    if count <= 10:
        return f"C{i}"
    return matplotlib.colors.to_hex(matplotlib.colormaps["tab20"](i % 20))


def race_figure(labels: Sequence[str], dpi: int = PNG_DPI) -> tuple[Figure, Any]:
    """A figure of one axes (AXES_SIZE inches) with the legend of `labels` to its right,
    the figure as wide as that legend needs."""
    from gdlab.plotting import figure_class

    size = legend_fontsize(len(labels))
    legend = 0.7 + max((len(t) for t in labels), default=10) * size * 0.55 / 72
    width, height = MARGIN_LEFT + AXES_SIZE[0] + 0.25 + legend, FIGSIZE_HEIGHT
    # no Agg canvas attached: an animation's frames are then drawn once, by the writer's
    # savefig, not a second time by the canvas after each frame
    figure = figure_class()(figsize=(width, height), dpi=dpi)
    left, bottom = MARGIN_LEFT / width, 0.55 / height
    figure.add_axes((left, bottom, AXES_SIZE[0] / width, AXES_SIZE[1] / height))
    return figure, figure.axes[0]


def legend_fontsize(count: int) -> float:
    return 8.0 if count <= 12 else 7.0


def add_legend(ax: Any) -> None:
    """The legend to the right of the axes, top-aligned with them."""
    count = len(ax.get_legend_handles_labels()[1])
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0,
              fontsize=legend_fontsize(count), frameon=False)  # fmt: skip


def title_of(race: Race, what: str) -> str:
    """`rosenbrock: paths of 4 runs`, or `..., the best of each of 3 lines`."""
    count = len(race.racers)
    if race.population:
        return f"{race.problem}: {what}, the best of each of {count} lines"
    return f"{race.problem}: {what} of {count} run{'s' if count != 1 else ''}"


@dataclass
class Track:
    """A run's path in view coordinates, cut to the view (`gdlab.sinks.plots.clip_path`)."""

    xs: list[float]
    ys: list[float]
    marks: list[int]
    exit_at: Any
    ends: list[int]


def landscape(ax: Any, race: Race) -> tuple[list[float], list[float], list[Track]]:
    """The objective (contours or curve), the minimiser and the start(s) on `ax`; returns the
    view and each run's track in it."""
    from gdlab.plotting import set_title
    from gdlab.sinks.plots import clip_path, draw_contours, draw_curve, draw_minimizer, view_box

    starts = list({tuple(r.points[0]): None for r in race.racers})
    anchors = [list(s) for s in starts] + ([race.minimizer] if race.minimizer else [])
    # the view frames the runs that did not diverge: one that did leaves it with an arrow
    framed = [r for r in race.racers if r.row.status != "diverged"] or race.racers
    lows, highs = view_box([p for r in framed for p in r.points], anchors)
    if race.dim == 1:
        tracks_in = [
            [(p[0], v) for p, v in zip(r.points, r.losses, strict=True)] for r in race.racers
        ]
        every = [p for t in tracks_in for p in t if math.isfinite(p[1])]
        lows, highs = draw_curve(ax, race.loss, race.template, lows, highs, race.minimizer, every)
        ax.set_ylabel("loss")
    else:
        tracks_in = [[(p[0], p[1]) for p in r.points] for r in race.racers]
        if race.minimizer:
            draw_minimizer(ax, race.minimizer[0], race.minimizer[1])
        lows, highs = draw_contours(ax, race.loss, race.template, lows, highs)
        ax.set_ylabel(race.names[1])
    ax.set_xlabel(race.names[0])
    for i, track in enumerate(tracks_in):  # a ring: the runs' colours stay theirs
        if i == 0 or track[0] not in [t[0] for t in tracks_in[:i]]:
            label = "start" if i == 0 else None
            ax.plot([track[0][0]], [track[0][1]], "o", mfc="none", mec="black", ms=10, mew=1.5,
                    label=label, zorder=5)  # fmt: skip
    shown = [m for m in race.others if race.dim == 2 and inside(m, lows, highs)]
    for k, m in enumerate(shown):
        ax.plot([m[0]], [m[1]], "*", mfc="none", mec="black", ms=12, mew=1.0, zorder=4,
                label="other minima" if k == 0 else None)  # fmt: skip
    tracks = [Track(*clip_path(t, lows, highs)) for t in tracks_in]
    ax.set_xlim(lows[0], highs[0])
    ax.set_ylim(lows[1], highs[1])
    set_title(ax, title_of(race, "paths"), width=60)
    return lows, highs, tracks


def inside(point: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> bool:
    return all(lo <= v <= hi for v, lo, hi in zip(point, lows, highs, strict=False))


def paths_figure(race: Race) -> Figure:
    """paths.png: every run's whole path on the landscape, a colour each, the best on top.
    Dots mark each run's place every `dot_every` steps (the same steps for every run, so
    their spacing shows each one's pace); a ringed dot marks where it ended."""
    from gdlab.sinks.plots import mark_exit

    figure, ax = race_figure(legend_labels(race))
    lows, highs, tracks = landscape(ax, race)
    count = len(race.racers)
    every = dot_every(race)
    for i, (racer, track) in enumerate(zip(race.racers, tracks, strict=True)):
        c, z = colour(i, count), 3 + (count - i) / (count + 1)  # the best (first) on top
        marks = set(track.marks)  # the points in view
        logged = [  # the last point logged at or before each multiple of `every`
            bisect.bisect_right(racer.steps, step) - 1
            for step in range(0, racer.steps[-1] + 1, every)
        ]
        dots = sorted({track.ends[k] - 1 for k in logged if track.ends[k] - 1 in marks})
        ax.plot(track.xs, track.ys, "-o", color=c, lw=1.5, ms=4, mec="white", mew=0.5,
                markevery=dots, label=racer.label, zorder=z)  # fmt: skip
        if track.marks and track.marks[-1] == len(track.xs) - 1:  # the end, when in view
            ax.plot([track.xs[-1]], [track.ys[-1]], "o", color=c, ms=5, mec="black", mew=0.6,
                    zorder=z + 1)  # fmt: skip
        if track.exit_at is not None:
            mark_exit(ax, track.exit_at, lows, highs, color=c)
    what = "every step" if every == 1 else f"every {every} steps"
    ax.plot([], [], "o", color="0.35", ms=4, mec="white", mew=0.5, label=f"dots: {what}")
    add_legend(ax)
    return figure


def dot_every(race: Race) -> int:
    """Steps between a path's dots: 1 up to MAX_DOTS steps, else a round tenth of the
    longest run (1, 2 or 5 times a power of ten), the same for every run."""
    last = max(r.steps[-1] for r in race.racers)
    if last <= MAX_DOTS:
        return 1
    rough = last / 10
    power = 10 ** math.floor(math.log10(rough))
    return int(min((m * power for m in (1, 2, 5, 10) if m * power >= rough), default=power))


def legend_labels(race: Race) -> list[str]:
    """Every label a race's legend may show (for the figure's width)."""
    return ["other minima", "dots: every 5000 steps", *(r.label for r in race.racers)]


def frame_steps(race: Race) -> list[int]:
    """The step each frame shows, from 0 to the longest run's end: up to MAX_FRAMES steps,
    closer together early (step ~ frame²), where the runs move most and part ways."""
    last = max(r.steps[-1] for r in race.racers)
    count = min(MAX_FRAMES, last + 1)
    if count <= 1:
        return [last]
    return sorted({round(last * (k / (count - 1)) ** 2) for k in range(count)})


def write_gif(race: Race, path: Path) -> Path:
    """paths.gif: the race, every run moved to the same step in each frame, a dot at each
    run's head; the finish held for a moment.

    What stays still (the landscape, axes, legend) is drawn once, into an image that every
    frame shows under the moving paths (drawn in a bare axes at the same place): a frame then
    costs a few lines, not the contours and every text again.
    """
    import numpy as np
    from matplotlib.animation import FuncAnimation
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    labels = legend_labels(race)
    still, ax = race_figure(labels, dpi=GIF_DPI)
    _, _, tracks = landscape(ax, race)
    count = len(race.racers)
    for i, racer in enumerate(race.racers):  # legend entries only: the paths move
        ax.plot([], [], "-", color=colour(i, count), lw=1.5, label=racer.label)
    add_legend(ax)
    canvas = FigureCanvasAgg(still)
    canvas.draw()
    background = np.asarray(canvas.buffer_rgba()).copy()
    box = ax.get_position()  # after drawing: the box an equal aspect gave it

    figure, _ = race_figure(labels, dpi=GIF_DPI)
    figure.delaxes(figure.axes[0])
    figure.figimage(background, origin="upper", zorder=-1)
    front = figure.add_axes(box)
    front.set_xlim(ax.get_xlim())
    front.set_ylim(ax.get_ylim())
    front.set_axis_off()
    lines, heads = [], []
    for i in range(count):
        c, z = colour(i, count), 3 + (count - i) / (count + 1)  # the best (first) on top
        lines.append(front.plot([], [], "-", color=c, lw=1.5, zorder=z)[0])
        heads.append(front.plot([], [], "o", color=c, ms=6, mec="black", mew=0.6, zorder=z + 1)[0])
    steps = frame_steps(race)
    clock = figure.text(box.x1 + 0.03 * box.width, box.y0, "", fontsize=10, va="bottom")

    def draw(step: int) -> list[Any]:
        for racer, track, line, head in zip(race.racers, tracks, lines, heads, strict=True):
            shown = bisect.bisect_right(racer.steps, step)  # the points logged by `step`
            end = track.ends[shown - 1] if shown else 0
            line.set_data(track.xs[:end], track.ys[:end])
            inside = end and math.isfinite(track.xs[end - 1])
            head.set_data([track.xs[end - 1]] if inside else [],
                          [track.ys[end - 1]] if inside else [])  # fmt: skip
        clock.set_text(f"step {step} of {steps[-1]}")
        return [*lines, *heads, clock]

    frames = steps + [steps[-1]] * HOLD_FRAMES
    animation = FuncAnimation(figure, draw, frames=frames, blit=False, repeat=False)
    exact = [colour(i, count) for i in range(count)] + ["black"]
    writer = palette_writer(gif_palette(background, exact), fps=FPS)
    quiet = logging.getLogger("matplotlib.animation")  # "Animation.save using ...", at INFO
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        animation.save(str(path), writer=writer, dpi=GIF_DPI)
    finally:
        quiet.setLevel(level)
    return path


def gif_palette(background: Any, exact: Sequence[str]) -> Any:
    """A GIF palette: the `exact` colours (the runs'), and the rest as Pillow picks them for
    the still image (the landscape's contours, text)."""
    from matplotlib.colors import to_rgb
    from PIL import Image

    colours = [round(255 * c) for name in exact for c in to_rgb(name)]
    rgb = Image.fromarray(background).convert("RGB")
    picked = rgb.quantize(colors=256 - len(exact), method=Image.Quantize.FASTOCTREE)
    palette = Image.new("P", (1, 1))
    palette.putpalette((picked.getpalette() or [])[: 3 * (256 - len(exact))] + colours)
    return palette


def palette_writer(palette: Any, fps: int) -> Any:
    """matplotlib's Pillow writer, every frame mapped onto one `palette`. Pillow's own
    choice, made per frame, merges a colour few pixels have (a short run's path) into its
    neighbour; one palette also lets the GIF store only what changed between frames."""
    from matplotlib.animation import PillowWriter
    from PIL import Image

    class PaletteWriter(PillowWriter):
        def setup(self, fig: Any, outfile: Any, dpi: float | None = None) -> None:
            super().setup(fig, outfile, dpi)
            self.images: list[Any] = []

        def grab_frame(self, **savefig_kwargs: Any) -> None:
            buffer = io.BytesIO()
            self.fig.savefig(buffer, **{**savefig_kwargs, "format": "rgba", "dpi": self.dpi})
            size = self.frame_size
            rgba = Image.frombuffer("RGBA", size, buffer.getbuffer(), "raw", "RGBA", 0, 1)
            rgb = rgba.convert("RGB")
            self.images.append(rgb.quantize(palette=palette, dither=Image.Dither.NONE))

        def finish(self) -> None:
            self.images[0].save(self.outfile, save_all=True, append_images=self.images[1:],
                                duration=int(1000 / self.fps), loop=0)  # fmt: skip

    return PaletteWriter(fps=fps)


def losses_figure(race: Race) -> Figure:
    """losses.png: each run's loss − f* against the step on a log axis, with the floor of
    the dtype's rounding (`gdlab.sinks.plots.excess_curve`); the loss itself where f* is
    unknown. A diverging run leaves through the top."""
    from gdlab.plotting import set_title
    from gdlab.sinks.plots import excess_curve, finite_positive

    every = [v for r in race.racers for v in r.losses if math.isfinite(v)]
    excess = excess_curve(every, race.minimum, race.dtype)
    curves = []
    for racer in race.racers:
        pairs = [(s, v) for s, v in zip(racer.steps, racer.losses, strict=True)
                 if math.isfinite(v)]  # fmt: skip
        ys = [v for _, v in pairs]
        if excess is not None:
            ys = [max(v - race.minimum, excess[1]) for v in ys]  # type: ignore[operator]
        curves.append(([s for s, _ in pairs], ys))
    floor_shown = excess is not None and any(v <= excess[1] for _, ys in curves for v in ys)
    labels = [r.label for r in race.racers] + ([excess[2]] if floor_shown and excess else [])
    figure, ax = race_figure(labels)
    count = len(race.racers)
    for i, (racer, (xs, ys)) in enumerate(zip(race.racers, curves, strict=True)):
        ax.plot(xs, ys, "-", color=colour(i, count), lw=1.5, label=racer.label)
    if excess is not None:
        _, floor, meaning = excess
        if floor_shown:
            ax.axhline(floor, color="0.35", ls=":", lw=1.2, label=meaning)
        ax.set_yscale("log")
        ax.set_ylabel("loss − f*")
        what = "loss − f*"
    else:
        if finite_positive(every):
            ax.set_yscale("log")
        ax.set_ylabel("loss")
        what = "loss"
    starts = [ys[0] for _, ys in curves if ys]
    values = [v for _, ys in curves for v in ys]
    if starts and ax.get_yscale() == "log" and max(values) > 100 * max(starts):
        top, least = 100 * max(starts), min(v for v in values if v > 0)
        margin = (top / least) ** 0.05  # matplotlib's 5 %, of the decades still shown
        ax.set_ylim(least / margin, top)  # a diverging run leaves through the top
    ax.set_xlabel("step")
    ax.grid(True, which="major", alpha=0.3)
    set_title(ax, title_of(race, what), width=60)
    add_legend(ax)
    return figure


def write_images(sweep_dir: Path, pngs: dict[str, bytes]) -> Path:
    """The PNGs as TensorBoard images in the sweep's `race/` run (through gdlab's TensorBoard
    sink, as a run's plots go); an earlier drawing's event file is replaced."""
    from gdlab.sinks.tensorboard import TensorBoardSink

    log_dir = Path(sweep_dir) / RACE_RUN
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    sink = TensorBoardSink(log_dir)
    try:
        for name, png in pngs.items():
            sink.add_image(f"{RACE_RUN}/{name}", png, 0)
    finally:
        sink.close()
    return log_dir


def draw_race(sweep_dir: Path, rows: Sequence[JobRow]) -> list[Path]:
    """paths.png, paths.gif, losses.png and the `race/` images, when the sweep is a race (see
    the module's doc); returns what it wrote. A race that can't be drawn is skipped with a
    warning: pictures never fail a sweep's summary."""
    from gdlab.plotting import png_bytes

    sweep_dir = Path(sweep_dir)
    written: list[Path] = []
    try:
        race = load_race(sweep_dir, rows)
        if race is None:
            return written
        pngs = {"paths": png_bytes(paths_figure(race)), "losses": png_bytes(losses_figure(race))}
        for name, filename in (("paths", PATHS_PNG), ("losses", LOSSES_PNG)):
            write_bytes_atomic(sweep_dir / filename, pngs[name])
            written.append(sweep_dir / filename)
        written.insert(1, write_gif(race, sweep_dir / PATHS_GIF))
        written.append(write_images(sweep_dir, pngs))
    except Exception as err:  # a picture is a view of the results, never a reason to fail
        log.warning("gdlab: skipped the race pictures: %s: %s", type(err).__name__, err)
    return written
