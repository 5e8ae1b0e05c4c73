"""lr.png of a sweep: the final excess loss f - f* of each job against its learning rate.

Drawn by `gdlab.sweeps.summary.write_summary` when the learning rate varies across the jobs.
One panel per problem (up to four), log-log axes, one line per setting of the other swept
keys. Jobs that diverged or failed are crosses pinned at the top edge; excess losses of 0 (at
the minimum within precision) sit on a labelled floor; each update rule's stability limit
(`JobRow.lr_limit`) is a dashed vertical line in its series' colour. Where f* is unknown the
final loss itself is drawn.

A population gives up to millions of rows: they are grouped into arrays once, each line is
thinned to at most `MAX_POINTS` points (the lowest and highest of each lr bin kept), and every
line is one matplotlib call. matplotlib is imported only when a plot is drawn
(`gdlab.plotting`), so importing this module costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdlab.atomic import write_bytes_atomic
from gdlab.plotting import MAX_PANELS, new_panels, plain_log_ticks, png_bytes, set_title, shorten
from gdlab.sweeps.jobs import RANKED, JobRow, varying_keys

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LR_PLOT = "lr.png"
LR_KEY = "optimizer.lr"
#: the most points one line (or one row of top-edge crosses) is drawn with
MAX_POINTS = 2000
#: the most series one panel draws, and the most stability lines
MAX_SERIES = 20
MAX_LIMITS = 6
DIVERGED_LABEL = "× at the top: diverged / failed"


def lr_varies(rows: Sequence[JobRow]) -> bool:
    """Whether the jobs ran with more than one learning rate: then lr.png is worth drawing."""
    return len({r.lr for r in rows if r.lr is not None}) > 1


def draw_lr_plot(rows: Sequence[JobRow], path: Path) -> Path:
    """lr.png of a sweep (see `lr_figure`)."""
    path = Path(path)
    write_bytes_atomic(path, png_bytes(lr_figure(rows)))
    return path


@dataclass
class Series:
    """One line of a panel: the jobs sharing a setting of the other swept keys."""

    label: str
    lrs: list[float] = field(default_factory=list)  # ranked jobs ...
    values: list[float] = field(default_factory=list)  # ... and their excess (or final) loss
    failed: list[float] = field(default_factory=list)  # lrs of the unranked jobs
    limits: dict[float, float | None] = field(default_factory=dict)  # lr limit -> momentum


def lr_figure(rows: Sequence[JobRow], lr_key: str = LR_KEY) -> Figure:
    """Final excess loss against learning rate: one panel per problem (the first
    MAX_PANELS), each as `draw_panel` draws it."""
    problems: dict[str, list[JobRow]] = {}
    for row in rows:
        if row.lr is not None:
            problems.setdefault(row.problem or "", []).append(row)
    if not problems:
        problems[""] = []
    shown = list(problems.items())[:MAX_PANELS]
    figure, axes = new_panels(len(shown))
    for ax, (problem, members) in zip(axes, shown, strict=True):
        draw_panel(ax, members, lr_key, problem, alone=len(shown) == 1)
    if len(problems) > len(shown):
        note = f"{len(problems) - len(shown)} more problems not drawn"
        figure.text(0.99, 0.005, note, ha="right", va="bottom", fontsize=8, color="0.35")
    return figure


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def group_series(rows: Sequence[JobRow], lr_key: str, excess: bool) -> list[Series]:
    """The panel's rows as series (one per setting of the varying keys other than lr)."""
    others = [k for k in varying_keys(rows) if k != lr_key]
    series: dict[tuple[str | None, ...], Series] = {}
    for row in rows:
        key = tuple(row.values.get(k) for k in others)
        line = series.get(key)
        if line is None:
            pairs = zip(others, key, strict=True)
            label = ", ".join(f"{k}={'' if v is None else v}" for k, v in pairs)
            line = series[key] = Series(label or ("final excess loss" if excess else "final loss"))
        value = row.excess_loss if excess else row.final_loss
        if row.status not in RANKED or (value is not None and not math.isfinite(value)):
            line.failed.append(row.lr)
        elif value is not None:
            line.lrs.append(row.lr)
            line.values.append(value)
        limit = _number(row.lr_limit)
        if limit is not None and limit > 0 and math.isfinite(limit):
            line.limits.setdefault(limit, _number(row.momentum))
    return list(series.values())


def thin(lrs: Any, values: Any, limit: int = MAX_POINTS) -> tuple[Any, Any]:
    """(lrs, values) sorted by lr; beyond `limit` points, the lowest and the highest value of
    each of limit/2 consecutive bins (the curve's envelope survives, its noise too)."""
    import numpy as np

    order = np.argsort(lrs, kind="stable")
    lrs, values = lrs[order], values[order]
    if len(lrs) <= limit:
        return lrs, values
    bins = np.arange(len(lrs)) * (limit // 2) // len(lrs)
    by_bin = np.lexsort((values, bins))  # within each bin, by value
    starts = np.flatnonzero(np.r_[True, bins[by_bin][1:] != bins[by_bin][:-1]])
    ends = np.r_[starts[1:], len(by_bin)] - 1
    keep = np.unique(np.r_[by_bin[starts], by_bin[ends]])  # back in lr order
    return lrs[keep], values[keep]


def spread(lrs: Sequence[float], limit: int = MAX_POINTS) -> Any:
    """The distinct lrs, at most `limit` of them evenly chosen (for a row of crosses)."""
    import numpy as np

    unique = np.unique(np.asarray(lrs, dtype=float))
    if len(unique) > limit:
        unique = unique[np.linspace(0, len(unique) - 1, limit).round().astype(int)]
    return unique


def draw_panel(
    ax: Any, rows: Sequence[JobRow], lr_key: str, problem: str = "", alone: bool = True
) -> None:
    """One problem: a line per series, crosses at the top for the unranked jobs, a floor for
    excess losses of 0, a dashed line per distinct lr limit. Titled with the problem (and
    what is drawn, when it is the only panel)."""
    import numpy as np

    excess = any(r.excess_loss is not None for r in rows)
    series = group_series(rows, lr_key, excess)[:MAX_SERIES]
    arrays = [(np.asarray(s.lrs, dtype=float), np.asarray(s.values, dtype=float)) for s in series]
    values = np.concatenate([v for _, v in arrays]) if arrays else np.zeros(0)
    positive = values[values > 0]
    floor = None
    if excess:  # 0 (or below, by rounding): drawn on a floor a decade under the least value
        least = float(positive.min()) if positive.size else 1e-15
        floor = 10.0 ** (math.floor(math.log10(least)) - 1)
    log_y = excess or (values.size > 0 and bool((values > 0).all()))
    for i, (line, (lrs, ys)) in enumerate(zip(series, arrays, strict=True)):
        colour = f"C{i % 10}"
        if floor is not None:
            ys = np.maximum(ys, floor)
        if lrs.size:
            x, y = thin(lrs, ys)
            style = "-o" if x.size <= 60 else "-"  # dots while they stay apart
            ax.plot(x, y, style, color=colour, ms=4, lw=1.2, label=line.label)
        else:
            ax.plot([], [], "-", color=colour, lw=1.2, label=line.label)
    # crosses pinned at the top edge (x in data, y in axes fractions); the series with the
    # fewest on top, as the others' crosses usually extend past them
    top = ax.get_xaxis_transform()
    failing = [i for i, s in enumerate(series) if s.failed]
    failing.sort(key=lambda i: -len(series[i].failed))
    for order, i in enumerate(failing):
        x = spread(series[i].failed)
        ax.plot(
            x,
            np.ones_like(x),
            "x",
            color=f"C{i % 10}",
            ms=8,
            mew=2,
            clip_on=False,
            transform=top,
            zorder=5 + order / 100,
        )
    if any(s.failed for s in series):
        ax.plot([], [], "x", color="0.3", ms=8, mew=2, label=DIVERGED_LABEL)
    if floor is not None and bool((values <= 0).any()):
        label = f"excess 0 (at f* within precision), drawn at {floor:.0e}"
        ax.axhline(floor, color="0.35", ls=":", lw=1.2, label=label)
    draw_limits(ax, series)
    ax.set_xscale("log")
    ax.set_yscale("log" if log_y else "symlog")
    if values.size == 0:  # nothing ranked: only the crosses at the top
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 1e3)
    if not any(r.lr is not None and r.lr > 0 for r in rows):  # no lr to place anything at
        ax.set_xlim(1e-3, 1.0)
    if log_y and positive.size and not excess and positive.max() < 10 * positive.min():
        plain_log_ticks(ax.yaxis)  # within one decade: 5.02, not 5.02×10⁰
    ax.set_xlabel(f"learning rate ({lr_key})")
    ax.set_ylabel("final excess loss f − f*" if excess else "final loss")
    what = "final excess loss" if excess else "final loss"
    if alone:
        head = f"{shorten(problem, 40)}: " if problem else ""
        set_title(ax, f"{head}{what} against learning rate")
    else:
        set_title(ax, shorten(problem, 70))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=7)


def draw_limits(ax: Any, series: Sequence[Series]) -> None:
    """A dashed vertical line at each distinct lr limit (at most MAX_LIMITS), in the colour of
    the first series that has it, labelled with its momentum."""
    seen: list[float] = []
    for i, line in enumerate(series):
        for limit, momentum in sorted(line.limits.items()):
            if len(seen) >= MAX_LIMITS or any(math.isclose(limit, s, rel_tol=1e-6) for s in seen):
                continue
            seen.append(limit)
            which = f", momentum {momentum:g}" if momentum is not None else ""
            label = f"lr limit{which}: {limit:.3g}"
            ax.axvline(limit, color=f"C{i % 10}", ls="--", lw=1.2, label=label)
