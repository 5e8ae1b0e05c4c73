"""A quadratic form f(v) = 1/2 v^T A v + b^T v + e in n dimensions.

The default preset is the tutorial's exercise f(x, y) = 2x^2 + xy + 3y^2 from (1, 2); the
`saddle` preset, x^2 + 3xy + y^2, is indefinite, so gradient descent runs away from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gdlab.memory import Footprint, count, with_defaults
from gdlab.objectives.base import Objective, Params, finite_float, float_vector, require


class QuadraticForm(Objective):
    """Quadratic form with symmetric A; it has a minimiser only when A is positive definite."""

    name = "multivariate"

    def __init__(
        self,
        A: Sequence[Sequence[float]] = ((4.0, 1.0), (1.0, 6.0)),
        b: Sequence[float] | None = None,
        e: float = 0.0,
        x0: Sequence[float] = (1.0, 2.0),
    ) -> None:
        require(
            isinstance(A, Sequence) and len(A) > 0 and not isinstance(A, str),
            f"objective.A={A!r} must be a square matrix (a list of rows)",
        )
        n = len(A)
        self.A = [float_vector(f"objective.A[{i}]", row, n) for i, row in enumerate(A)]
        sym = all(self.A[i][j] == self.A[j][i] for i in range(n) for j in range(n))
        require(sym, "objective.A must be symmetric (A[i][j] == A[j][i])")
        self.b = [0.0] * n if b is None else float_vector("objective.b", b, n)
        self.e = finite_float("objective.e", e)
        self.x0 = float_vector("objective.x0", x0, n)
        self.n = n
        eigenvalues = torch.linalg.eigvalsh(torch.tensor(self.A, dtype=torch.float64))
        self.positive_definite = bool(eigenvalues.min() > 0)
        #: largest Hessian eigenvalue: gradient descent is stable for lr < 2 / L
        self.lipschitz = float(eigenvalues.abs().max())
        if self.positive_definite:
            A64 = torch.tensor(self.A, dtype=torch.float64)
            b64 = torch.tensor(self.b, dtype=torch.float64)
            v_star = -torch.linalg.solve(A64, b64)
            self._v_star = v_star
            self.minimum = float(self.e + 0.5 * b64 @ v_star)

    @classmethod
    def memory_footprint(cls, fields: Mapping[str, Any], itemsize: int) -> Footprint:
        """A (n x n) as checked lists, as a tensor, and in float64 for its eigenvalues."""
        n = count(with_defaults(cls, fields)["A"])
        return Footprint(
            data=n * n * itemsize, work=3 * n * n * 8, params=n, host=8 * n * n, keys=("A",)
        )

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        self._A = torch.tensor(self.A, device=device, dtype=dtype)
        self._b = torch.tensor(self.b, device=device, dtype=dtype)
        if self.positive_definite:
            self.minimizer = {"v": self._v_star.to(device=device, dtype=dtype)}

    def init_params(
        self, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Params:
        return {"v": torch.tensor(self.x0, device=device, dtype=dtype)}

    def loss(self, params: Params) -> Tensor:
        v = params["v"]
        return 0.5 * v @ (self._A @ v) + self._b @ v + self.e

    def grad(self, params: Params) -> Params:
        return {"v": self._A @ params["v"] + self._b}
