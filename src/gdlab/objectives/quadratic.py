"""The tutorial's first descent: f(x) = a (x - c)^2 + d, from x = x0."""

from __future__ import annotations

import torch
from torch import Tensor

from gdlab.objectives.base import Objective, Params, finite_float, require


class Quadratic(Objective):
    """One-dimensional quadratic; the minimiser is x = c with value d when a > 0."""

    name = "quadratic"

    def __init__(self, a: float = 1.0, c: float = 3.0, d: float = 5.0, x0: float = 0.0) -> None:
        self.a = finite_float("objective.a", a)
        require(self.a != 0.0, "objective.a=0 makes the function flat; use a non-zero a")
        self.c = finite_float("objective.c", c)
        self.d = finite_float("objective.d", d)
        self.x0 = finite_float("objective.x0", x0)
        self.minimum = self.d if self.a > 0 else None

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        if self.a > 0:
            self.minimizer = {"x": torch.tensor(self.c, device=device, dtype=dtype)}

    def init_params(
        self, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Params:
        return {"x": torch.tensor(self.x0, device=device, dtype=dtype)}

    def loss(self, params: Params) -> Tensor:
        if self.a == 1.0:  # the tutorial's case: one multiplication fewer, forward and backward
            return (params["x"] - self.c) ** 2 + self.d
        return self.a * (params["x"] - self.c) ** 2 + self.d

    def grad(self, params: Params) -> Params:
        return {"x": 2.0 * self.a * (params["x"] - self.c)}
