"""Every built-in objective: analytic gradient equals autograd's, bad fields are refused."""

from __future__ import annotations

import pytest
import torch

from gdlab.errors import GdlabError
from gdlab.objectives.linear_regression import LinearRegression
from gdlab.objectives.matrix import MatrixNorm
from gdlab.objectives.multivariate import QuadraticForm
from gdlab.objectives.quadratic import Quadratic

CPU, F64 = torch.device("cpu"), torch.float64

BUILT_INS = {
    "quadratic": lambda: Quadratic(),
    "quadratic_concave": lambda: Quadratic(a=-2.0, c=1.0),
    "multivariate": lambda: QuadraticForm(),
    "multivariate_3d": lambda: QuadraticForm(
        A=[[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], b=[1.0, -2.0, 0.5], x0=[1, 1, 1]
    ),
    "saddle": lambda: QuadraticForm(A=[[2.0, 3.0], [3.0, 2.0]], x0=[2.0, 3.0]),
    "linear_regression": lambda: LinearRegression(),
    "linear_regression_3f": lambda: LinearRegression(n_samples=50, n_features=3, true_w=[1, 2, 3]),
    "matrix": lambda: MatrixNorm(),
}


@pytest.mark.parametrize("name", sorted(BUILT_INS))
def test_analytic_gradient_equals_autograd(name: str) -> None:
    objective = BUILT_INS[name]()
    objective.setup(CPU, F64)
    generator = torch.Generator().manual_seed(7)
    for _ in range(3):  # the start and two random points around it
        params = {
            k: (v + torch.randn(v.shape, generator=generator, dtype=F64)).requires_grad_(True)
            for k, v in objective.init_params(generator, CPU, F64).items()
        }
        objective.loss(params).backward()
        analytic = objective.grad({k: v.detach() for k, v in params.items()})
        assert analytic.keys() == params.keys()
        for key, p in params.items():
            torch.testing.assert_close(analytic[key], p.grad, rtol=1e-12, atol=1e-12)


def test_regression_minibatch_gradient_equals_autograd() -> None:
    objective = LinearRegression(batch_size=10)
    objective.setup(CPU, F64)
    params = {
        k: v.requires_grad_(True)
        for k, v in objective.init_params(torch.Generator().manual_seed(0), CPU, F64).items()
    }
    batch = torch.arange(5, 15)
    objective.loss(params, batch).backward()
    analytic = objective.grad({k: v.detach() for k, v in params.items()}, batch)
    for key, p in params.items():
        torch.testing.assert_close(analytic[key], p.grad, rtol=1e-12, atol=1e-12)


def test_known_minimisers_are_stationary() -> None:
    for objective in (Quadratic(), QuadraticForm(b=[1.0, -1.0]), LinearRegression(n_features=2)):
        objective.setup(CPU, F64)
        grad = objective.grad(objective.minimizer)
        for g in grad.values():
            assert torch.linalg.vector_norm(g) < 1e-10
        assert float(objective.loss(objective.minimizer)) == pytest.approx(objective.minimum)


def test_saddle_has_no_minimiser() -> None:
    saddle = QuadraticForm(A=[[2.0, 3.0], [3.0, 2.0]], x0=[2.0, 3.0])
    saddle.setup(CPU, F64)
    assert saddle.minimizer is None and saddle.minimum is None
    assert not saddle.positive_definite


def test_regression_data_depend_on_data_seed_only() -> None:
    a, b, c = LinearRegression(), LinearRegression(), LinearRegression(data_seed=1)
    for objective in (a, b, c):
        objective.setup(CPU, torch.float32)
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    assert not torch.equal(a.X, c.X)


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: Quadratic(a=0), "objective.a"),
        (lambda: Quadratic(c="abc"), "objective.c"),
        (lambda: Quadratic(x0=float("nan")), "objective.x0"),
        (lambda: QuadraticForm(A=[[1.0, 2.0], [3.0, 4.0]]), "objective.A"),
        (lambda: QuadraticForm(A=[[1.0, 0.0], [0.0, 1.0]], x0=[1.0]), "objective.x0"),
        (lambda: LinearRegression(n_samples=0), "objective.n_samples"),
        (lambda: LinearRegression(batch_size=101), "objective.batch_size"),
        (lambda: LinearRegression(n_features=2, true_w=[1.0]), "objective.true_w"),
        (lambda: LinearRegression(noise_std=-1), "objective.noise_std"),
        (lambda: MatrixNorm(rows=0), "objective.rows"),
    ],
)
def test_bad_fields_name_the_key(make, key: str) -> None:
    with pytest.raises(GdlabError, match=key.replace(".", r"\.").replace("[", r"\[")):
        make()
