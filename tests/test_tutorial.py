"""The autograd tutorial's worked examples, run through gdlab, give the tutorial's numbers."""

from __future__ import annotations

import math

import pytest
import torch

from gdlab.objectives.linear_regression import LinearRegression
from tests.conftest import read_metrics


def test_descent_1d_reaches_the_minimum(run_config) -> None:
    result, run_dir = run_config("experiment=descent_1d")
    x = result.params["x"].item()
    assert result.steps == 50
    assert abs(x - 3.0) < 1e-3
    assert abs(result.final_loss - 5.0) < 1e-5
    assert read_metrics(run_dir)["status"] == "finished"


def test_quadratic_trajectory_equals_the_closed_form(run_config) -> None:
    # x_{t+1} - c = (1 - 2 a lr) (x_t - c), so x_T = c + (1 - 2 a lr)^T (x0 - c).
    a, c, lr, x0, steps = 1.5, -2.0, 0.05, 4.0, 40
    result, _ = run_config(
        "objective=quadratic",
        f"objective.a={a}",
        f"objective.c={c}",
        f"objective.x0={x0}",
        f"optimizer.lr={lr}",
        f"trainer.steps={steps}",
        "device.dtype=float64",
        "trainer.tol=0",
    )
    expected = c + (1 - 2 * a * lr) ** steps * (x0 - c)
    assert result.params["x"].item() == pytest.approx(expected, rel=1e-12)


def test_regression_recovers_w_and_b(run_config) -> None:
    result, _ = run_config("experiment=linear_regression")
    assert abs(result.params["w"].item() - 3.0) < 0.15
    assert abs(result.params["b"].item() - 2.0) < 0.15
    assert result.status == "finished" and result.steps == 200


def test_regression_minibatches_are_seeded(run_config) -> None:
    first, _ = run_config("experiment=linear_regression", "objective.batch_size=10")
    again, _ = run_config("experiment=linear_regression", "objective.batch_size=10")
    other, _ = run_config(
        "experiment=linear_regression", "objective.batch_size=10", "trainer.seed=1"
    )
    assert torch.equal(first.params["w"], again.params["w"])
    assert not torch.equal(first.params["w"], other.params["w"])
    assert abs(first.params["w"].item() - 3.0) < 0.3


def test_regression_with_more_features(run_config) -> None:
    result, _ = run_config(
        "objective=linear_regression",
        "objective.n_features=3",
        "objective.n_samples=500",
        "optimizer.lr=0.1",
        "trainer.steps=300",
    )
    assert result.params["w"].shape == (3,)
    torch.testing.assert_close(result.params["w"], torch.full((3,), 3.0), atol=0.1, rtol=0)


def test_regression_converges_to_least_squares(run_config) -> None:
    result, _ = run_config(
        "objective=linear_regression",
        "optimizer.lr=0.1",
        "trainer.steps=2000",
        "device.dtype=float64",
        "trainer.tol=1e-10",
    )
    assert result.status == "converged"
    objective = LinearRegression()
    objective.setup(torch.device("cpu"), torch.float64)
    assert result.distance_to_minimizer < 1e-8
    assert result.final_loss == pytest.approx(objective.minimum, rel=1e-10)


def test_exercise_2d_converges_to_the_origin(run_config) -> None:
    result, run_dir = run_config("experiment=exercise_2d")
    assert result.status == "converged"
    assert torch.linalg.vector_norm(result.params["v"]).item() < 1e-5
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "converged"
    assert metrics["steps"] < 500
    assert metrics["grad_norm"] < 1e-6


def test_saddle_ends_diverged_not_crashed(run_config) -> None:
    result, run_dir = run_config("experiment=saddle")
    assert result.status == "diverged"
    assert 0 < result.steps < 1000
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "diverged"
    assert metrics["steps"] == result.steps
    assert "divergence_bound" in metrics["stop_reason"]


def test_lr_beyond_two_over_L_diverges_with_non_finite_loss(run_config) -> None:
    # f'' = 2, so lr > 1 oscillates with growing amplitude; overflow ends it
    result, run_dir = run_config(
        "optimizer.lr=1.5",
        "trainer.steps=2000",
        "trainer.divergence_bound=1e300",
        "device.dtype=float32",
    )
    assert result.status == "diverged"
    metrics = read_metrics(run_dir)
    assert metrics["final_loss"] is None or not math.isfinite(result.final_loss)


def test_matrix_exercise_descends_to_zero(run_config) -> None:
    result, run_dir = run_config("experiment=matrix")
    assert result.params["W"].shape == (3, 4) and result.params["x"].shape == (4,)
    assert result.final_loss < 1e-6
    assert read_metrics(run_dir)["params"]["W"][0].__len__() == 4


def test_set_to_none_gives_the_same_run(run_config) -> None:
    zeroed, _ = run_config("experiment=linear_regression", "trainer.zero_grad=zero")
    nulled, _ = run_config("experiment=linear_regression", "trainer.zero_grad=set_to_none")
    assert torch.equal(zeroed.params["w"], nulled.params["w"])


def test_chunked_full_batch_gradient_equals_one_pass(run_config) -> None:
    common = [
        "objective=linear_regression", "objective.n_samples=5000", "objective.n_features=8",
        "optimizer.lr=0.05", "optimizer.momentum=0.5", "trainer.steps=40", "trainer.tol=0",
        "device.dtype=float64",
    ]  # fmt: skip
    one_pass, _ = run_config(*common, "trainer.chunk_rows=5000")
    chunked, _ = run_config(*common, "trainer.chunk_rows=333")  # uneven last chunk
    for name, value in one_pass.params.items():
        torch.testing.assert_close(chunked.params[name], value, rtol=1e-12, atol=1e-12)
    assert chunked.final_loss == pytest.approx(one_pass.final_loss, rel=1e-12)


def test_chunk_rows_needs_data_and_a_positive_size(run_config) -> None:
    from gdlab.errors import GdlabError

    with pytest.raises(GdlabError, match="needs an objective with data"):
        run_config("objective=quadratic", "trainer.chunk_rows=10")
    with pytest.raises(GdlabError, match=r"trainer\.chunk_rows=0 must be >= 1"):
        run_config("objective=linear_regression", "trainer.chunk_rows=0")


class WithUnusedParameter:
    """An objective with a parameter its loss ignores: its gradient stays None."""

    def init_params(self, generator, device, dtype):
        return {
            "x": torch.zeros((), device=device, dtype=dtype),
            "unused": torch.ones(2, device=device, dtype=dtype),
        }

    def loss(self, params):
        return (params["x"] - 3.0) ** 2


@pytest.mark.parametrize("zero_grad", ["zero", "set_to_none"])
def test_a_parameter_the_loss_ignores_is_left_alone(zero_grad) -> None:
    from gdlab.optim import SGDSettings, UpdateRule
    from gdlab.trainer import Trainer, TrainerSettings

    objective = WithUnusedParameter()
    params = {
        k: v.requires_grad_(True)
        for k, v in objective.init_params(None, torch.device("cpu"), torch.float64).items()
    }
    trainer = Trainer(
        objective.loss,
        params,
        UpdateRule(SGDSettings(lr=0.1, momentum=0.5, weight_decay=0.1)),
        lambda t: 0.1,
        TrainerSettings(steps=200, set_to_none=zero_grad == "set_to_none"),
    )
    result = trainer.run()
    assert result.status == "finished"
    assert torch.equal(result.params["unused"], torch.ones(2, dtype=torch.float64))
    # 2 (x - 3) + 0.1 x = 0: the used parameter reaches the decayed optimum 6 / 2.1
    assert result.params["x"].item() == pytest.approx(6 / 2.1, rel=1e-9)
