"""Progress bar while training (on a terminal only) and one summary line at the end."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from gdlab.events import LogRecord, RunInfo, RunResult

if TYPE_CHECKING:
    from tqdm import tqdm


def format_params(params: dict, limit: int = 4) -> str:
    """Short `name=value` text for parameters with a few numbers; larger ones by shape."""
    parts = []
    for name, value in params.items():
        if value.numel() == 1:
            parts.append(f"{name}={value.item():.6g}")
        elif value.numel() <= limit:
            parts.append(f"{name}=[{', '.join(f'{v:.4g}' for v in value.reshape(-1).tolist())}]")
        else:
            parts.append(f"{name}: {tuple(value.shape)}")
    return ", ".join(parts)


def summary_line(result: RunResult) -> str:
    """The one line a user reads at the end of a run."""
    where = f" ({result.stop_reason})" if result.stop_reason else ""
    text = (
        f"{result.status} after {result.steps} steps{where}: loss {result.final_loss:.6g}, "
        f"grad_norm {result.grad_norm:.3g}"
    )
    # Only finite ones: metrics.json and the sweep's table have no number for the others (JSON
    # has no infinity), so the line says what they say; the loss shows the divergence.
    if _finite(result.excess_loss):
        text += f", excess loss {result.excess_loss:.3g}"
    if _finite(result.distance_to_minimizer):
        text += f", distance to minimiser {result.distance_to_minimizer:.3g}"
    text = f"{text}; {format_params(result.params)}"
    limit, lr = result.lr_limit, result.lr
    if limit is not None and lr is not None and lr > limit:
        text += f"; lr {lr:g} is above this update rule's stability limit {limit:.4g}"
    if result.sharpness:
        text += "; " + sharpness_words(result.sharpness["final"])
    return text


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def display_path(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """A run or sweep directory as the docs show it: relative to the working directory when
    it lies inside it (`outputs/2026-11-26/08-22-01-2871`), else absolute."""
    path = Path(os.path.abspath(path))
    base = Path(os.path.abspath(os.getcwd() if cwd is None else cwd))
    try:
        return path.relative_to(base).as_posix() or "."
    except ValueError:
        return str(path)


def sharpness_words(point: dict) -> str:
    """`sharpness at step 4000: lambda_max 10.1, lambda_min -0.02, lr/lr_limit 1.01`."""
    text = (
        f"sharpness at step {point['step']}: lambda_max {point['lambda_max']:.4g}, "
        f"lambda_min {point['lambda_min']:.3g}"
    )
    if point.get("preconditioned") is not None:
        text += f", preconditioned {point['preconditioned']:.4g}"
    if point.get("ratio") is not None:
        text += f", lr/lr_limit {point['ratio']:.3g}"
    return text


class ConsoleSink:
    """tqdm bar advanced at log points; quiet when the stream is not a terminal."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.bar: tqdm | None = None
        self.position = 0

    def start(self, info: RunInfo) -> None:
        if self.enabled:
            # only when shown: the import costs start-up time; in a Jupyter kernel the
            # notebook's widget bar (tqdm falls back to text without ipywidgets)
            if "ipykernel" in sys.modules:
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm

            self.bar = tqdm(
                total=info.steps, desc=info.objective, unit="step", file=self.stream, leave=False
            )

    def log(self, record: LogRecord) -> None:
        if self.bar is not None:
            self.bar.update(record.step - self.position)
            self.position = record.step
            self.bar.set_postfix(loss=f"{record.loss:.4g}", refresh=False)

    def finish(self, result: RunResult) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
