"""Learning-rate schedules: lr at step t as a plain float, with torch.optim.lr_scheduler's formulas.

A schedule is a function of the step alone (no hidden state), so a resumed run recomputes the
same learning rate at the same step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gdlab.errors import GdlabError

Schedule = Callable[[int], float]
SCHEDULES = ("constant", "step", "cosine", "exponential")


def make_schedule(
    name: str,
    lr: float,
    total_steps: int,
    *,
    step_size: int = 100,
    gamma: float = 0.1,
    min_lr: float = 0.0,
) -> Schedule:
    """Build the schedule `name`; `total_steps` is the cosine schedule's period."""
    if name == "constant":
        return lambda t: lr
    if name == "step":
        if step_size < 1:
            raise GdlabError(f"optimizer.schedule.step_size={step_size} must be >= 1")
        _check_gamma(gamma)
        return lambda t: lr * gamma ** (t // step_size)
    if name == "exponential":
        _check_gamma(gamma)
        return lambda t: lr * gamma**t
    if name == "cosine":
        if not (0.0 <= min_lr <= lr):
            raise GdlabError(f"optimizer.schedule.min_lr={min_lr} must be in [0, optimizer.lr]")
        period = max(total_steps, 1)
        return lambda t: (
            min_lr + (lr - min_lr) * (1.0 + math.cos(math.pi * min(t, period) / period)) / 2.0
        )
    raise GdlabError(
        f"optimizer.schedule.name={name!r} is not a schedule; allowed: {', '.join(SCHEDULES)}"
    )


def _check_gamma(gamma: float) -> None:
    if not (0.0 < gamma <= 1.0):
        raise GdlabError(f"optimizer.schedule.gamma={gamma} must be in (0, 1]")
