"""What every gdlab figure shares: size, margins, PNG output, tick labels.

Used by the run plots (`gdlab.sinks.plots`) and the sweep's lr plot (`gdlab.sweep.lr_plot`),
which import this module and never each other. It imports no matplotlib at import time: each
function imports what it draws with, so a run with `logger.plots=false` never loads it. Figures
are drawn through `matplotlib.figure.Figure` and the Agg canvas (no pyplot, no GUI backend).
"""

from __future__ import annotations

import io
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (6.0, 4.0)
DPI = 100


def new_figure() -> Figure:
    """A figure with fixed margins: a layout engine would double the time to draw it."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    figure.subplots_adjust(left=0.15, right=0.97, bottom=0.12, top=0.92)
    return figure


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
    from matplotlib.ticker import FuncFormatter

    formatter = FuncFormatter(lambda value, _: f"{value:.4g}")
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(formatter)
