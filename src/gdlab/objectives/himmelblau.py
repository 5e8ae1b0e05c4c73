"""Himmelblau's function: f(x, y) = (x^2 + y - 11)^2 + (x + y^2 - 7)^2, four equal minima.

All four minima have value 0: (3, 2) and three irrational ones, refined here by Newton's method
in float64. `minimizers` lists them all; `minimizer` (used for the distance-to-optimum metric)
is the one nearest the start, (3, 2) from the default start (0, 0), which descent reaches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gdlab.objectives.base import FixedStart, Params, float_vector

#: approximate minima, refined by `newton` to full float64 precision
APPROX_MINIMA = ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126))


def himmelblau_grad(x: Tensor) -> Tensor:
    u = x[0] * x[0] + x[1] - 11.0
    v = x[0] + x[1] * x[1] - 7.0
    return torch.stack([4.0 * x[0] * u + 2.0 * v, 2.0 * u + 4.0 * x[1] * v])


def newton(point: Sequence[float], steps: int = 20) -> Tensor:
    """Polish an approximate minimum: Newton's method on the gradient, in float64."""
    x = torch.tensor(point, dtype=torch.float64)
    for _ in range(steps):
        hessian = torch.autograd.functional.jacobian(himmelblau_grad, x)
        x = x - torch.linalg.solve(hessian, himmelblau_grad(x))
    return x


class Himmelblau(FixedStart):
    """Himmelblau's 2-D function; four minima of value 0, (3, 2) among them."""

    name = "himmelblau"
    minimum = 0.0

    def __init__(self, x0: Sequence[float] = (0.0, 0.0)) -> None:
        self.x0 = float_vector("objective.x0", x0, 2)
        self.minimizers_64 = [newton(p) for p in APPROX_MINIMA]
        start = torch.tensor(self.x0, dtype=torch.float64)
        self.nearest = min(self.minimizers_64, key=lambda m: float((m - start).norm()))

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        self.minimizers = [{"x": m.to(device=device, dtype=dtype)} for m in self.minimizers_64]
        self.minimizer = {"x": self.nearest.to(device=device, dtype=dtype)}

    def loss(self, params: Params) -> Tensor:
        x = params["x"]
        return (x[0] * x[0] + x[1] - 11.0) ** 2 + (x[0] + x[1] * x[1] - 7.0) ** 2

    def grad(self, params: Params) -> Params:
        return {"x": himmelblau_grad(params["x"])}
