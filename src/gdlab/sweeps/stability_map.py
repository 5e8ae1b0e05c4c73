"""stability_map.png of a sweep over two axes: the final excess loss over the grid they span.

A sweep over two numeric keys, such as `optimizer.lr` × `optimizer.momentum` on up to
1,000 × 1,000 points (a population sweep), gets a heatmap of each cell's final excess loss
f − f* on a log colour scale (the final loss where f* is unknown), the diverged cells in one
plain colour and cells without a result blank. Where the axes are (`optimizer.lr`,
`optimizer.momentum`), the rule is SGD and the objective knows its curvature L, the rule
book's stability boundary (`gdlab.rules.lr_limit`: 2(1+β)/((1−d)L) for heavy ball,
2(1+β)/((1+2β)L) with Nesterov) is drawn over it, and the legend says how far the measured
edge (the smallest diverging lr of each momentum) is from it, in grid cells. A sweep that also
varies `optimizer.nesterov` gets one panel per setting, each with its own boundary.

Three layers, so the picture does not depend on how members are stored:

- `stability_map_figure` / `stability_panels_figure`: the figure from 1-D arrays, one entry
  per member or run (the grid is rebuilt from the distinct x and y values); with
  `measured_edge` and `edge_agreement`, the measured edge and its distance from the theory;
- `plan_stability_map` / `draw_stability_map_columns`: the sweep's columns (override key ->
  values, status, excess loss, lr limit) -> which axes, panels and theory (`MapPlan`) ->
  stability_map.png; what a columnar member file feeds directly;
- `draw_stability_map`: the same from the `JobRow`s of `gdlab.sweeps.summary.collect_jobs`.

Pictures never fail a sweep: `draw_stability_map*` log a warning and return None. numpy and
matplotlib are imported only to draw, so importing this module costs nothing.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gdlab.atomic import write_bytes_atomic
from gdlab.plotting import png_bytes, set_title, shorten
from gdlab.rules import RANKED, Status, stability_constant
from gdlab.rules import lr_limit as sgd_lr_limit
from gdlab.sweeps.jobs import JobRow, load_yaml

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

log = logging.getLogger("gdlab")

STABILITY_MAP = "stability_map.png"
LR_KEY = "optimizer.lr"
MOMENTUM_KEY = "optimizer.momentum"
NESTEROV_KEY = "optimizer.nesterov"
#: the fewest distinct values each axis needs for a map worth drawing
MIN_VALUES = 4
#: the excess loss drawn where nothing is positive (log scale floor)
DEFAULT_FLOOR = 1e-16
#: colours: diverged cells, the theory line
DIVERGED_COLOUR = "0.3"
THEORY_COLOUR = "#ff3b30"
#: values agreeing to this many significant digits are one grid value (0.3 vs 0.30000000000000004)
DIGITS = 12
#: points the theory curve is drawn with
CURVE_POINTS = 400
#: how far (relative) the curvature read from each member's lr limit may spread
L_SPREAD = 1e-6
#: bytes of population.json's head searched for the job-level `curvature` (it precedes the
#: member columns)
HEAD_BYTES = 1 << 16

#: a boundary: a callable y -> x (numpy in, numpy out), or (y values, x values) to interpolate
TheoryLike = Callable[[Any], Any] | tuple[Any, Any]

AXIS_LABELS = {
    LR_KEY: "learning rate",
    MOMENTUM_KEY: "momentum β",
    "optimizer.dampening": "dampening d",
    "optimizer.weight_decay": "weight decay",
}


# --------------------------------------------------------------------------- the grid


def snap(values: Any) -> np.ndarray:
    """Float64 values rounded to DIGITS significant digits, so that two spellings of one
    number (0.3, 0.30000000000000004) fall on one grid line."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    out = values.copy()
    finite = np.isfinite(values) & (values != 0)
    magnitude = np.floor(np.log10(np.abs(values[finite])))
    scale = 10.0 ** (DIGITS - 1 - magnitude)
    out[finite] = np.round(values[finite] * scale) / scale
    return out


def is_geometric(values: Any) -> bool:
    """Whether sorted distinct `values` are closer to evenly spaced in log than in linear
    terms (a log axis): all positive, at least three, and the log steps vary less (relative
    to their mean) than the linear steps."""
    import numpy as np

    values = np.unique(np.asarray(values, dtype=np.float64))
    if values.size < 3 or not (values > 0).all():
        return False
    linear, logs = np.diff(values), np.diff(np.log(values))
    spread_linear = linear.std() / linear.mean()
    spread_log = logs.std() / logs.mean()
    return bool(spread_log < spread_linear - 1e-9)


def cell_edges(centres: Any, log: bool) -> np.ndarray:
    """The n + 1 edges of cells centred on sorted distinct `centres`: midpoints (geometric ones
    on a log axis), the outer cells as wide as their neighbours (a lone value gets a cell of
    ±0.5, or a factor of √10 on a log axis)."""
    import numpy as np

    centres = np.asarray(centres, dtype=np.float64)
    t = np.log10(centres) if log else centres
    if t.size == 1:
        edges = np.array([t[0] - 0.5, t[0] + 0.5])
    else:
        mid = (t[1:] + t[:-1]) / 2
        edges = np.concatenate([[t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]])
    return 10.0**edges if log else edges


@dataclass
class Grid:
    """The distinct x and y values of a set of members, and each member's cell."""

    xs: np.ndarray  # sorted distinct x
    ys: np.ndarray
    ix: np.ndarray  # each member's column, row
    iy: np.ndarray
    x_log: bool
    y_log: bool

    @classmethod
    def of(cls, x_values: Any, y_values: Any) -> Grid:
        import numpy as np

        x, y = snap(x_values), snap(y_values)
        keep = np.isfinite(x) & np.isfinite(y)
        xs, ix = np.unique(x[keep], return_inverse=True)
        ys, iy = np.unique(y[keep], return_inverse=True)
        full_ix = np.full(x.shape, -1, dtype=np.int64)
        full_iy = np.full(y.shape, -1, dtype=np.int64)
        full_ix[keep], full_iy[keep] = ix.ravel(), iy.ravel()
        return cls(xs, ys, full_ix, full_iy, is_geometric(xs), is_geometric(ys))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ys.size, self.xs.size)

    def cells(self, excess: Any, diverged: Any) -> tuple[np.ndarray, np.ndarray]:
        """[ny, nx] grids: the excess loss (the largest of a cell's members; NaN where none
        has one) and whether any of a cell's members diverged."""
        import numpy as np

        excess = np.asarray(excess, dtype=np.float64)
        diverged = np.asarray(diverged, dtype=bool)
        placed = self.ix >= 0
        flat = self.iy[placed] * self.xs.size + self.ix[placed]
        values = np.full(self.ys.size * self.xs.size, np.nan)
        np.fmax.at(values, flat, excess[placed])
        count = np.bincount(flat, weights=diverged[placed], minlength=values.size)
        return values.reshape(self.shape), (count > 0).reshape(self.shape)

    def position(self, x: Any) -> np.ndarray:
        """Fractional column index of x values (in log terms on a log axis), extrapolated
        linearly past the ends with the outer steps."""
        import numpy as np

        x = np.asarray(x, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            grid = np.log(self.xs) if self.x_log else self.xs
            t = np.log(x) if self.x_log else x
        index = np.arange(self.xs.size, dtype=np.float64)
        if self.xs.size == 1:
            return np.where(np.isfinite(t), 0.0, np.nan)
        out = np.interp(t, grid, index)
        low, high = t < grid[0], t > grid[-1]
        out[low] = (t[low] - grid[0]) / (grid[1] - grid[0])
        out[high] = index[-1] + (t[high] - grid[-1]) / (grid[-1] - grid[-2])
        out[~np.isfinite(t)] = np.nan
        return out


def theory_at(theory: TheoryLike | Any, ys: Any) -> np.ndarray:
    """A boundary's x at each y: calls it, or interpolates its (y, x) arrays; NaN where it
    gives none."""
    import numpy as np

    ys = np.asarray(ys, dtype=np.float64)
    if callable(theory):
        out = np.asarray(theory(ys), dtype=np.float64)
        return np.broadcast_to(out, ys.shape).copy()
    at_y, at_x = (np.asarray(a, dtype=np.float64) for a in theory)
    order = np.argsort(at_y)
    out = np.interp(ys, at_y[order], at_x[order], left=np.nan, right=np.nan)
    return out


def measured_edge(x_values: Any, y_values: Any, diverged: Any) -> tuple[np.ndarray, np.ndarray]:
    """(ys, edge): the distinct y values, sorted, and at each the smallest x at which a member
    diverged (the measured edge of stability); NaN where none did."""
    import numpy as np

    grid = Grid.of(x_values, y_values)
    _, down = grid.cells(np.full(grid.ix.shape, np.nan), diverged)
    first = np.where(down.any(axis=1), down.argmax(axis=1), -1)
    edge = np.where(first >= 0, grid.xs[np.maximum(first, 0)], np.nan)
    return grid.ys, edge


def edge_distances(
    x_values: Any, y_values: Any, diverged: Any, theory: TheoryLike, excess: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ys, distance): for each y, how many grid cells (along x, in the axis's own terms: log
    steps on a log axis) the measured edge is from the theory's boundary; NaN where they
    can't be compared.

    With i the column of the first diverged cell and t the theory's fractional column, the
    distance is |i − t|: below 1 exactly when the boundary lies between the last stable
    column before i and i. A row where nothing diverged is measured against a virtual column
    past the end (0 when the theory lies past the grid too); a row whose first column
    diverged agrees with any boundary below the grid. Rows without any result (`excess` not
    finite and not diverged, when `excess` is given) are skipped.
    """
    import numpy as np

    grid = Grid.of(x_values, y_values)
    if excess is None:
        excess = np.zeros(grid.ix.shape)
    values, down = grid.cells(excess, diverged)
    present = (down | np.isfinite(values)).any(axis=1)
    n = grid.xs.size
    first = np.where(down.any(axis=1), down.argmax(axis=1), n).astype(np.float64)
    t = grid.position(theory_at(theory, grid.ys))
    distance = np.abs(first - t)
    distance = np.where((first == n) & (t >= n), 0.0, distance)  # both past the end
    distance = np.where((first == 0) & (t <= 0), 0.0, distance)  # both before the start
    distance = np.where(present & np.isfinite(t), distance, np.nan)
    return grid.ys, distance


def edge_agreement(
    x_values: Any, y_values: Any, diverged: Any, theory: TheoryLike, excess: Any = None
) -> float:
    """The largest distance, in grid cells, between the measured edge and the theory over
    every y (see `edge_distances`); NaN where no row can be compared."""
    import numpy as np

    _, distance = edge_distances(x_values, y_values, diverged, theory, excess)
    distance = distance[np.isfinite(distance)]
    return float(distance.max()) if distance.size else math.nan


# --------------------------------------------------------------------------- the figure


@dataclass
class Panel:
    """One heatmap: members' coordinates and results, one entry each."""

    x_values: Any
    y_values: Any
    excess: Any
    diverged: Any
    theory: TheoryLike | None = None
    theory_label: str = "theory"
    title: str = ""


def axis_label(key: str, log: bool = False) -> str:
    name = AXIS_LABELS.get(key)
    text = f"{name} ({key})" if name else key
    return text + (", log scale" if log else "")


def stability_map_figure(
    x_name: str,
    x_values: Any,
    y_name: str,
    y_values: Any,
    excess: Any,
    diverged: Any,
    theory: TheoryLike | None = None,
    title: str = "",
    *,
    theory_label: str = "theory",
    value_label: str = "excess loss f − f*",
    log: bool = True,
) -> Figure:
    """The heatmap of one sweep over (x_name, y_name): arrays with one entry per member or
    run, the grid rebuilt from the distinct x and y values (a log axis where they are
    geometric); `excess` NaN where unknown, `diverged` cells in one plain colour, cells
    without a member or result blank. `theory` (y -> x, or (ys, xs) arrays) is drawn over it
    with `theory_label` and how far the measured edge is from it. On the log colour scale
    (`log`) values at or below 0 are drawn at a floor, which the colourbar's label names."""
    panel = Panel(x_values, y_values, excess, diverged, theory, theory_label)
    return stability_panels_figure(x_name, y_name, [panel], title, value_label, log)


def stability_panels_figure(
    x_name: str,
    y_name: str,
    panels: Sequence[Panel],
    title: str = "",
    value_label: str = "excess loss f − f*",
    log: bool = True,
) -> Figure:
    """One heatmap per panel side by side (at most a few), sharing one colour scale."""
    import numpy as np
    from matplotlib.colors import ListedColormap, LogNorm, Normalize
    from matplotlib.figure import Figure

    grids = [Grid.of(p.x_values, p.y_values) for p in panels]
    cells = [g.cells(p.excess, p.diverged) for g, p in zip(grids, panels, strict=True)]
    shown = np.concatenate([v[np.isfinite(v) & ~d].ravel() for v, d in cells] or [np.zeros(0)])
    floor = None
    if log:
        positive = shown[shown > 0]
        floor = 10.0 ** math.floor(math.log10(positive.min())) if positive.size else DEFAULT_FLOOR
        top = float(positive.max()) if positive.size else floor * 10
        norm: Any = LogNorm(vmin=floor, vmax=max(top, floor * 10))
    else:
        low, high = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
        norm = Normalize(vmin=low, vmax=high if high > low else low + 1.0)

    count = len(panels)
    figure = Figure(figsize=(6.4 + 4.6 * (count - 1), 5.2), dpi=100)
    left, right = (0.11, 0.8) if count == 1 else (0.07, 0.88)
    figure.subplots_adjust(left=left, right=right, bottom=0.2, top=0.9, wspace=0.22)
    axes = [figure.add_subplot(1, count, i + 1) for i in range(count)]
    colours = "viridis"
    mesh = None
    for ax, grid, panel, (values, down) in zip(axes, grids, panels, cells, strict=True):
        x_edges = cell_edges(grid.xs, grid.x_log) if grid.xs.size else np.array([0.0, 1.0])
        y_edges = cell_edges(grid.ys, grid.y_log) if grid.ys.size else np.array([0.0, 1.0])
        drawn = np.where(down, np.nan, values)
        if floor is not None:
            drawn = np.where(np.isfinite(drawn), np.maximum(drawn, floor), drawn)
        mesh = ax.pcolormesh(
            x_edges,
            y_edges,
            np.ma.masked_invalid(drawn),
            norm=norm,
            cmap=colours,
            shading="flat",
            rasterized=True,
        )
        if down.any():
            ax.pcolormesh(
                x_edges,
                y_edges,
                np.ma.masked_where(~down, np.ones(down.shape)),
                cmap=ListedColormap([DIVERGED_COLOUR]),
                vmin=0,
                vmax=1,
                shading="flat",
                rasterized=True,
            )
        ax.set_facecolor("white")
        ax.set_xscale("log" if grid.x_log else "linear")
        ax.set_yscale("log" if grid.y_log else "linear")
        ax.set_xlim(x_edges[0], x_edges[-1])
        ax.set_ylim(y_edges[0], y_edges[-1])
        draw_theory(ax, grid, panel, y_edges)
        ax.set_xlabel(axis_label(x_name, grid.x_log))
        if ax is axes[0]:
            ax.set_ylabel(axis_label(y_name, grid.y_log))
        legend_below(ax, panel, values, down)
        if panel.title:
            set_title(ax, panel.title, width=45)
    if mesh is not None:
        bar_axes = figure.add_axes((right + 0.02, 0.2, 0.022 if count == 1 else 0.012, 0.7))
        bar = figure.colorbar(mesh, cax=bar_axes)
        scale = " (log"
        if floor is not None and bool((shown <= 0).any()):
            scale += f"; 0 drawn at {floor:.0e}"
        bar.set_label(value_label + (scale + ")" if log else ""))
    if title:
        if count == 1 and not panels[0].title:
            set_title(axes[0], title, width=55)
        else:
            figure.suptitle(shorten(title, 110), fontsize=12)
    return figure


def draw_theory(ax: Any, grid: Grid, panel: Panel, y_edges: Any) -> None:
    """The boundary over the heatmap, across the y range; its legend entry says how far the
    measured edge is from it (in grid cells)."""
    import numpy as np
    from matplotlib import patheffects

    if panel.theory is None:
        return
    low, high = float(y_edges[0]), float(y_edges[-1])
    spaced = np.geomspace if grid.y_log else np.linspace
    ys = spaced(low, high, CURVE_POINTS)
    xs = theory_at(panel.theory, ys)
    label = panel.theory_label
    distance = edge_agreement(
        panel.x_values, panel.y_values, panel.diverged, panel.theory, panel.excess
    )
    if math.isfinite(distance):
        label += f"; measured edge within {distance:.2g} cells"
    ax.plot(
        xs,
        ys,
        color=THEORY_COLOUR,
        lw=2.0,
        ls="--",
        label=label,
        path_effects=[patheffects.withStroke(linewidth=3.5, foreground="white")],
    )


def legend_below(ax: Any, panel: Panel, values: Any, down: Any) -> None:
    """The legend under the axes: the theory line, diverged cells, cells without a result."""
    import numpy as np
    from matplotlib.patches import Patch

    handles, _ = ax.get_legend_handles_labels()
    if down.any():
        handles.append(Patch(facecolor=DIVERGED_COLOUR, label="diverged"))
    blank = ~down & ~np.isfinite(values)
    if blank.any():
        label = "no result (failed, or no member there)"
        handles.append(Patch(facecolor="white", edgecolor="0.6", label=label))
    if handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
            ncol=1 if panel.theory is not None else 2,
            fontsize=8,
            frameon=False,
        )


# --------------------------------------------------------------------------- a sweep's columns


def numeric(values: Any) -> np.ndarray | None:
    """A column as float64 (text parsed; missing values NaN), or None when a present value is
    not a finite number (a boolean, a name, inf)."""
    import numpy as np

    array = np.asarray(values)
    if array.dtype.kind == "b":
        return None
    try:
        out = np.asarray(array, dtype=np.float64)  # text is parsed, None is NaN
    except (TypeError, ValueError):
        return None
    return None if np.isinf(out).any() else out


def distinct(values: Any) -> int:
    """How many distinct values a column holds (missing ones count as one)."""
    import numpy as np

    array = np.asarray(values)
    if array.dtype.kind in "iuf":
        return int(np.unique(snap(array)).size)
    return len({None if v == "" else v for v in array.tolist()})


def truth(values: Any) -> np.ndarray:
    """A boolean column from text (`true`, `True`) or booleans."""
    import numpy as np

    array = np.asarray(values)
    if array.dtype.kind == "b":
        return array
    return np.array([str(v).strip().lower() == "true" for v in array.tolist()], dtype=bool)


def choose_axes(columns: Mapping[str, Any]) -> tuple[str, str, str | None] | None:
    """(x key, y key, split key): the two numeric keys that vary, lr on x and momentum on y
    when swept, else in key order; `optimizer.nesterov` as a third varying key splits the map
    into panels. None when the sweep is not such a grid (at least MIN_VALUES each)."""
    varying = [k for k, v in columns.items() if distinct(v) > 1]
    split = None
    if NESTEROV_KEY in varying and len(varying) == 3:
        split = NESTEROV_KEY
        varying.remove(NESTEROV_KEY)
    if len(varying) != 2 or any(numeric(columns[k]) is None for k in varying):
        return None
    if any(distinct(columns[k]) < MIN_VALUES for k in varying):
        return None
    ordered = sorted(varying, key=lambda k: (k != LR_KEY, k == MOMENTUM_KEY, k))
    return ordered[0], ordered[1], split


@dataclass
class RuleSettings:
    """What the boundary depends on besides the momentum: the job's config, overridden by the
    sweep's fixed override values."""

    name: str | None = None
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    clip_norm: float | None = None

    @classmethod
    def read(cls, job_dir: Path | None, fixed: Mapping[str, Any]) -> RuleSettings:
        optimizer: dict[str, Any] = {}
        if job_dir is not None:
            try:
                config = load_yaml(Path(job_dir) / ".hydra" / "config.yaml") or {}
                optimizer = dict(config.get("optimizer") or {})
            except (OSError, AttributeError, TypeError, ValueError, yaml.YAMLError):
                optimizer = {}
        for key, value in fixed.items():
            if key.startswith("optimizer."):
                optimizer[key.removeprefix("optimizer.")] = value
        settings = cls(name=None if optimizer.get("name") is None else str(optimizer["name"]))
        settings.dampening = float(optimizer.get("dampening") or 0.0)
        settings.nesterov = str(optimizer.get("nesterov", False)).strip().lower() == "true"
        settings.weight_decay = float(optimizer.get("weight_decay") or 0.0)
        clip = optimizer.get("clip_norm")
        settings.clip_norm = None if clip in (None, "null", "None", "") else float(clip)
        return settings

    def hyper(self, momentum: float, nesterov: bool | None = None) -> dict[str, Any]:
        return {
            "momentum": momentum,
            "dampening": self.dampening,
            "nesterov": self.nesterov if nesterov is None else nesterov,
            "weight_decay": self.weight_decay,
            "clip_norm": self.clip_norm,
        }


def curvature_from_limits(
    momentum: Any, limits: Any, settings: RuleSettings, nesterov: Any = None
) -> float | None:
    """L, read back from the members' lr limits (lr_limit = c / (L + weight_decay), c the
    rule's `stability_constant` at each member's momentum); None where no member has one or
    they disagree (beyond L_SPREAD)."""
    import numpy as np

    limits = np.asarray(limits, dtype=np.float64)
    momentum = np.asarray(momentum, dtype=np.float64)
    flags = None if nesterov is None else np.asarray(nesterov, dtype=bool)
    usable = np.flatnonzero(np.isfinite(limits) & (limits > 0) & np.isfinite(momentum))
    if not usable.size:
        return None
    picks = usable[np.linspace(0, usable.size - 1, min(usable.size, 200)).astype(int)]
    estimates = []
    for i in picks:
        flag = None if flags is None else bool(flags[i])
        constant = stability_constant("sgd", settings.hyper(float(momentum[i]), flag))
        if constant is None:
            return None
        c, shift = constant
        estimates.append(c / limits[i] - shift)
    found = np.asarray(estimates)
    L = float(np.median(found))
    if not L > 0 or np.abs(found - L).max() > L_SPREAD * L:
        return None
    return L


def population_curvature(job_dir: Path) -> float | None:
    """The job-level `curvature` of a population job (population.json's head, where the
    job-level fields precede the member columns): no member column is read."""
    try:
        with open(Path(job_dir) / "population.json", "rb") as handle:
            head = handle.read(HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r'"curvature"\s*:\s*(null|-?[0-9.eE+-]+)', head)
    if match is None or match.group(1) == "null":
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def theory_formula(settings: RuleSettings, nesterov: bool, L: float) -> str:
    """The legend's name of the boundary: `theory: 2(1+β)/L, L = 2`."""
    if nesterov:
        formula = "2(1+β)/((1+2β)L)"
    elif settings.dampening:
        formula = f"2(1+β)/((1−d)L), d = {settings.dampening:g}"
    else:
        formula = "2(1+β)/L"
    curvature = f"L = {L:.4g}"
    if settings.weight_decay:
        formula = formula.replace("L)", "(L+wd))").replace("/L", "/(L+wd)")
        curvature += f", wd = {settings.weight_decay:g}"
    return f"theory: {formula}, {curvature}"


def boundary(L: float, settings: RuleSettings, nesterov: bool) -> Callable[[Any], Any]:
    """momentum -> the rule book's largest stable lr (`gdlab.rules.lr_limit`), NaN outside
    [0, 1) or where the rule has none."""
    import numpy as np

    def at(momentum: Any) -> Any:
        out = []
        for m in np.asarray(momentum, dtype=np.float64).ravel().tolist():
            limit = None
            if 0.0 <= m < 1.0:
                hyper = settings.hyper(m, nesterov)
                limit = sgd_lr_limit(L, **hyper)
            out.append(math.nan if limit is None else limit)
        return np.asarray(out).reshape(np.shape(momentum))

    return at


@dataclass
class MapPlan:
    """What stability_map.png draws: its axes, panels (each with its theory, if any), title
    and colour scale."""

    x_key: str
    y_key: str
    panels: list[Panel]
    title: str
    value_label: str = "excess loss f − f*"
    log: bool = True
    curvature: float | None = None  # L where the theory is drawn

    def figure(self) -> Figure:
        return stability_panels_figure(
            self.x_key, self.y_key, self.panels, self.title, self.value_label, self.log
        )


def draw_stability_map_columns(
    sweep_dir: Path,
    columns: Mapping[str, Any],
    status: Any,
    excess: Any,
    *,
    lr_limit: Any = None,
    final_loss: Any = None,
    job_dir: Path | None = None,
    problem: str = "",
) -> Path | None:
    """stability_map.png in `sweep_dir` from a sweep's columns (see `plan_stability_map`).
    Returns the path, or None where the sweep is not a two-axis grid; never raises."""
    return write_map(
        sweep_dir,
        lambda: plan_stability_map(
            columns,
            status,
            excess,
            lr_limit=lr_limit,
            final_loss=final_loss,
            job_dir=job_dir,
            problem=problem,
        ),
    )


def write_map(sweep_dir: Path, plan_of: Callable[[], MapPlan | None]) -> Path | None:
    """stability_map.png in `sweep_dir` from the plan `plan_of` makes; None where there is no
    plan (not a two-axis sweep) or the picture could not be drawn (a warning says why)."""
    try:
        plan = plan_of()
        if plan is None:
            return None
        path = Path(sweep_dir) / STABILITY_MAP
        write_bytes_atomic(path, png_bytes(plan.figure()))
        return path
    except Exception as err:  # a picture is a view of the results, never a reason to fail
        log.warning("gdlab: skipped %s: %s: %s", STABILITY_MAP, type(err).__name__, err)
        return None


def plan_stability_map(
    columns: Mapping[str, Any],
    status: Any,
    excess: Any,
    *,
    lr_limit: Any = None,
    final_loss: Any = None,
    job_dir: Path | None = None,
    problem: str = "",
) -> MapPlan | None:
    """The map of a sweep's columns, one entry per member or run: `columns` maps each override
    key to its values (text or numbers), `status` the status names, `excess` the final excess
    loss (None/NaN where unknown), `lr_limit` each member's largest stable lr (gdlab.rules,
    None/NaN where unknown: L is read back from it), `final_loss` drawn where no excess loss
    is known. `job_dir` is one job's directory, for the rule's settings (`.hydra/config.yaml`)
    and, where no lr limit gives L, population.json's `curvature`. None where the sweep is not
    a two-axis grid (`choose_axes`)."""
    import numpy as np

    chosen = choose_axes(columns)
    if chosen is None:
        return None
    x_key, y_key, split = chosen
    x, y = numeric(columns[x_key]), numeric(columns[y_key])
    if x is None or y is None:
        return None
    status = np.asarray(status).astype(str)
    diverged = status == str(Status.DIVERGED)
    ranked = np.isin(status, [str(s) for s in RANKED])
    values = _floats(excess, x.shape)
    value_label, log_scale = "excess loss f − f*", True
    if not np.isfinite(values[ranked]).any() and final_loss is not None:
        values = _floats(final_loss, x.shape)
        value_label = "final loss (f* unknown)"
        finite = values[ranked & np.isfinite(values)]
        log_scale = bool(finite.size) and bool((finite > 0).all())
    values = np.where(ranked, values, np.nan)

    fixed = {k: _only(v) for k, v in columns.items() if distinct(v) == 1}
    flags = truth(columns[split]) if split else None
    settings = RuleSettings.read(job_dir, fixed)
    L = None
    if (x_key, y_key) == (LR_KEY, MOMENTUM_KEY) and settings.name in (None, "sgd"):
        if lr_limit is not None:
            L = curvature_from_limits(y, _floats(lr_limit, x.shape), settings, flags)
        if L is None and job_dir is not None and settings.name == "sgd":
            L = population_curvature(job_dir)
        if settings.clip_norm is not None:
            L = None  # clipping bounds the steps: no linear boundary
    groups = [(None, np.ones(x.shape, dtype=bool))]
    if split is not None and flags is not None:
        groups = [(flag, flags == flag) for flag in (False, True) if (flags == flag).any()]
    panels = []
    for flag, members in groups:
        nesterov = settings.nesterov if flag is None else bool(flag)
        panel = Panel(x[members], y[members], values[members], diverged[members])
        if L is not None:
            panel.theory = boundary(L, settings, nesterov)
            panel.theory_label = theory_formula(settings, nesterov, L)
        if flag is not None:
            panel.title = "Nesterov" if flag else "heavy ball"
        panels.append(panel)
    what = "final excess loss" if value_label.startswith("excess") else "final loss"
    head = f"{shorten(problem, 40)}: " if problem else ""
    title = f"{head}stability map, {what} of {x.size:,} runs"
    return MapPlan(x_key, y_key, panels, title, value_label, log_scale, L)


def _floats(values: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A column of numbers or None as float64 (None: NaN)."""
    import numpy as np

    if values is None:
        return np.full(shape, np.nan)
    array = np.asarray(values)
    if array.dtype.kind in "iuf":
        return array.astype(np.float64)
    return np.array([math.nan if v is None else float(v) for v in array.tolist()])


def _only(values: Any) -> Any:
    import numpy as np

    array = np.asarray(values)
    if not array.size:
        return None
    first = array.ravel()[0]
    return first.item() if hasattr(first, "item") else first  # object arrays hold plain values


# --------------------------------------------------------------------------- a sweep's rows


def draw_stability_map(sweep_dir: Path, rows: Sequence[JobRow]) -> Path | None:
    """stability_map.png of a sweep from its rows (`gdlab.sweeps.summary.collect_jobs`):
    see `plan_stability_map`. Returns its path, or None (not a two-axis sweep, or a picture
    that could not be drawn: a warning says why)."""
    return write_map(sweep_dir, lambda: plan_from_rows(sweep_dir, rows))


def plan_from_rows(sweep_dir: Path, rows: Sequence[JobRow]) -> MapPlan | None:
    """`plan_stability_map` of a sweep's rows; the rule's settings from the first row's job
    directory (a population member's `job#i` is its job's)."""
    if len(rows) < MIN_VALUES * MIN_VALUES:
        return None
    columns = rows_to_columns(rows)
    if choose_axes(columns) is None:
        return None
    sweep_dir = Path(sweep_dir)
    first = rows[0].job.split("#", 1)[0]
    problems = {r.problem for r in rows}
    return plan_stability_map(
        columns,
        [r.status for r in rows],
        [r.excess_loss for r in rows],
        lr_limit=[r.lr_limit for r in rows],
        final_loss=[r.final_loss for r in rows],
        job_dir=sweep_dir if first in ("", ".") else sweep_dir / first,
        problem=next(iter(problems)) if len(problems) == 1 else "",
    )


def rows_to_columns(rows: Sequence[JobRow]) -> dict[str, list[Any]]:
    """Each override key's values across the rows (None where a row lacks the key)."""
    keys = dict.fromkeys(k for row in rows for k in row.values)
    return {k: [row.values.get(k) for row in rows] for k in keys}
