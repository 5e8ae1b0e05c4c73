"""The tutorial's comprehensive exercise: fit y = X w + b to synthetic data with MSE.

Data are drawn on the run's device from `data_seed`, kept apart from `trainer.seed` (which
draws the initial parameters and the mini-batch order), so a seed sweep varies the start
while the data set stays the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gdlab.objectives.base import (
    Objective,
    Params,
    finite_float,
    float_vector,
    positive_int,
    require,
)


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
        require(
            isinstance(data_seed, int) and not isinstance(data_seed, bool),
            f"objective.data_seed={data_seed!r} must be an integer",
        )
        self.data_seed = int(data_seed)
        if batch_size is not None:
            batch_size = positive_int("objective.batch_size", batch_size)
            require(
                batch_size <= self.n_samples,
                f"objective.batch_size={batch_size} exceeds objective.n_samples={self.n_samples}",
            )
        self.batch_size = batch_size

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        gen = torch.Generator(device=device).manual_seed(self.data_seed)
        n, d = self.n_samples, self.n_features
        self.X = torch.randn(n, d, generator=gen, device=device, dtype=dtype)
        noise = torch.randn(n, generator=gen, device=device, dtype=dtype) * self.noise_std
        w_true = torch.tensor(self.true_w, device=device, dtype=dtype)
        self.y = self.X @ w_true + self.true_b + noise
        # Ordinary least squares on [X, 1] in float64 through the normal equations: a small
        # Cholesky solve gives the same bits every time (LAPACK's lstsq does not, threaded).
        design = torch.cat([self.X, torch.ones(n, 1, device=device, dtype=dtype)], dim=1)
        design = design.double().cpu()
        gram, moment = design.T @ design, design.T @ self.y.double().cpu()
        solution = torch.cholesky_solve(moment.unsqueeze(1), torch.linalg.cholesky(gram))
        solution = solution.squeeze(1).to(device=device, dtype=dtype)
        self.minimizer = {"w": solution[:d], "b": solution[d:]}
        self.minimum = float(self.loss(self.minimizer))

    def init_params(
        self, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Params:
        w = torch.randn(self.n_features, generator=generator, device=device, dtype=dtype)
        b = torch.randn(1, generator=generator, device=device, dtype=dtype)
        return {"w": w, "b": b}

    def loss(self, params: Params, batch: Tensor | None = None) -> Tensor:
        X, y = (self.X, self.y) if batch is None else (self.X[batch], self.y[batch])
        residual = X @ params["w"] + params["b"] - y
        return (residual * residual).mean()

    def grad(self, params: Params, batch: Tensor | None = None) -> Params:
        X, y = (self.X, self.y) if batch is None else (self.X[batch], self.y[batch])
        residual = X @ params["w"] + params["b"] - y
        scale = 2.0 / residual.numel()
        return {"w": scale * (X.T @ residual), "b": scale * residual.sum().reshape(1)}
