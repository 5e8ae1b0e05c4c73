"""Plots of a run, drawn once when it ends: PNG files in the run directory and TensorBoard images.

- `loss.png`: the loss at every logged point; where the minimum f* is known, f - f* on a log
  axis (rounding below the dtype's precision on a labelled floor), else the loss itself (log
  scale when every loss is positive);
- `landscape.png`: for objectives with one parameter number, the function with the descent
  path on it; with two, contour lines with the path (the regression's (w, b) plane included),
  in equal aspect when the ranges are comparable. The view frames the start, the minimiser
  and the path near them; a diverging path is cut at the edge with a "diverges" arrow;
- `fit.png`: for one-feature linear regression, the data, the true line and the fitted line;
- `sharpness.png`: with `sharpness.every > 0`, the loss above and the sharpness below against
  the step (Cohen et al. 2021, Figure 1): the sharpness the run's lr limit judges (lambda_max
  of H for SGD, of P^-1 H for an adaptive rule), its edge-of-stability threshold (2/lr for
  plain SGD) dashed, and lambda_min faint (the bottom axis is linear: it may be negative).

The sink only keeps the logged records and sharpness measurements while the run goes (they are
already small CPU copies); matplotlib is imported and everything is drawn at the end, through
`matplotlib.figure.Figure` and the Agg canvas (no pyplot, no GUI backend), with Python's
garbage collector paused (`gdlab.plotting.paused_gc`: a full collection set off by the import
would walk all of torch's objects). `logger.plots=false` turns the sink off. A plot that cannot
be drawn is skipped with a warning; a full disk is an error (the PNGs are written atomically,
gdlab.atomic: whole, or not there).
Titles carry the run's lr and momentum (from `RunInfo.hparams`).
What every figure shares (size, PNG output, tick labels) is in `gdlab.plotting`, which the
sweep's plots (`gdlab.sweeps.lr_plot`, `gdlab.sweeps.edge_plot`) use too.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gdlab.atomic import DiskFull, write_bytes_atomic
from gdlab.events import LogRecord, RunInfo, RunResult
from gdlab.plotting import (
    axes_box_ratio,
    loss_axis,
    new_figure,
    new_stacked,
    paused_gc,
    plain_log_ticks,
    plain_ticks,
    png_bytes,
    set_title,
    step_ticks,
)
from gdlab.plotting import png_size as png_size  # re-exported: gdlab.sinks.tensorboard uses it

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from gdlab.curvature import SharpnessPoint

log = logging.getLogger("gdlab")

ImageWriter = Callable[[str, bytes, int], None]
GRID_1D = 300
GRID_2D = 80
#: a landscape frames the path within this many radii of its start and minimiser
REACH = 5.0
#: margin around the framed points, as a fraction of their span
PAD = 0.15
#: contours get equal aspect when their two ranges differ by at most this factor
EQUAL_ASPECT = 10.0
#: the sharpness panel turns symlog when a value exceeds its typical scale this many times
#: (a diverging run's curvature explodes; a linear axis would flatten the rest to zero)
SYMLOG_SPAN = 1e3


# --------------------------------------------------------------------------- helpers


def finite_positive(values: Sequence[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0


def flat(params: dict[str, Tensor]) -> list[float]:
    """Every number of a parameter dict, in the dict's order."""
    return [v for p in params.values() for v in p.detach().double().reshape(-1).tolist()]


def axis_names(params: dict[str, Tensor]) -> list[str]:
    """`x`, or `v[0]`, `v[1]`, or `w`, `b`: one label per parameter number."""
    names = []
    for name, value in params.items():
        names += [name] if value.numel() == 1 else [f"{name}[{i}]" for i in range(value.numel())]
    return names


def evaluate(
    loss: Callable[[dict[str, Tensor]], Tensor],
    template: dict[str, Tensor],
    points: Tensor,
) -> Tensor:
    """loss at each row of `points` (N x numbers), as a CPU float64 vector.

    `loss` is written for one setting of the parameters, so it is mapped over the rows with
    torch.func.vmap; an objective that vmap cannot handle is evaluated point by point.
    """
    shapes = [(name, p.shape, p.numel()) for name, p in template.items()]

    def unflatten(row: Tensor) -> dict[str, Tensor]:
        out, start = {}, 0
        for name, shape, numel in shapes:
            out[name] = row[start : start + numel].reshape(shape)
            start += numel
        return out

    with torch.no_grad():
        try:
            values = torch.func.vmap(lambda row: loss(unflatten(row)))(points)
        except Exception:
            values = torch.stack([loss(unflatten(row)).reshape(()) for row in points])
    return values.detach().double().cpu()


# --------------------------------------------------------------------------- run plots


def precision(dtype: str | None) -> float:
    """Machine epsilon of a run's dtype by name (float32's where the name is unknown)."""
    value = getattr(torch, str(dtype or "").removeprefix("torch."), None)
    return torch.finfo(value).eps if isinstance(value, torch.dtype) else torch.finfo().eps


def loss_figure(
    steps: Sequence[int],
    losses: Sequence[float],
    title: str,
    minimum: float | None = None,
    dtype: str | None = None,
) -> Figure:
    """The loss at each logged point. Where the minimum f* is known, f - f* on a log axis
    (linear convergence is a straight line); values below the rounding of the run's dtype
    at f* are drawn on a dotted, labelled floor line (`excess_curve`). Otherwise the loss
    itself, on a log axis when every loss is positive."""
    figure = new_figure()
    ax = figure.add_subplot()
    points = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v)]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    excess = excess_curve(ys, minimum, dtype)
    if excess is not None:
        values, floor, meaning = excess
        ax.plot(xs, values, color="tab:blue", lw=1.5, label=f"f* = {minimum:.6g}")
        ax.set_yscale("log")
        if any(v <= floor for v in values):
            ax.axhline(floor, color="0.35", ls=":", lw=1.2, label=meaning)
        ax.set_ylabel("loss − f*")
        ax.legend(loc="best", fontsize=8)
    else:
        if points:
            ax.plot(xs, ys, color="tab:blue", lw=1.5)
        if finite_positive(losses):
            ax.set_yscale("log")
            if max(ys) < 10 * min(ys):
                plain_log_ticks(ax.yaxis)
        elif ys and max(abs(v) for v in ys) >= 1e4:
            plain_ticks(ax.yaxis)  # -5e+15, not a 1e15 multiplier under the title
        ax.set_ylabel("loss")
    ax.set_xlabel("step")
    set_title(ax, title)
    ax.grid(True, which="both" if excess is not None else "major", alpha=0.3)
    return figure


def excess_curve(
    losses: Sequence[float], minimum: float | None, dtype: str | None
) -> tuple[list[float], float, str] | None:
    """(max(f - f*, floor) for each loss, the floor, what the floor stands for); None when f*
    is unknown, or when a loss lies below f* by more than rounding (16 eps * max(1, |f*|): a
    mini-batch loss, or a wrong f*): then the raw loss is the honest picture.

    The floor is the rounding a logged loss carries near f*: one unit of the dtype at f*
    (eps * |f*|), or the largest dip below f* where rounding made one. Where f* = 0 and no
    loss dips below it, a loss is exact down to tiny values; only zeros need a floor, a decade
    under the least positive value.
    """
    if minimum is None or not math.isfinite(minimum) or not losses:
        return None
    eps = precision(dtype)
    excess = [v - minimum for v in losses]
    if min(excess) < -16 * eps * max(1.0, abs(minimum)):
        return None
    name = str(dtype or "float32").removeprefix("torch.")
    floor = max(eps * abs(minimum), -min(excess))
    meaning = f"{name} precision ({floor:.2g}): smaller values drawn here"
    if floor <= 0:
        positive = [e for e in excess if e > 0]
        floor = 10.0 ** (math.floor(math.log10(min(positive))) - 1) if positive else eps
        meaning = f"f − f* = 0, drawn at {floor:.0e}"
    return [max(e, floor) for e in excess], floor, meaning


def view_box(
    points: Sequence[Sequence[float]], anchors: Sequence[Sequence[float]], reach: float = REACH
) -> tuple[list[float], list[float]]:
    """(lows, highs) of the view: the anchors (start, minimiser) and the path points within
    `reach` radii of them (the radius: half the anchors' spread, or half their distance from
    the origin when they coincide). A converging path lies inside and is framed whole; a
    diverging one is framed where it leaves the start, not at 1e7."""
    dim = len(anchors[0])
    lows = [min(a[k] for a in anchors) for k in range(dim)]
    highs = [max(a[k] for a in anchors) for k in range(dim)]
    center = [(lo + hi) / 2 for lo, hi in zip(lows, highs, strict=True)]
    radius = max(math.dist(a, center) for a in anchors)
    if radius <= 0:
        radius = 0.5 * max(math.hypot(*a) for a in anchors) or 1.0
    for point in points:
        if math.dist(point, center) <= reach * radius:
            lows = [min(lo, v) for lo, v in zip(lows, point, strict=True)]
            highs = [max(hi, v) for hi, v in zip(highs, point, strict=True)]
    for k in range(dim):
        span = highs[k] - lows[k]
        pad = PAD * span if span > 0 else 0.5 * radius
        lows[k], highs[k] = lows[k] - pad, highs[k] + pad
    return lows, highs


def equal_aspect_box(
    lows: list[float], highs: list[float], box_ratio: float
) -> tuple[list[float], list[float]] | None:
    """The view widened along one axis so that one unit is as long on both axes of an axes
    box `box_ratio` (height / width); None when the spans differ by more than EQUAL_ASPECT."""
    dx, dy = highs[0] - lows[0], highs[1] - lows[1]
    if not (dx > 0 and dy > 0) or max(dx, dy) > EQUAL_ASPECT * min(dx, dy):
        return None
    cx, cy = (lows[0] + highs[0]) / 2, (lows[1] + highs[1]) / 2
    if dy / dx < box_ratio:
        dy = dx * box_ratio
    else:
        dx = dy / box_ratio
    return [cx - dx / 2, cy - dy / 2], [cx + dx / 2, cy + dy / 2]


def clip_segment(
    a: Sequence[float], b: Sequence[float], lows: Sequence[float], highs: Sequence[float]
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The part of the segment a-b inside the box (Liang-Barsky), or None."""
    t0, t1 = 0.0, 1.0
    for k in range(2):
        d = b[k] - a[k]
        for p, q in ((-d, a[k] - lows[k]), (d, highs[k] - a[k])):
            if p == 0:
                if q < 0:
                    return None
                continue
            t = q / p
            if p < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
            if t0 > t1:
                return None

    def at(t: float) -> tuple[float, float]:  # the ends themselves exactly, not a + 1 * (b - a)
        p = a if t == 0 else b if t == 1 else [u + t * (v - u) for u, v in zip(a, b, strict=True)]
        return (p[0], p[1])

    return at(t0), at(t1)


def clipped_path(
    points: Sequence[Sequence[float]], lows: Sequence[float], highs: Sequence[float]
) -> tuple[list[float], list[float], list[int], tuple[Any, Any] | None]:
    """The path cut to the box: (xs, ys) with NaN between pieces, the indices in xs of the
    path's own points (for markers), and the last place it leaves the box, (point, direction),
    when its final point lies outside."""
    xs, ys, marks, exit_at, _ = clip_path(points, lows, highs)
    return xs, ys, marks, exit_at


def clip_path(
    points: Sequence[Sequence[float]], lows: Sequence[float], highs: Sequence[float]
) -> tuple[list[float], list[float], list[int], tuple[Any, Any] | None, list[int]]:
    """`clipped_path`, plus `ends`: `xs[: ends[i]]` is the path up to its point i, cut the
    same way (what an animation draws frame by frame)."""

    def inside(p: Sequence[float]) -> bool:
        return all(lo <= v <= hi for v, lo, hi in zip(p, lows, highs, strict=False))

    xs: list[float] = []
    ys: list[float] = []
    marks: list[int] = []
    exit_at = None
    if inside(points[0]):
        xs, ys, marks = [points[0][0]], [points[0][1]], [0]
    ends = [len(xs)]
    for a, b in itertools.pairwise(points):
        piece = clip_segment(a, b, lows, highs)
        if piece is None:
            ends.append(len(xs))
            continue
        (x0, y0), (x1, y1) = piece
        if not xs or (xs[-1], ys[-1]) != (x0, y0):
            if xs:
                xs.append(math.nan)
                ys.append(math.nan)
            xs.append(x0)
            ys.append(y0)
        xs.append(x1)
        ys.append(y1)
        if inside(b):
            marks.append(len(xs) - 1)
        else:
            exit_at = ((x1, y1), (b[0] - a[0], b[1] - a[1]))
        ends.append(len(xs))
    return xs, ys, marks, exit_at if not inside(points[-1]) else None, ends


def mark_exit(
    ax: Any,
    exit_at: tuple[Any, Any],
    lows: list[float],
    highs: list[float],
    color: str = "tab:red",
) -> None:
    """An arrow at the frame's edge where the path leaves the view, labelled "diverges"."""
    (x, y), (dx, dy) = exit_at
    ux, uy = dx / (highs[0] - lows[0]), dy / (highs[1] - lows[1])
    norm = math.hypot(ux, uy) or 1.0
    ux, uy = ux / norm, uy / norm
    # the label sits back along the path and beside it, on the side nearer the view's centre
    box = ax.get_position()
    width, height = ax.get_figure().get_size_inches() * 72 * (box.width, box.height)
    fx, fy = (x - lows[0]) / (highs[0] - lows[0]), (y - lows[1]) / (highs[1] - lows[1])

    def offset(sign: float) -> tuple[float, float]:
        return (-40 * ux + sign * 18 * uy, -40 * uy - sign * 18 * ux)

    def off_centre(sign: float) -> float:
        ox, oy = offset(sign)
        return math.hypot(fx + ox / width - 0.5, fy + oy / height - 0.5)

    text_at = offset(min((1.0, -1.0), key=off_centre))
    ax.annotate(
        "diverges",
        xy=(x, y),
        xytext=text_at,
        textcoords="offset points",
        ha="center",
        va="center",
        color=color,
        fontsize=9,
        fontweight="bold",
        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
        arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.5, "shrinkA": 0},
        annotation_clip=False,
        zorder=6,
    )


def draw_minimizer(ax: Any, x: float, y: float) -> None:
    """The minimiser: a black star, labelled."""
    ax.plot([x], [y], "*", color="black", ms=12, label="minimiser", zorder=4)


def draw_curve(
    ax: Any,
    loss: Callable[[dict[str, Tensor]], Tensor],
    template: dict[str, Tensor],
    lows: list[float],
    highs: list[float],
    minimizer: list[float] | None,
    path_points: Sequence[tuple[float, float]],
) -> tuple[list[float], list[float]]:
    """One parameter number: f over the view's x range and the minimiser; returns the view
    as (x, loss) boxes, its loss range spanning f and the `path_points` (x, loss) inside."""
    device, dtype = next(iter(template.values())).device, next(iter(template.values())).dtype
    xs = torch.linspace(lows[0], highs[0], GRID_1D, dtype=torch.float64)
    ys = evaluate(loss, template, xs.to(device=device, dtype=dtype).unsqueeze(1))
    ax.plot(xs.tolist(), ys.tolist(), color="tab:gray", lw=1.5, label="f")
    fmin = None
    if minimizer:
        at = torch.tensor([minimizer], dtype=dtype, device=device)
        fmin = evaluate(loss, template, at).tolist()
    finite_f = [v for v in ys.tolist() + (fmin or []) if math.isfinite(v)]
    inside = [y for x, y in path_points if lows[0] <= x <= highs[0] and math.isfinite(y)]
    y_lo, y_hi = min(finite_f + inside), max(finite_f + inside)
    pad = PAD / 3 * (y_hi - y_lo) if y_hi > y_lo else max(1.0, abs(y_lo)) * 0.1
    if minimizer and fmin:
        draw_minimizer(ax, minimizer[0], fmin[0])
    return [lows[0], y_lo - pad], [highs[0], y_hi + pad]


def draw_contours(
    ax: Any,
    loss: Callable[[dict[str, Tensor]], Tensor],
    template: dict[str, Tensor],
    lows: list[float],
    highs: list[float],
) -> tuple[list[float], list[float]]:
    """Two parameter numbers: contour lines of f over the view, in equal aspect when the two
    ranges are comparable (the view is widened along one axis for it); returns the view."""
    import numpy as np

    device, dtype = next(iter(template.values())).device, next(iter(template.values())).dtype
    equal = equal_aspect_box(lows, highs, axes_box_ratio(ax))
    if equal is not None:
        lows, highs = equal
        ax.set_aspect("equal")
    gx = torch.linspace(lows[0], highs[0], GRID_2D, dtype=torch.float64)
    gy = torch.linspace(lows[1], highs[1], GRID_2D, dtype=torch.float64)
    mesh_y, mesh_x = torch.meshgrid(gy, gx, indexing="ij")
    grid = torch.stack([mesh_x.reshape(-1), mesh_y.reshape(-1)], dim=1)
    z = evaluate(loss, template, grid.to(device=device, dtype=dtype)).numpy()
    z = np.ma.masked_invalid(z.reshape(GRID_2D, GRID_2D))
    if z.count() and float(z.max()) > float(z.min()):
        levels = np.unique(np.quantile(z.compressed(), np.linspace(0.01, 0.99, 20)))
        if len(levels) > 1:
            contours = ax.contour(
                mesh_x.numpy(), mesh_y.numpy(), z, levels=levels, cmap="viridis", linewidths=0.8
            )
            ax.clabel(contours, contours.levels[::4], fontsize=7, fmt="%.3g")
    return lows, highs


def landscape_figure(
    loss: Callable[[dict[str, Tensor]], Tensor],
    template: dict[str, Tensor],
    path: list[list[float]],
    path_losses: list[float],
    minimizer: list[float] | None,
    title: str,
) -> Figure | None:
    """The function with the descent path (one number) or contours with the path (two).

    The view frames the start, the minimiser (where known) and the path near them
    (`view_box`); where the path leaves that view it is cut at the edge, and an arrow marks
    where it leaves for good ("diverges"). Contours get equal aspect when the two ranges are
    comparable, so the path crosses the contours at the angles it really does.
    """
    dim = len(path[0])
    names = axis_names(template)
    ok = [i for i, p in enumerate(path) if all(math.isfinite(v) for v in p)]
    if not ok:
        return None
    figure = new_figure()
    ax = figure.add_subplot()
    anchors = [path[ok[0]]] + ([minimizer] if minimizer else [])
    (lows, highs) = view_box([path[i] for i in ok], anchors)
    if dim == 1:
        points = [(path[i][0], path_losses[i]) for i in ok if math.isfinite(path_losses[i])]
        lows, highs = draw_curve(ax, loss, template, lows, highs, minimizer, points)
        if not points:
            return None
        ax.set_xlabel(names[0])
        ax.set_ylabel("loss")
    else:
        if minimizer:
            draw_minimizer(ax, minimizer[0], minimizer[1])
        lows, highs = draw_contours(ax, loss, template, lows, highs)
        points = [(path[i][0], path[i][1]) for i in ok]
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    px, py, marks, exit_at = clipped_path(points, lows, highs)
    size = 2.5 if dim == 2 else 3
    ax.plot(px, py, "-o", color="tab:red", ms=size, lw=0.8, markevery=marks, label="descent")
    ax.plot([points[0][0]], [points[0][1]], "o", color="tab:green", ms=7, label="start", zorder=5)
    if exit_at is not None:
        mark_exit(ax, exit_at, lows, highs)
    ax.set_xlim(lows[0], highs[0])
    ax.set_ylim(lows[1], highs[1])
    set_title(ax, title)
    ax.legend(loc="best", fontsize=8)
    return figure


def fit_figure(objective: Any, fitted: dict[str, Tensor], title: str) -> Figure:
    """One-feature regression: the data, the true line y = w* x + b*, the fitted line."""
    x = objective.X[:, 0].detach().double().cpu()
    y = objective.y.detach().double().cpu()
    lo, hi = float(x.min()), float(x.max())
    figure = new_figure()
    ax = figure.add_subplot()
    ax.scatter(x.tolist(), y.tolist(), s=10, alpha=0.6, color="tab:blue", label="data")
    true_w, true_b = float(objective.true_w[0]), float(objective.true_b)
    w, b = float(fitted["w"].reshape(-1)[0]), float(fitted["b"].reshape(-1)[0])
    ax.plot([lo, hi], [true_w * lo + true_b, true_w * hi + true_b], "--", color="black",
            label=f"true: y = {true_w:.3g} x + {true_b:.3g}")  # fmt: skip
    if math.isfinite(w) and math.isfinite(b):
        ax.plot([lo, hi], [w * lo + b, w * hi + b], color="tab:red",
                label=f"fitted: y = {w:.3g} x + {b:.3g}")  # fmt: skip
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    set_title(ax, title)
    ax.legend(loc="best", fontsize=8)
    return figure


def symlog_axis(axis: Any, values: Sequence[float], linthresh: float) -> None:
    """A symlog scale, linear within +-linthresh, with a tick at 0 and at most about eight
    powers of ten on each side (every one would crowd a panel spanning 20 decades)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    axis.axes.set_yscale("symlog", linthresh=linthresh)
    start = round(math.log10(linthresh))
    ticks = [0.0]
    for sign in (1.0, -1.0):
        reach = max([sign * v for v in values if math.isfinite(v)], default=0.0)
        if reach <= 0:
            continue
        stop = max(start, math.ceil(math.log10(reach)))
        stride = max(1, math.ceil((stop - start + 1) / 8))
        ticks += [sign * 10.0**e for e in range(start, stop + 1, stride)]
    axis.set_major_locator(FixedLocator(sorted(ticks)))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: power_label(v)))


def power_label(value: float) -> str:
    """`0`, `1e20`, `-1e3`: a signed power of ten, short."""
    if value == 0:
        return "0"
    return f"{'-' if value < 0 else ''}1e{round(math.log10(abs(value)))}"


def threshold_label(points: Sequence[SharpnessPoint], rule: str | None) -> str:
    """`2/lr = 20` for plain SGD; `threshold for optimizer=adam: 38/lr` otherwise (the
    constant c = threshold x lr where it is one number, the value where it is one)."""
    pairs = [(p.threshold, p.lr) for p in points if p.threshold is not None and p.lr]
    constants = {float(f"{t * lr:.6g}") for t, lr in pairs}
    values = {float(f"{t:.6g}") for t, _ in pairs}
    value = f" = {next(iter(values)):.4g}" if len(values) == 1 else ""
    if constants == {2.0} and rule in (None, "sgd"):
        return f"2/lr{value}"
    head = f"threshold for optimizer={rule or '?'}"
    return f"{head}: {next(iter(constants)):.3g}/lr{value}" if len(constants) == 1 else head


def sharpness_figure(
    points: Sequence[SharpnessPoint],
    steps: Sequence[int],
    losses: Sequence[float],
    title: str,
    rule: str | None = None,
) -> Figure:
    """Loss above, sharpness below, against the step (Cohen et al. 2021, Figure 1).

    Below: the sharpness the lr limit judges (lambda_max(H) for SGD; lambda_max(P^-1 H) for
    an adaptive rule, from its first step on) and, dashed, the threshold at which this lr is
    the edge of stability (held between measurements: a schedule moves it in steps). For SGD
    lambda_min(H) is drawn faint; an adaptive rule's is left out, as H's scale is not P^-1
    H's. A linear axis, as lambda_min may be negative; symlog when a diverging run's values
    dwarf the rest (`SYMLOG_SPAN`). A threshold that climbs far above the sharpness (a
    decaying lr) is cut at the top, where it says how high it goes, so the sharpness keeps
    the panel.
    """
    figure, top, bottom = new_stacked()
    loss_points = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v)]
    if not loss_points:  # no logged loss: the full objective at each measurement
        loss_points = [(p.step, p.loss) for p in points if math.isfinite(p.loss)]
    top.plot([s for s, _ in loss_points], [v for _, v in loss_points], color="tab:blue", lw=1.5)
    loss_axis(top, [v for _, v in loss_points])
    top.set_ylabel("loss")
    top.grid(True, alpha=0.3)
    set_title(top, title)

    adaptive = any(p.preconditioned is not None for p in points)
    marker = "o" if len(points) <= 60 else None

    def curve(value: Callable[[SharpnessPoint], float | None]) -> tuple[list[int], list[float]]:
        kept = [(p.step, v) for p in points if (v := value(p)) is not None and math.isfinite(v)]
        return [s for s, _ in kept], [v for _, v in kept]

    xs, judged = curve(lambda p: p.preconditioned if adaptive else p.lambda_max)
    name = "λ_max(P⁻¹H)" if adaptive else "sharpness λ_max(H)"
    bottom.plot(xs, judged, color="tab:red", lw=1.8, marker=marker, ms=3, label=name)
    drawn = list(judged)
    if not adaptive:
        xs, lows = curve(lambda p: p.lambda_min)
        bottom.plot(xs, lows, color="tab:purple", lw=1.0, alpha=0.45, label="λ_min(H)")
        drawn += lows
    if any(v < 0 for v in drawn):
        bottom.axhline(0.0, color="0.5", lw=0.8)
    xs, limits = curve(lambda p: p.threshold)
    cap = None
    if limits:
        cap = 1.15 * max([*judged, min(limits)])
        label = threshold_label(points, rule)
        if max(limits) > cap:
            label += f" (up to {max(limits):.3g}, off the top)"
        else:
            cap = None
        bottom.plot(xs, limits, color="black", ls="--", lw=1.3, drawstyle="steps-post",
                    label=label)  # fmt: skip
    # the typical scale: where the run starts, or its threshold (not a diverged run's median)
    typical = [abs(judged[0])] if judged else []
    typical += [sorted(limits)[len(limits) // 2]] if limits else []
    scale = min([v for v in typical if v > 0], default=0.0)
    if scale > 0 and drawn and max(abs(v) for v in drawn) > SYMLOG_SPAN * scale:
        symlog_axis(bottom.yaxis, drawn, 10.0 ** math.floor(math.log10(scale)))
        if cap is not None:
            bottom.set_ylim(top=cap)
    else:
        plain_ticks(bottom.yaxis)
        if cap is not None:
            low = min([0.0, *drawn])
            bottom.set_ylim(low - 0.05 * (cap - low), cap)
    step_ticks(bottom.xaxis)
    bottom.set_ylabel("preconditioned sharpness" if adaptive else "sharpness")
    bottom.set_xlabel("step")
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="best", fontsize=8)
    return figure


def is_one_feature_regression(objective: Any, params: dict[str, Tensor]) -> bool:
    X = getattr(objective, "X", None)
    return (
        isinstance(X, Tensor)
        and X.dim() == 2
        and X.shape[1] == 1
        and isinstance(getattr(objective, "y", None), Tensor)
        and hasattr(objective, "true_w")
        and hasattr(objective, "true_b")
        and {"w", "b"} <= set(params)
    )


class PlotSink:
    """Keeps the logged points; draws loss.png, landscape.png, fit.png and sharpness.png
    when the run ends.

    `images` (the TensorBoard sink's `add_image`) also receives each PNG as `plots/<name>`
    (filed under `train_plots/` in TensorBoard).
    A plot that cannot be drawn or written is skipped with a warning, but a full disk is the
    run's error (`gdlab.atomic.DiskFull`): its files are not complete. A PNG is written
    atomically: whole, or not there.
    """

    def __init__(
        self, run_dir: Path, objective: Any = None, images: ImageWriter | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.objective = objective
        self.images = images
        self.info: RunInfo | None = None
        self.records: list[LogRecord] = []
        #: the Hessian measurements (`sharpness.every`), from the trainer's `log_sharpness`
        self.sharpness: list[SharpnessPoint] = []
        self.written: list[Path] = []

    def start(self, info: RunInfo) -> None:
        self.info = info

    def log(self, record: LogRecord) -> None:
        self.records.append(record)

    def log_sharpness(self, point: SharpnessPoint) -> None:
        self.sharpness.append(point)

    def finish(self, result: RunResult) -> None:
        title = self._title(result)
        plots: list[tuple[str, Callable[[], Figure | None]]] = []
        if self.records:
            plots += [
                ("loss", lambda: self._loss(title, result)),
                ("landscape", lambda: self._landscape(result, title)),
                ("fit", lambda: self._fit(result, title)),
            ]
        if result.sharpness:  # the whole history, points of a resumed run's earlier sessions too
            from gdlab.curvature import SharpnessPoint

            self.sharpness = [SharpnessPoint(**p) for p in result.sharpness["history"]]
        if self.sharpness:
            plots.append(("sharpness", lambda: self._sharpness(title)))
        with paused_gc():  # importing matplotlib would set off a full collection (0.08 s)
            for filename, draw in plots:
                try:
                    figure = draw()
                    if figure is not None:
                        self._emit(filename, figure, result.steps)
                except DiskFull:
                    raise  # the run's files are not complete: not a plot's fault
                except Exception as err:  # a plot is a view of the results, never a failure
                    log.warning("gdlab: skipped %s.png: %s: %s", filename, type(err).__name__, err)

    def close(self) -> None:
        pass

    def _emit(self, name: str, figure: Figure, step: int) -> None:
        png = png_bytes(figure)
        path = self.run_dir / f"{name}.png"
        write_bytes_atomic(path, png)  # never a torn or empty PNG, whatever happens
        self.written.append(path)
        if self.images is not None:
            self.images(f"plots/{name}", png, step)

    def _title(self, result: RunResult) -> str:
        """`quadratic: converged after 41 steps (lr 0.1, momentum 0.9)`."""
        name = self.info.objective if self.info else "run"
        hparams = self.info.hparams if self.info else {}
        knobs = [
            f"{label} {value:g}" if isinstance(value, int | float) else f"{label} {value}"
            for label, key in (("lr", "optimizer.lr"), ("momentum", "optimizer.momentum"))
            if (value := hparams.get(key)) is not None
        ]
        suffix = f" ({', '.join(knobs)})" if knobs else ""
        return f"{name}: {result.status} after {result.steps} steps{suffix}"

    def _loss(self, title: str, result: RunResult) -> Figure:
        steps = [r.step for r in self.records]
        minimum = result.minimum
        if minimum is None:
            minimum = getattr(self.objective, "minimum", None)
        dtype = self.info.dtype if self.info else None
        return loss_figure(steps, [r.loss for r in self.records], title, minimum, dtype)

    def _landscape(self, result: RunResult, title: str) -> Figure | None:
        objective = self.objective
        params = result.params
        numel = sum(p.numel() for p in params.values())
        if objective is None or numel not in (1, 2) or set(self.records[0].params) != set(params):
            return None
        template = {k: v.to(device=self._device(), dtype=self._dtype(v)) for k, v in params.items()}
        path = [flat(r.params) for r in self.records]
        minimizer = getattr(objective, "minimizer", None)
        target = flat({k: minimizer[k] for k in params}) if minimizer else None
        losses = [r.loss for r in self.records]
        return landscape_figure(objective.loss, template, path, losses, target, title)

    def _sharpness(self, title: str) -> Figure:
        rule = self.info.hparams.get("optimizer.name") if self.info else None
        steps = [r.step for r in self.records]
        losses = [r.loss for r in self.records]
        return sharpness_figure(self.sharpness, steps, losses, title, rule)

    def _fit(self, result: RunResult, title: str) -> Figure | None:
        if self.objective is None or not is_one_feature_regression(self.objective, result.params):
            return None
        return fit_figure(self.objective, result.params, title)

    def _device(self) -> torch.device:
        return torch.device(self.info.device) if self.info else torch.device("cpu")

    def _dtype(self, value: Tensor) -> torch.dtype:
        if self.info and self.info.dtype in ("float32", "float64"):
            return getattr(torch, self.info.dtype)
        return value.dtype
