"""The classic test functions: gradients, known minimisers, and descent from their starts."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gdlab.errors import GdlabError
from gdlab.events import RunResult
from gdlab.objectives.beale import Beale
from gdlab.objectives.himmelblau import Himmelblau
from gdlab.objectives.rastrigin import Rastrigin
from gdlab.objectives.rosenbrock import Rosenbrock
from tests.conftest import read_metrics

CPU, F64 = torch.device("cpu"), torch.float64
Run = Callable[..., tuple[RunResult, Path]]

CLASSICS = {
    "rosenbrock": lambda: Rosenbrock(),
    "rosenbrock_5d": lambda: Rosenbrock(n=5),
    "rosenbrock_a2_b10": lambda: Rosenbrock(a=2.0, b=10.0),
    "himmelblau": lambda: Himmelblau(),
    "rastrigin": lambda: Rastrigin(),
    "rastrigin_4d": lambda: Rastrigin(x0=[0.3, -1.2, 2.7, 4.1]),
    "beale": lambda: Beale(),
}


def setup(objective):
    objective.setup(CPU, F64)
    return objective


@pytest.mark.parametrize("name", sorted(CLASSICS))
def test_analytic_gradient_equals_autograd(name: str) -> None:
    objective = setup(CLASSICS[name]())
    generator = torch.Generator().manual_seed(3)
    start = objective.init_params(generator, CPU, F64)["x"]
    for scale in (0.0, 0.5, 2.0):
        x = (
            start + scale * torch.randn(start.shape, generator=generator, dtype=F64)
        ).requires_grad_()
        objective.loss({"x": x}).backward()
        analytic = objective.grad({"x": x.detach()})["x"]
        torch.testing.assert_close(analytic, x.grad, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("name", sorted(CLASSICS))
def test_the_known_minimizer_is_a_minimum(name: str) -> None:
    objective = setup(CLASSICS[name]())
    x_star = objective.minimizer["x"]
    assert float(objective.loss({"x": x_star})) == pytest.approx(objective.minimum, abs=1e-20)
    assert float(objective.grad({"x": x_star})["x"].norm()) < 1e-12
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # nearby points are higher
        nearby = x_star + 1e-3 * torch.randn(x_star.shape, generator=generator, dtype=F64)
        assert float(objective.loss({"x": nearby})) > objective.minimum


def test_known_values() -> None:
    assert float(setup(Rosenbrock()).loss({"x": torch.tensor([-1.2, 1.0])})) == pytest.approx(24.2)
    assert setup(Rosenbrock(a=2.0)).minimizer["x"].tolist() == [2.0, 4.0]
    assert setup(Rosenbrock(n=4, a=3.0)).minimizer is None  # not known in closed form
    assert float(setup(Himmelblau()).loss({"x": torch.tensor([0.0, 0.0])})) == 170.0
    assert float(setup(Rastrigin(n=3)).loss({"x": torch.full((3,), 0.5)})) == pytest.approx(
        3 * (0.25 + 10) + 30
    )
    assert float(setup(Beale()).loss({"x": torch.tensor([1.0, 1.0])})) == pytest.approx(14.203125)


def test_himmelblau_has_four_minima_and_reports_the_nearest() -> None:
    h = setup(Himmelblau())
    points = [m["x"] for m in h.minimizers]
    assert len(points) == 4
    for p in points:
        assert float(h.loss({"x": p})) < 1e-25
    assert points[1].tolist() == pytest.approx([-2.805118086952745, 3.131312518250573], abs=1e-12)
    assert h.minimizer["x"].tolist() == [3.0, 2.0]
    assert setup(Himmelblau(x0=[-4.0, -4.0])).minimizer["x"].tolist() == pytest.approx(
        [-3.779310253377747, -3.283185991286170], abs=1e-12
    )


def test_starts_and_dimensions() -> None:
    x = Rosenbrock(n=5).init_params(torch.Generator(), CPU, F64)["x"]
    assert x.tolist() == [-1.2, 1.0, -1.2, 1.0, -1.2]
    assert Rastrigin(x0=[1.0, 2.0, 3.0]).n == 3  # n follows x0
    assert Rastrigin().x0 == [2.2, -1.7]
    assert Beale().x0 == [1.0, 1.0] and Himmelblau().x0 == [0.0, 0.0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Rosenbrock(n=1), "objective.n=1 must be an integer >= 2"),
        (lambda: Rosenbrock(n=3, x0=[1.0, 2.0]), "objective.x0 has 2 entries; expected 3"),
        (lambda: Rosenbrock(b=0.0), "objective.b=0.0 must be > 0"),
        (lambda: Rastrigin(A=-1.0), "objective.A=-1.0 must be >= 0"),
        (lambda: Rastrigin(x0=[1.0]), "objective.x0 has 1 entries; expected at least 2"),
        (lambda: Himmelblau(x0=[1.0, 2.0, 3.0]), "objective.x0 has 3 entries; expected 2"),
        (lambda: Beale(x0=["a", 1.0]), "objective.x0[0]='a' is not a number"),
    ],
)
def test_bad_fields_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(GdlabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make()


# ------------------------------------------------ descent from each config, in-process


@pytest.mark.parametrize(
    ("experiment", "tolerance"),
    [("rosenbrock", 1e-4), ("himmelblau", 1e-4), ("beale", 1e-4)],
)
def test_descent_from_the_config_reaches_the_minimum(
    run_config: Run, experiment: str, tolerance: float
) -> None:
    result, run_dir = run_config(f"experiment={experiment}", "logger.tensorboard=false")
    assert result.status in ("finished", "converged")
    metrics = read_metrics(run_dir)
    assert metrics["objective"] == experiment
    assert metrics["minimum"] == 0.0
    assert metrics["distance_to_minimizer"] < tolerance
    assert metrics["final_loss"] < 1e-8


def test_rastrigin_is_reported_against_its_global_minimum(run_config: Run) -> None:
    _, run_dir = run_config("experiment=rastrigin", "logger.tensorboard=false")
    metrics = read_metrics(run_dir)
    final = torch.tensor(metrics["params"]["x"])
    # Stuck in the local minimum near (2, -2), and the report says how far that is from 0.
    assert final.tolist() == pytest.approx([1.98991, -1.98991], abs=1e-3)
    assert metrics["grad_norm"] < 1e-3
    assert metrics["minimum"] == 0.0
    assert metrics["distance_to_minimizer"] == pytest.approx(float(final.norm()), rel=1e-5)
    assert metrics["final_loss"] - metrics["minimum"] == pytest.approx(7.96, abs=0.01)


def test_rastrigin_from_inside_the_global_basin_reaches_zero(run_config: Run) -> None:
    _, run_dir = run_config(
        "objective=rastrigin",
        "objective.x0=[0.3,-0.2,0.1]",
        "optimizer.lr=0.002",
        "trainer.steps=500",
        "logger.tensorboard=false",
    )
    metrics = read_metrics(run_dir)
    assert metrics["distance_to_minimizer"] < 1e-4
    assert math.isclose(metrics["final_loss"], 0.0, abs_tol=1e-6)
    assert len(metrics["params"]["x"]) == 3


def test_rosenbrock_in_five_dimensions(run_config: Run) -> None:
    _, run_dir = run_config(
        "objective=rosenbrock",
        "objective.n=5",
        "optimizer.lr=0.001",
        "optimizer.momentum=0.9",
        "trainer.steps=8000",
        "device.dtype=float64",
        "logger.tensorboard=false",
    )
    metrics = read_metrics(run_dir)
    assert metrics["distance_to_minimizer"] < 1e-4, metrics
