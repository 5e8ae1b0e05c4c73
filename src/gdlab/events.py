"""What the trainer tells its sinks: the run's description, each logged point, the result.

These are plain data so that a sink (TensorBoard, metrics.json, progress bar, plots) needs
nothing from the trainer but these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch import Tensor

#: parameters with at most this many numbers are logged as scalars and kept for plots
SMALL_PARAM_NUMEL = 8


@dataclass
class RunInfo:
    """What a sink may want to know before the first step."""

    objective: str
    device: str
    dtype: str
    steps: int
    log_every: int
    config_yaml: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)
    problem: dict[str, Any] = field(default_factory=dict)  # the objective's name and fields
    resumed: bool = False  # the run continues from a checkpoint ...
    start_step: int = 0  # ... taken after this many steps


@dataclass
class LogRecord:
    """One logged point: the loss and gradient at the parameters of `step`, before its update."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    #: CPU copies of the parameters with at most SMALL_PARAM_NUMEL numbers
    params: dict[str, Tensor]


@dataclass
class RunResult:
    """How a run ended; `steps` counts the updates applied."""

    status: str  # "finished", "converged", "diverged" or "interrupted"
    steps: int
    final_loss: float
    grad_norm: float
    params: dict[str, Tensor]
    wall_time_s: float
    stop_reason: str | None = None
    distance_to_minimizer: float | None = None
    minimum: float | None = None
    #: f(theta) - f* at the final parameters, evaluated in float64 (None where f* is unknown)
    excess_loss: float | None = None
    #: the number the run is ranked by, lower is better (gdlab.rules.score)
    score: float = float("inf")
    #: the largest stable lr for the run's update rule (None where unknown)
    lr_limit: float | None = None
    initial_loss: float | None = None  # the full objective at the start
    lr: float | None = None  # the base learning rate (the schedule's value at step 0)
    #: sharpness.every > 0: {every, initial, final, history, seconds} (gdlab.curvature)
    sharpness: dict[str, Any] | None = None

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_time_s if self.wall_time_s > 0 else float("inf")


class Sink(Protocol):
    """Receives the run's events; every method is optional work at a log point, never per step."""

    def start(self, info: RunInfo) -> None: ...

    def log(self, record: LogRecord) -> None: ...

    def finish(self, result: RunResult) -> None: ...

    def close(self) -> None: ...


# Sinks that buffer may also define `flush()`: the trainer calls it with every checkpoint.
# Sinks that show the sharpness define `log_sharpness(point)` (a gdlab.curvature.SharpnessPoint).
