"""Rastrigin's function in n dimensions: a bowl covered in local minima.

f(x) = A n + sum_i (x[i]^2 - A cos(2 pi x[i])), global minimum 0 at the origin, with a local
minimum near every integer point. Gradient descent from the default start (2.2, -1.7, ...)
settles in the nearest local minimum, near (2, -2): runs report their distance to the origin
and the gap to the minimum 0, which is the point of this objective.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gdlab.memory import Footprint
from gdlab.objectives.base import FixedStart, Params, finite_float, require
from gdlab.objectives.starts import start_vector, start_vector_footprint


class Rastrigin(FixedStart):
    """Rastrigin's many-minima bowl in n-D; global minimum 0 at the origin."""

    name = "rastrigin"
    minimum = 0.0

    def __init__(
        self, n: int | None = None, A: float = 10.0, x0: Sequence[float] | None = None
    ) -> None:
        self.n, self.x0 = start_vector(n, x0, (2.2, -1.7))
        self.A = finite_float("objective.A", A)
        require(self.A >= 0, f"objective.A={A!r} must be >= 0")

    @classmethod
    def memory_footprint(cls, fields: Mapping[str, Any], itemsize: int) -> Footprint:
        """n numbers: the start as a Python list (x0), the parameters, the loss's
        element-wise temporaries and their gradients."""
        return start_vector_footprint(cls, fields, itemsize, work=8, host=8)

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        self.minimizer = {"x": torch.zeros(self.n, device=device, dtype=dtype)}

    def loss(self, params: Params) -> Tensor:
        x = params["x"]
        return self.A * x.numel() + (x * x - self.A * torch.cos(2.0 * math.pi * x)).sum()

    def grad(self, params: Params) -> Params:
        x = params["x"]
        return {"x": 2.0 * x + 2.0 * math.pi * self.A * torch.sin(2.0 * math.pi * x)}
