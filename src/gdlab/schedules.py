"""Learning-rate schedules: the lr at step t, with torch.optim.lr_scheduler's formulas.

A schedule is a function of the step alone (no hidden state), so a resumed run recomputes the
same learning rate at the same step. The base lr may be a number (a plain run) or a tensor of
per-member learning rates (a population): the formulas are the same for both. The fields'
ranges are checked with every other setting (`gdlab.settings`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

Schedule = Callable[[int], float]
LR = TypeVar("LR")  # float, or a tensor of per-member learning rates


@dataclass(frozen=True)
class ScheduleSpec:
    """The `optimizer.schedule` fields: how the lr moves away from its base value."""

    name: str = "constant"
    step_size: int = 100
    gamma: float = 0.1
    min_lr: float = 0.0

    @classmethod
    def from_config(cls, node: Any) -> ScheduleSpec:
        return cls(str(node.name), int(node.step_size), float(node.gamma), float(node.min_lr))


def lr_at(spec: ScheduleSpec, lr: LR, t: int, total_steps: int) -> LR:
    """lr at step t from the base `lr`; `total_steps` is the cosine schedule's period."""
    if spec.name == "constant":
        return lr
    if spec.name == "step":
        return lr * spec.gamma ** (t // spec.step_size)  # type: ignore[operator]
    if spec.name == "exponential":
        return lr * spec.gamma**t  # type: ignore[operator]
    if spec.name == "cosine":
        period, min_lr = max(total_steps, 1), spec.min_lr
        return min_lr + (lr - min_lr) * (1.0 + math.cos(math.pi * min(t, period) / period)) / 2.0  # type: ignore[operator,return-value]
    raise ValueError(f"unknown schedule {spec.name!r}")  # the settings check refuses it first


def make_schedule(spec: ScheduleSpec, lr: float, total_steps: int) -> Schedule:
    """The schedule of one run: step -> lr."""
    if spec.name == "constant":
        return lambda t: lr  # the common case, called every step: no formula to walk
    return lambda t: lr_at(spec, lr, t, total_steps)
