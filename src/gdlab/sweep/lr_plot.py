"""lr.png of a sweep: the final loss of each job against its learning rate.

Drawn by `gdlab.sweep.summary.write_summary` when the learning rate varies across the jobs.
matplotlib is imported only when a plot is drawn (`gdlab.plotting`), so importing this module
costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gdlab.plotting import new_figure, plain_log_ticks, png_bytes
from gdlab.sweep.jobs import RANKED, JobRow, varying_keys

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LR_PLOT = "lr.png"
LR_KEY = "optimizer.lr"


def lr_varies(rows: Sequence[JobRow]) -> bool:
    """Whether the jobs ran with more than one learning rate: then lr.png is worth drawing."""
    return len({r.lr for r in rows if r.lr is not None}) > 1


def draw_lr_plot(rows: Sequence[JobRow], path: Path) -> Path:
    """lr.png of a sweep (see `lr_figure`)."""
    path = Path(path)
    path.write_bytes(png_bytes(lr_figure(rows)))
    return path


def lr_figure(rows: Sequence[JobRow], lr_key: str = LR_KEY) -> Figure:
    """Final loss against learning rate, log axes, one line per setting of the other swept
    keys; diverged jobs marked with a red x (at the top edge when their loss is not finite)."""
    others = [k for k in varying_keys(rows) if k != lr_key]
    series: dict[str, list[JobRow]] = {}
    for row in rows:
        if row.lr is None or row.final_loss is None:
            continue
        label = ", ".join(f"{k}={row.values.get(k, '')}" for k in others) or "final loss"
        series.setdefault(label, []).append(row)
    finite = [
        r.final_loss for rs in series.values() for r in rs if math.isfinite(r.final_loss or 0)
    ]
    positive = bool(finite) and min(finite) > 0
    top = max(finite) * (10 if positive else 1) if finite else 1.0
    figure = new_figure()
    ax = figure.add_subplot()
    for label, members in list(series.items())[:20]:
        ok = sorted((r.lr, r.final_loss) for r in members if r.status in RANKED)
        if ok:
            ax.plot([p[0] for p in ok], [p[1] for p in ok], "-o", ms=4, lw=1.2, label=label)
        bad = [r for r in members if r.status not in RANKED]
        if bad:
            ax.plot(
                [r.lr for r in bad],
                [r.final_loss if math.isfinite(r.final_loss or 0) else top for r in bad],
                "x",
                color="tab:red",
                ms=8,
                mew=2,
            )
    if any(r.status not in RANKED for rs in series.values() for r in rs):
        ax.plot([], [], "x", color="tab:red", ms=8, mew=2, label="diverged / not finished")
    # lr = 2/L on a quadratic (L the largest Hessian eigenvalue): plain descent's stability edge
    for limit in sorted({r.stability_lr for r in rows if r.stability_lr})[:5]:
        ax.axvline(limit, color="0.35", ls="--", lw=1, label=f"2/L = {limit:.3g} (stability limit)")
    ax.set_xscale("log")
    ax.set_yscale("log" if positive else "symlog")
    if positive and max(finite) < 10 * min(finite):
        plain_log_ticks(ax.yaxis)  # within one decade: 5.02, not 5.02×10⁰
    ax.set_xlabel(f"learning rate ({lr_key})")
    ax.set_ylabel("final loss")
    ax.set_title("final loss against learning rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    return figure
