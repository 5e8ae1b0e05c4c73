"""The tutorial's matrix exercise: L = ||W x||^2 with both W and x trained."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gdlab.memory import Footprint, count, with_defaults
from gdlab.objectives.base import Objective, Params, positive_int


class MatrixNorm(Objective):
    """Squared norm of a matrix-vector product; its minimum 0 is reached on a whole set."""

    name = "matrix"
    minimum = 0.0

    def __init__(self, rows: int = 3, cols: int = 4) -> None:
        self.rows = positive_int("objective.rows", rows)
        self.cols = positive_int("objective.cols", cols)

    @classmethod
    def memory_footprint(cls, fields: Mapping[str, Any], itemsize: int) -> Footprint:
        """W (rows x cols) and x are the parameters; W x and its gradient are the temporaries."""
        args = with_defaults(cls, fields)
        rows, cols = count(args["rows"]), count(args["cols"])
        return Footprint(
            work=2 * rows * cols * itemsize, params=rows * cols + cols, keys=("rows", "cols")
        )

    def init_params(
        self, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Params:
        W = torch.randn(self.rows, self.cols, generator=generator, device=device, dtype=dtype)
        x = torch.randn(self.cols, generator=generator, device=device, dtype=dtype)
        return {"W": W, "x": x}

    def loss(self, params: Params) -> Tensor:
        y = params["W"] @ params["x"]
        return (y * y).sum()

    def grad(self, params: Params) -> Params:
        W, x = params["W"], params["x"]
        y = W @ x
        return {"W": 2.0 * torch.outer(y, x), "x": 2.0 * (W.T @ y)}
