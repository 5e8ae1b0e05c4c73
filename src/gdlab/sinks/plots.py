"""Plots of a run, drawn once when it ends: PNG files in the run directory and TensorBoard images.

- `loss.png`: the loss at every logged point (log scale when every loss is positive);
- `landscape.png`: for objectives with one parameter number, the function with the descent
  path on it; with two, contour lines with the path (the regression's (w, b) plane included);
- `fit.png`: for one-feature linear regression, the data, the true line and the fitted line.

The sink only keeps the logged records while the run goes (they are already small CPU copies);
matplotlib is imported and everything is drawn at the end, through `matplotlib.figure.Figure`
and the Agg canvas (no pyplot, no GUI backend). `logger.plots=false` turns the sink off.
What every figure shares (size, PNG output, tick labels) is in `gdlab.plotting`, which the
sweep's learning-rate plot (`gdlab.sweep.lr_plot`) uses too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gdlab.events import LogRecord, RunInfo, RunResult
from gdlab.plotting import new_figure, plain_log_ticks, png_bytes
from gdlab.plotting import png_size as png_size  # re-exported: gdlab.sinks.tensorboard uses it

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("gdlab")

ImageWriter = Callable[[str, bytes, int], None]
GRID_1D = 300
GRID_2D = 80


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


def grid_range(values: Sequence[float], pad: float = 0.15) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (-1.0, 1.0)
    span = hi - lo
    if span <= 0:
        span = max(1.0, abs(lo))
    return lo - pad * span, hi + pad * span


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


def loss_figure(steps: Sequence[int], losses: Sequence[float], title: str) -> Figure:
    figure = new_figure()
    ax = figure.add_subplot()
    points = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v)]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:blue", lw=1.5)
    if finite_positive(losses):
        ax.set_yscale("log")
        finite = [v for v in losses if math.isfinite(v)]
        if max(finite) < 10 * min(finite):
            plain_log_ticks(ax.yaxis)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return figure


def landscape_figure(
    loss: Callable[[dict[str, Tensor]], Tensor],
    template: dict[str, Tensor],
    path: list[list[float]],
    path_losses: list[float],
    minimizer: list[float] | None,
    title: str,
) -> Figure | None:
    """The function with the descent path (one number) or contours with the path (two)."""
    dim = len(path[0])
    names = axis_names(template)
    ok = [i for i, p in enumerate(path) if all(math.isfinite(v) for v in p)]
    if not ok:
        return None
    marks = [path[i] for i in ok] + ([minimizer] if minimizer else [])
    device, dtype = next(iter(template.values())).device, next(iter(template.values())).dtype
    figure = new_figure()
    ax = figure.add_subplot()
    if dim == 1:
        lo, hi = grid_range([m[0] for m in marks])
        xs = torch.linspace(lo, hi, GRID_1D, dtype=torch.float64)
        ys = evaluate(loss, template, xs.to(device=device, dtype=dtype).unsqueeze(1))
        ax.plot(xs.tolist(), ys.tolist(), color="tab:gray", lw=1.5, label="f")
        px = [path[i][0] for i in ok]
        py = [path_losses[i] for i in ok]
        ax.plot(px, py, "-o", color="tab:red", ms=3, lw=0.8, label="descent")
        ax.plot(px[:1], py[:1], "o", color="tab:green", ms=7, label="start")
        if minimizer:
            fmin = evaluate(loss, template, torch.tensor([minimizer], dtype=dtype, device=device))
            ax.plot(minimizer, fmin.tolist(), "*", color="black", ms=12, label="minimiser")
        ax.set_xlabel(names[0])
        ax.set_ylabel("loss")
    else:
        import numpy as np

        (x_lo, x_hi), (y_lo, y_hi) = (grid_range([m[k] for m in marks]) for k in (0, 1))
        gx = torch.linspace(x_lo, x_hi, GRID_2D, dtype=torch.float64)
        gy = torch.linspace(y_lo, y_hi, GRID_2D, dtype=torch.float64)
        mesh_y, mesh_x = torch.meshgrid(gy, gx, indexing="ij")
        points = torch.stack([mesh_x.reshape(-1), mesh_y.reshape(-1)], dim=1)
        z = evaluate(loss, template, points.to(device=device, dtype=dtype)).numpy()
        z = np.ma.masked_invalid(z.reshape(GRID_2D, GRID_2D))
        if z.count() and float(z.max()) > float(z.min()):
            levels = np.unique(np.quantile(z.compressed(), np.linspace(0.01, 0.99, 20)))
            if len(levels) > 1:
                contours = ax.contour(
                    mesh_x.numpy(), mesh_y.numpy(), z, levels=levels, cmap="viridis", linewidths=0.8
                )
                ax.clabel(contours, contours.levels[::4], fontsize=7, fmt="%.3g")
        px, py = [path[i][0] for i in ok], [path[i][1] for i in ok]
        ax.plot(px, py, "-o", color="tab:red", ms=2.5, lw=0.8, label="descent")
        ax.plot(px[:1], py[:1], "o", color="tab:green", ms=7, label="start")
        if minimizer:
            ax.plot(minimizer[:1], minimizer[1:], "*", color="black", ms=12, label="minimiser")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    ax.set_title(title)
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
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
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
    """Keeps the logged points; draws loss.png, landscape.png and fit.png when the run ends.

    `images` (the TensorBoard sink's `add_image`) also receives each PNG as `plots/<name>`.
    A plot that cannot be drawn is skipped with a warning: plots never fail a run.
    """

    def __init__(
        self, run_dir: Path, objective: Any = None, images: ImageWriter | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.objective = objective
        self.images = images
        self.info: RunInfo | None = None
        self.records: list[LogRecord] = []
        self.written: list[Path] = []

    def start(self, info: RunInfo) -> None:
        self.info = info

    def log(self, record: LogRecord) -> None:
        self.records.append(record)

    def finish(self, result: RunResult) -> None:
        if not self.records:
            return
        name = self.info.objective if self.info else "run"
        title = f"{name}: {result.status} after {result.steps} steps"
        for filename, draw in (
            ("loss", lambda: self._loss(title)),
            ("landscape", lambda: self._landscape(result, title)),
            ("fit", lambda: self._fit(result, title)),
        ):
            try:
                figure = draw()
                if figure is not None:
                    self._emit(filename, figure, result.steps)
            except Exception as err:  # a plot is a view of the results, never a reason to fail
                log.warning("gdlab: skipped %s.png: %s: %s", filename, type(err).__name__, err)

    def close(self) -> None:
        pass

    def _emit(self, name: str, figure: Figure, step: int) -> None:
        png = png_bytes(figure)
        path = self.run_dir / f"{name}.png"
        path.write_bytes(png)
        self.written.append(path)
        if self.images is not None:
            self.images(f"plots/{name}", png, step)

    def _loss(self, title: str) -> Figure:
        steps = [r.step for r in self.records]
        return loss_figure(steps, [r.loss for r in self.records], title)

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
