"""Rosenbrock's function in n dimensions, the classic curved valley that slows gradient descent.

f(x) = sum_{i<n-1} b (x[i+1] - x[i]^2)^2 + (a - x[i])^2, from the classic start
(-1.2, 1, -1.2, 1, ...). The minimum 0 is at (1, 1, ..., 1) for the usual a = 1; for other a
it is known in closed form only in 2-D, at (a, a^2), or for a = 0, at the origin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gdlab.memory import Footprint
from gdlab.objectives.base import FixedStart, Params, finite_float, require
from gdlab.objectives.starts import start_vector, start_vector_footprint


class Rosenbrock(FixedStart):
    """Rosenbrock's banana valley in n-D; minimum 0 at (1, ..., 1) for a = 1."""

    name = "rosenbrock"

    def __init__(
        self,
        n: int | None = None,
        a: float = 1.0,
        b: float = 100.0,
        x0: Sequence[float] | None = None,
    ) -> None:
        self.n, self.x0 = start_vector(n, x0, (-1.2, 1.0))
        self.a = finite_float("objective.a", a)
        self.b = finite_float("objective.b", b)
        require(self.b > 0, f"objective.b={b!r} must be > 0")
        if self.a in (0.0, 1.0):
            self._x_star: list[float] | None = [self.a] * self.n
        elif self.n == 2:
            self._x_star = [self.a, self.a**2]
        else:
            self._x_star = None
        self.minimum = 0.0 if self._x_star is not None else None

    @classmethod
    def memory_footprint(cls, fields: Mapping[str, Any], itemsize: int) -> Footprint:
        """n numbers: the start as a Python list (x0 and the minimiser), the parameters, the loss's
        element-wise temporaries and their gradients."""
        return start_vector_footprint(cls, fields, itemsize, work=14, host=16)

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        if self._x_star is not None:
            self.minimizer = {"x": torch.tensor(self._x_star, device=device, dtype=dtype)}

    def loss(self, params: Params) -> Tensor:
        x = params["x"]
        head, tail = x[:-1], x[1:]
        return (self.b * (tail - head * head) ** 2 + (self.a - head) ** 2).sum()

    def grad(self, params: Params) -> Params:
        x = params["x"]
        head, tail = x[:-1], x[1:]
        valley = tail - head * head
        g = torch.zeros_like(x)
        g[:-1] += -4.0 * self.b * head * valley - 2.0 * (self.a - head)
        g[1:] += 2.0 * self.b * valley
        return {"x": g}
