"""Booth's function, f(x, y) = (x + 2y - 7)^2 + (2x + y - 5)^2: minimum 0 at (1, 3)."""

from __future__ import annotations

import torch
from torch import Tensor

from gdlab.errors import GdlabError
from gdlab.objectives import Objective


class Booth(Objective):
    """Booth's 2-D function; minimum 0 at (1, 3)."""

    minimum = 0.0

    def __init__(self, x0: tuple[float, float] = (0.0, 0.0)) -> None:
        # Check fields here, naming the bad one: gdlab prints this as a one-line error.
        if len(x0) != 2:
            raise GdlabError(f"objective.x0={list(x0)} must have 2 numbers")
        self.x0 = [float(v) for v in x0]

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        # Called once before init_params: anything on the device (data, constants) goes here.
        self.minimizer = {"xy": torch.tensor([1.0, 3.0], device=device, dtype=dtype)}

    def init_params(
        self, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Tensor]:
        return {"xy": torch.tensor(self.x0, device=device, dtype=dtype)}

    def loss(self, params: dict[str, Tensor]) -> Tensor:
        x, y = params["xy"]
        return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2

    def grad(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        x, y = params["xy"]
        a, b = x + 2 * y - 7, 2 * x + y - 5
        return {"xy": torch.stack([2 * a + 4 * b, 4 * a + 2 * b])}
