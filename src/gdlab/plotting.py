"""What every gdlab figure shares: size, margins, panels, titles, PNG output, tick labels.

Used by the run plots (`gdlab.sinks.plots`) and the sweep's plots (`gdlab.sweeps.lr_plot`,
`gdlab.sweeps.edge_plot`), which import this module and never each other. It imports no
matplotlib at import time: each function imports what it draws with, so a run with
`logger.plots=false` never loads it. Figures are drawn through `matplotlib.figure.Figure` and
the Agg canvas (no pyplot, no GUI backend).

Importing matplotlib creates enough objects to set off one of Python's full garbage
collections, which walks every object torch made as well: `figure_class` imports it with the
collector paused (`paused_gc`), and `gdlab.sinks.plots` draws a run's plots so.
"""

from __future__ import annotations

import gc
import io
import math
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (6.0, 4.0)
DPI = 100
#: the largest number of panels `new_panels` lays out (2 x 2)
MAX_PANELS = 4


@contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (as it was afterwards).

    Importing matplotlib allocates enough objects (some 45,000 that the collector tracks) to
    set off a full collection, and with torch loaded that walks about 190,000 objects: 0.08 s
    here, a quarter of the import. Nothing is lost by waiting: what the block leaves in
    reference cycles (a figure and its artists) goes at the first collection after it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def figure_class() -> type[Figure]:
    """matplotlib's `Figure`; the first call imports matplotlib, with the collector paused."""
    with paused_gc():
        from matplotlib.figure import Figure
    return Figure


def new_figure() -> Figure:
    """A figure with fixed margins: a layout engine would double the time to draw it."""
    figure = figure_class()(figsize=FIGSIZE, dpi=DPI)
    figure.subplots_adjust(left=0.15, right=0.97, bottom=0.12, top=0.92)
    return figure


def new_panels(count: int) -> tuple[Figure, list[Any]]:
    """A figure of `count` axes (1 to MAX_PANELS): one as `new_figure`, two side by side,
    three or four in a 2 x 2 grid; each panel about the size of a one-axes figure."""
    count = max(1, min(count, MAX_PANELS))
    if count == 1:
        figure = new_figure()
        return figure, [figure.add_subplot()]
    rows, cols = (1, 2) if count == 2 else (2, 2)
    width, height = FIGSIZE[0] * 1.8, FIGSIZE[1] * (1.0 if rows == 1 else 1.85)
    figure = figure_class()(figsize=(width, height), dpi=DPI)
    top, bottom = (0.9, 0.13) if rows == 1 else (0.94, 0.07)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=bottom, top=top, wspace=0.22, hspace=0.32)
    axes = [figure.add_subplot(rows, cols, i + 1) for i in range(count)]
    return figure, axes


def new_stacked() -> tuple[Figure, Any, Any]:
    """A taller figure of two panels sharing the x axis (the step), the lower one taller:
    the loss above what is judged against it (the sharpness plots). Only the lower panel
    carries x tick labels."""
    figure = figure_class()(figsize=(FIGSIZE[0], FIGSIZE[1] * 1.5), dpi=DPI)
    figure.subplots_adjust(left=0.15, right=0.97, bottom=0.08, top=0.94, hspace=0.08)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 3]})
    return figure, top, bottom


def axes_box_ratio(ax: Any) -> float:
    """Height over width of the axes' box on the figure (what an equal aspect must match)."""
    width, height = ax.get_figure().get_size_inches()
    box = ax.get_position()
    return (box.height * height) / (box.width * width)


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with an ellipsis (for titles)."""
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG; light zlib compression, as the files are small anyway."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def plain_log_ticks(axis: Any) -> None:
    """Plain numbers as the labels of a log axis that spans less than a decade."""
    plain_ticks(axis)


def plain_ticks(axis: Any) -> None:
    """Tick labels as short numbers (`5.02`, `-5e+15`): no `×10ⁿ` multiplier or offset above
    the axis, which would collide with the title."""
    from matplotlib.ticker import FuncFormatter

    formatter = FuncFormatter(lambda value, _: f"{value:.4g}")
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(formatter)


def loss_axis(ax: Any, values: Sequence[float]) -> None:
    """The y scale of a loss panel: log when every finite value is positive, its labels
    plain numbers where it spans less than two decades (`3`, `20`, not `3×10⁰`, `2×10¹`),
    minor labels only at 2, 3 and 5 times a power of ten (a short panel has no room for
    every one); otherwise linear with short labels."""
    from matplotlib.ticker import FuncFormatter

    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
        if max(finite) < 100 * min(finite):
            plain_ticks(ax.yaxis)
            ax.yaxis.set_minor_formatter(FuncFormatter(_sparse_minor_label))
    else:
        plain_ticks(ax.yaxis)


def _sparse_minor_label(value: float, _: Any) -> str:
    if value <= 0:
        return ""
    lead = value / 10.0 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:.4g}" if any(abs(lead - d) < 1e-6 for d in (2, 3, 5)) else ""


def step_ticks(axis: Any) -> None:
    """Whole round numbers on a step axis: 0, 50, 100, never 2.5."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=6, integer=True, steps=[1, 2, 2.5, 5, 10]))


def set_title(ax: Any, text: str, width: int = 50) -> None:
    """The axes' title, in a smaller font when it is longer than `width` characters."""
    size = 12.0 if len(text) <= width else max(8.0, 12.0 * width / len(text))
    ax.set_title(text, fontsize=size)
