"""The rule book's verdicts, limits and scores, as users meet them (issue: honest results)."""

from __future__ import annotations

import math

import pytest
import torch

from gdlab.experiment import build
from gdlab.population import from_config
from gdlab.rules import (
    GO_ON,
    LOSS_GROWS,
    LOSS_ROSE,
    curvature,
    end_code,
    lr_limit,
    precision,
    score,
)
from tests.conftest import compose_config


def run(*overrides: str):
    cfg = compose_config(["trainer.progress=false", "logger.plots=false", *overrides])
    return build(cfg).trainer.run()


# --------------------------------------------------------------------------- verdicts


def test_an_unstable_run_is_diverged_with_the_rise_in_its_reason() -> None:
    result = run("objective=quadratic", "optimizer.lr=1.1")
    assert result.status == "diverged"
    assert result.stop_reason == "loss rose from 14 to 7.45365e+08"
    assert result.lr_limit == pytest.approx(1.0) and result.score == math.inf


def test_a_run_that_starts_at_the_minimum_and_stays_there_is_not_diverged() -> None:
    result = run("objective=quadratic", "objective.x0=3.0", "trainer.tol=0", "trainer.steps=20")
    assert result.status == "finished" and result.excess_loss == 0.0


def test_mini_batch_noise_never_condemns_a_good_run() -> None:
    # batch losses go up and down; the full objective at the end is far below the start
    result = run("experiment=linear_regression", "objective.batch_size=5", "trainer.steps=400")
    assert result.status in ("finished", "converged")
    assert result.initial_loss is not None and result.final_loss < result.initial_loss


def test_end_code_works_on_numbers_and_on_member_tensors() -> None:
    eps = precision("float64")
    assert end_code(14.0, [14.0, 7.4e8], eps) == LOSS_ROSE
    assert end_code(5.0, [5.0, 5.0 * (1 + eps)], eps) == GO_ON  # rounding at the minimum
    growing = [100.0 + 1.5**k for k in range(6)]  # rises, each rise 1.5x the one before
    assert end_code(1e9, growing, eps) == LOSS_GROWS
    assert end_code(1e9, growing, eps, trend=False) == GO_ON
    noisy = [100.0, 101.0, 100.5, 102.0, 101.0, 103.0]
    assert end_code(1e9, noisy, eps) == GO_ON
    initial = torch.tensor([14.0, 1e9, 1e9, 5.0], dtype=torch.float64)
    columns = torch.tensor([[14.0] * 6, growing, noisy, [5.0] * 6], dtype=torch.float64).T.clone()
    columns[-1, 0] = 7.4e8
    codes = end_code(initial, list(columns), eps)
    assert codes.tolist() == [LOSS_ROSE, LOSS_GROWS, GO_ON, GO_ON]


# --------------------------------------------------------------------------- stability limits


@pytest.mark.parametrize(
    ("objective", "optimizer"),
    [
        ("quadratic", {}),
        ("quadratic", {"momentum": 0.5}),
        ("quadratic", {"momentum": 0.5, "dampening": 0.5}),
        ("quadratic", {"momentum": 0.5, "nesterov": True}),
        ("multivariate", {}),
        ("multivariate", {"momentum": 0.9}),
        ("multivariate", {"momentum": 0.3, "nesterov": True}),
        ("quadratic", {"weight_decay": 0.5}),
    ],
)
def test_runs_diverge_within_one_grid_step_of_each_limit(objective: str, optimizer: dict) -> None:
    overrides = [f"objective={objective}", "trainer.steps=3000", "device.dtype=float64"]
    overrides += ["trainer.tol=0", *(f"optimizer.{k}={v}" for k, v in optimizer.items())]
    cfg = compose_config(["trainer.progress=false", *overrides])
    problem_cfg = build(cfg).problem
    limit = lr_limit(problem_cfg.curvature(), **optimizer)
    assert limit is not None
    step = 0.01 * limit
    lrs = [limit * (0.8025 + 0.01 * i) for i in range(40)]  # never exactly on the limit
    result = from_config(cfg, {"lr": lrs}).run()
    diverged = [lr for lr, s in zip(lrs, result.status, strict=True) if s == "diverged"]
    stable = [lr for lr, s in zip(lrs, result.status, strict=True) if s != "diverged"]
    assert diverged and stable
    assert limit < min(diverged) < limit + step, (limit, min(diverged))
    assert limit - step < max(stable) < limit
    assert all(lim == pytest.approx(limit) for lim in result.lr_limit)


def test_the_limits_formulas() -> None:
    assert lr_limit(2.0) == 1.0
    assert lr_limit(2.0, momentum=0.5) == pytest.approx(1.5)
    assert lr_limit(2.0, momentum=0.5, dampening=0.5) == pytest.approx(3.0)
    assert lr_limit(2.0, momentum=0.5, nesterov=True) == pytest.approx(0.75)
    assert lr_limit(2.0, weight_decay=2.0) == 0.5
    assert lr_limit(2.0, clip_norm=1.0) is None and lr_limit(None) is None


def test_curvature_of_the_full_batch_regression_only() -> None:
    cfg = compose_config(["trainer.progress=false", "experiment=linear_regression"])
    objective = build(cfg).objective
    assert 2 / curvature(objective, False) == pytest.approx(0.957, abs=1e-3)
    assert curvature(objective, True) is None  # mini-batches: no fixed curvature


# --------------------------------------------------------------------------- scores


def test_scores_order_runs_as_the_ranking_promises() -> None:
    eps = precision("float32")
    at_min_near = score("finished", 5.0, 0.0, 5.0, 1e-7, 50, eps)
    at_min_far = score("finished", 5.0, 1e-9, 5.0, 4e-5, 50, eps)  # within float32 precision
    converged_above = score("converged", 5.1, 0.1, 5.0, 0.3, 20, eps)
    finished_closer = score("finished", 5.05, 0.05, 5.0, 0.2, 50, eps)
    assert at_min_near < at_min_far < converged_above < finished_closer
    assert score("diverged", 5.0, 0.0, 5.0, 0.0, 5, eps) == math.inf
    # exact ties go to fewer steps, inside the score itself (what Optuna minimises)
    assert score("converged", 5.0, 0.0, 5.0, 0.0, 6, eps) < score(
        "converged", 5.0, 0.0, 5.0, 0.0, 7, eps
    )
    assert score("finished", 5.0, 0.0, 5.0, 2e-7, 10, eps) < score(
        "finished", 5.0, 0.0, 5.0, 2e-7, 11, eps
    )


def test_geometric_growth_is_judged_per_step_when_the_last_point_comes_early() -> None:
    # growth 1.44 per step, logged every 3 steps, the final point 1 step after the last log
    steps = [0, 3, 6, 9, 12, 13]
    history = [100.0 + 1.44**s for s in steps]
    eps = precision("float64")
    assert end_code(1e9, history, eps, steps=steps) == LOSS_GROWS
    assert end_code(1e9, history, eps) == GO_ON  # read as evenly spaced, the last rise is small
