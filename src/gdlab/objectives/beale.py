"""Beale's function: three squared terms with a flat plateau and steep walls.

f(x, y) = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2, minimum 0 at (3, 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gdlab.objectives.base import FixedStart, Params, float_vector

CONSTANTS = (1.5, 2.25, 2.625)


class Beale(FixedStart):
    """Beale's 2-D function; minimum 0 at (3, 0.5)."""

    name = "beale"
    minimum = 0.0

    def __init__(self, x0: Sequence[float] = (1.0, 1.0)) -> None:
        self.x0 = float_vector("objective.x0", x0, 2)

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        self.minimizer = {"x": torch.tensor([3.0, 0.5], device=device, dtype=dtype)}

    def terms(self, x: Tensor) -> list[Tensor]:
        return [c - x[0] + x[0] * x[1] ** (k + 1) for k, c in enumerate(CONSTANTS)]

    def loss(self, params: Params) -> Tensor:
        return sum(t * t for t in self.terms(params["x"]))  # type: ignore[return-value]

    def grad(self, params: Params) -> Params:
        x = params["x"]
        gx, gy = torch.zeros_like(x[0]), torch.zeros_like(x[1])
        for k, t in enumerate(self.terms(x)):
            p = k + 1
            gx = gx + 2.0 * t * (x[1] ** p - 1.0)
            gy = gy + 2.0 * t * p * x[0] * x[1] ** (p - 1)
        return {"x": torch.stack([gx, gy])}
