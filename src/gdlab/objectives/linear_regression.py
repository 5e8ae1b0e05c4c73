"""The tutorial's comprehensive exercise: fit y = X w + b to synthetic data with MSE.

Data are drawn on the run's device from `data_seed`, kept apart from `trainer.seed` (which
draws the initial parameters and the mini-batch order), so a seed sweep varies the start
while the data set stays the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gdlab.memory import Footprint, count, with_defaults
from gdlab.objectives.base import (
    Objective,
    Params,
    finite_float,
    float_vector,
    integer,
    mini_batch_size,
    positive_int,
    require,
)


def mean_squared_residual(X: Tensor, y: Tensor, solution: Tensor, chunk_rows: int = 65536) -> float:
    """The MSE of the fit [w..., b] in float64, accumulated over row chunks like `least_squares`."""
    n, d = X.shape
    w, b = solution[:d], solution[d]
    total = 0.0
    for start in range(0, n, chunk_rows):
        rows = X[start : start + chunk_rows].double().cpu()
        residual = rows @ w + b - y[start : start + chunk_rows].double().cpu()
        total += float((residual * residual).sum())
    return total / n


def normal_equations(X: Tensor, y: Tensor, chunk_rows: int = 65536) -> tuple[Tensor, Tensor]:
    """D^T D and D^T y in float64 for the design D = [X, 1], accumulated over row chunks (no
    float64 copy of X is ever whole in memory)."""
    n, d = X.shape
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    moment = torch.zeros(d + 1, dtype=torch.float64)
    for start in range(0, n, chunk_rows):
        rows = X[start : start + chunk_rows].double().cpu()
        targets = y[start : start + chunk_rows].double().cpu()
        gram[:d, :d] += rows.T @ rows
        gram[:d, d] += rows.sum(dim=0)
        moment[:d] += rows.T @ targets
        moment[d] += targets.sum()
    gram[d, :d] = gram[:d, d]
    gram[d, d] = n
    return gram, moment


def least_squares(X: Tensor, y: Tensor, chunk_rows: int = 65536) -> Tensor:
    """Ordinary least squares for y ~ X w + b in float64, as [w..., b].

    Through the normal equations and a Cholesky solve: the same bits every time, where
    LAPACK's threaded `lstsq` varied in the last ones from run to run.
    """
    gram, moment = normal_equations(X, y, chunk_rows)
    return torch.cholesky_solve(moment.unsqueeze(1), torch.linalg.cholesky(gram)).squeeze(1)


class LinearRegression(Objective):
    """Least squares on y = X w* + b* + noise; the minimiser is the ordinary least-squares fit."""

    name = "linear_regression"

    def __init__(
        self,
        n_samples: int = 100,
        n_features: int = 1,
        true_w: float | Sequence[float] = 3.0,
        true_b: float = 2.0,
        noise_std: float = 0.5,
        data_seed: int = 42,
        batch_size: int | None = None,
    ) -> None:
        self.n_samples = positive_int("objective.n_samples", n_samples)
        self.n_features = positive_int("objective.n_features", n_features)
        if isinstance(true_w, Sequence) and not isinstance(true_w, str):
            self.true_w = float_vector("objective.true_w", true_w, self.n_features)
        else:
            self.true_w = [finite_float("objective.true_w", true_w)] * self.n_features
        self.true_b = finite_float("objective.true_b", true_b)
        self.noise_std = finite_float("objective.noise_std", noise_std)
        require(self.noise_std >= 0, f"objective.noise_std={noise_std!r} must be >= 0")
        self.data_seed = integer("objective.data_seed", data_seed)
        self.batch_size = mini_batch_size(batch_size, self.n_samples)

    @classmethod
    def memory_footprint(cls, fields: Mapping[str, Any], itemsize: int) -> Footprint:
        """X (n x d) and y; a loss and its gradient make a few per-sample temporaries (and
        the float64 chunks of the excess loss); the normal equations are (d + 1)^2 float64."""
        args = with_defaults(cls, fields)
        n, d = count(args["n_samples"]), count(args["n_features"])
        batches = 8 * n if args.get("batch_size") is not None else 0  # the sampler's order
        return Footprint(
            data=n * (d + 1) * itemsize,
            work=n * (4 * itemsize + 16) + batches + 3 * (d + 1) ** 2 * 8,
            params=d + 1,
            host=8 * d,
            keys=("n_samples", "n_features"),
            n_samples=n,
        )

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        gen = torch.Generator(device=device).manual_seed(self.data_seed)
        n, d = self.n_samples, self.n_features
        self.X = torch.randn(n, d, generator=gen, device=device, dtype=dtype)
        noise = torch.randn(n, generator=gen, device=device, dtype=dtype) * self.noise_std
        w_true = torch.tensor(self.true_w, device=device, dtype=dtype)
        self.y = self.X @ w_true + self.true_b + noise
        self._x = self.X[:, 0] if d == 1 else None  # one feature: the fast path in `loss`
        gram, moment = normal_equations(self.X, self.y)  # float64
        solution = torch.cholesky_solve(moment.unsqueeze(1), torch.linalg.cholesky(gram))
        solution = solution.squeeze(1)
        #: the full-batch MSE's Hessian is 2 D^T D / n: its largest eigenvalue, L
        self.hessian_max = float(torch.linalg.eigvalsh(2.0 * gram / n).max())
        self.minimizer = {
            "w": solution[:d].to(device=device, dtype=dtype),
            "b": solution[d:].to(device=device, dtype=dtype),
        }
        # f* of these data (as drawn, in the run's dtype) to float64 precision: excess losses
        # are measured in float64 against it
        self.minimum = mean_squared_residual(self.X, self.y, solution)

    def init_params(
        self, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Params:
        w = torch.randn(self.n_features, generator=generator, device=device, dtype=dtype)
        b = torch.randn(1, generator=generator, device=device, dtype=dtype)
        return {"w": w, "b": b}

    def loss(self, params: Params, batch: Tensor | None = None) -> Tensor:
        if self.n_features == 1:  # the tutorial's w * x + b: an element-wise product beats a
            x, y = (self._x, self.y) if batch is None else (self._x[batch], self.y[batch])
            residual = x * params["w"] + params["b"] - y  # matrix-vector call on 100 numbers
        else:
            X, y = (self.X, self.y) if batch is None else (self.X[batch], self.y[batch])
            residual = X @ params["w"] + params["b"] - y
        return (residual * residual).mean()

    def grad(self, params: Params, batch: Tensor | None = None) -> Params:
        X, y = (self.X, self.y) if batch is None else (self.X[batch], self.y[batch])
        residual = X @ params["w"] + params["b"] - y
        scale = 2.0 / residual.numel()
        return {"w": scale * (X.T @ residual), "b": scale * residual.sum().reshape(1)}
