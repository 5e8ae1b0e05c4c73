"""Sharpness (gdlab.curvature): exact spectra, Hessian-vector products, Lanczos against the
dense route, local limits of every rule, runs left unchanged, members equal to plain runs."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gdlab.curvature import (
    HessianOperator,
    SharpnessSettings,
    dense_extremes,
    extremes,
    lanczos,
    start_limits,
)
from gdlab.errors import GdlabError
from gdlab.experiment import build
from gdlab.objectives.base import Objective
from gdlab.optim import preconditioner
from gdlab.population import from_config
from gdlab.rules import edge_threshold, lr_limit, rule_lr_limit, stability_constant
from tests.conftest import compose_config, read_metrics


def spectrum_at(overrides: list[str], point: dict[str, list[float]] | None = None) -> tuple:
    """(lambda_max, lambda_min) of the configured objective's Hessian, in float64, at its
    start or at `point`."""
    cfg = compose_config(["device.dtype=float64", *overrides])
    experiment = build(cfg)
    params = {k: v.detach() for k, v in experiment.params.items()}
    if point is not None:
        params = {k: torch.tensor(v, dtype=torch.float64) for k, v in point.items()}
    loss = experiment.objective.loss
    op = HessianOperator(lambda p: loss({k: v[0] for k, v in p.items()}).reshape(1),
                         {k: v.unsqueeze(0) for k, v in params.items()})  # fmt: skip
    found = extremes(op, SharpnessSettings(every=1))
    return float(found.lambda_max[0]), float(found.lambda_min[0])


@pytest.mark.parametrize(
    ("overrides", "point", "expected"),
    [
        (["objective=quadratic", "objective.a=3.0"], None, (6.0, 6.0)),
        (["objective=multivariate"], None, (5 + math.sqrt(2), 5 - math.sqrt(2))),
        (["objective=saddle"], None, (5.0, -1.0)),  # the sign of lambda_min is right
        # H(1, 1) = [[802, -400], [-400, 200]]: 501 +- sqrt(301^2 + 400^2)
        (["objective=rosenbrock"], {"x": [1.0, 1.0]}, (501 + 250601**0.5, 501 - 250601**0.5)),
        # H(-1.2, 1) = [[1330, 480], [480, 200]]: 765 +- sqrt(565^2 + 480^2)
        (["objective=rosenbrock"], None, (765 + 549625**0.5, 765 - 549625**0.5)),
    ],
    ids=["quadratic", "multivariate", "saddle", "rosenbrock-min", "rosenbrock-start"],
)
def test_exact_spectra(overrides: list[str], point: dict | None, expected: tuple) -> None:
    top, bottom = spectrum_at(overrides, point)
    assert top == pytest.approx(expected[0], rel=1e-12)
    assert bottom == pytest.approx(expected[1], rel=1e-9, abs=1e-12)


def test_full_batch_regression_spectrum_is_that_of_its_normal_equations() -> None:
    cfg = compose_config(["objective=linear_regression", "objective.n_features=3",
                          "device.dtype=float64"])  # fmt: skip
    objective = build(cfg).objective
    n = objective.n_samples
    design = torch.cat([objective.X, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    expected = torch.linalg.eigvalsh(2.0 * design.T @ design / n)  # MSE: H = 2 D^T D / n
    top, bottom = spectrum_at(["objective=linear_regression", "objective.n_features=3"])
    assert top == pytest.approx(float(expected[-1]), rel=1e-10)
    assert bottom == pytest.approx(float(expected[0]), rel=1e-9)
    assert top == pytest.approx(objective.hessian_max, rel=1e-10)


def test_a_hessian_vector_product_is_the_dense_hessian_times_v() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, generator=gen, dtype=torch.float64)
    v = torch.randn(5, generator=gen, dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (torch.sin(x) * x.roll(1)).sum() + (x**4).sum() / 12

    op = HessianOperator(lambda p: f(p["x"][0]).reshape(1), {"x": x.unsqueeze(0)})
    expected = torch.autograd.functional.hessian(f, x) @ v
    torch.testing.assert_close(op(v.unsqueeze(0))[0], expected)
    columns = op.columns(torch.eye(5, dtype=torch.float64).unsqueeze(1))  # batched backward
    torch.testing.assert_close(columns[:, 0, :], torch.autograd.functional.hessian(f, x))


def test_members_hessians_are_block_diagonal_one_product_serves_all() -> None:
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x = torch.ones(3, 2, dtype=torch.float64)

    def losses(p: dict[str, torch.Tensor]) -> torch.Tensor:  # member k: a_k (x0^2 + 2 x1^2)
        return a * (p["x"][:, 0] ** 2 + 2 * p["x"][:, 1] ** 2)

    found = dense_extremes(HessianOperator(losses, {"x": x}))
    torch.testing.assert_close(found.lambda_max, 4 * a)
    torch.testing.assert_close(found.lambda_min, 2 * a)


def test_lanczos_agrees_with_the_dense_route_just_above_the_size_switch() -> None:
    """Rosenbrock in 60 dimensions from a random point: Lanczos (dense_max=59) within its
    tolerance of eigvalsh, both ends of the spectrum."""
    cfg = compose_config(["objective=rosenbrock", "objective.n=60", "device.dtype=float64"])
    objective = build(cfg).objective
    x = 1.0 + 0.3 * torch.randn(60, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def losses(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return objective.loss({"x": p["x"][0]}).reshape(1)

    dense = extremes(HessianOperator(losses, {"x": x.unsqueeze(0)}), SharpnessSettings(every=1))
    assert dense.method == "dense"
    op = HessianOperator(losses, {"x": x.unsqueeze(0)})
    tol = 1e-3
    found = extremes(op, SharpnessSettings(every=1, dense_max=59, tol=tol, max_iter=60))
    assert found.method == "lanczos" and op.products < 60
    scale = float(dense.lambda_max.abs())
    assert abs(float(found.lambda_max - dense.lambda_max)) <= tol * scale
    assert abs(float(found.lambda_min - dense.lambda_min)) <= 10 * tol * scale
    # warm-started from its own top vector, it needs fewer products the second time
    again = HessianOperator(losses, {"x": x.unsqueeze(0)})
    settings = SharpnessSettings(every=1, dense_max=59, tol=tol, max_iter=60)
    warm = extremes(again, settings, previous=found.vector)
    assert abs(float(warm.lambda_max - dense.lambda_max)) <= tol * scale
    assert again.products <= op.products


def test_lanczos_at_a_saddle_finds_the_largest_eigenvalue_not_the_largest_magnitude() -> None:
    """Power iteration would return -9 here (the eigenvalue of largest magnitude)."""
    diagonal = torch.tensor([-9.0, -3.0, 0.5, 1.0, 2.0] * 4, dtype=torch.float64)

    def losses(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.5 * (diagonal * p["x"] ** 2).sum(dim=1)

    x = torch.ones(1, 20, dtype=torch.float64)
    found = lanczos(HessianOperator(losses, {"x": x}), torch.randn(1, 20, dtype=torch.float64),
                    1e-6, 20)  # fmt: skip
    assert float(found.lambda_max[0]) == pytest.approx(2.0)
    assert float(found.lambda_min[0]) == pytest.approx(-9.0)


# ------------------------------------------------------------------------------ local limits


def test_stability_constants_give_the_classical_limits() -> None:
    L = 4.0
    assert rule_lr_limit("sgd", L, {}) == lr_limit(L) == pytest.approx(0.5)
    heavy = {"momentum": 0.9, "dampening": 0.1}
    assert rule_lr_limit("sgd", L, heavy) == pytest.approx(2 * 1.9 / (0.9 * L))
    nesterov = {"momentum": 0.9, "nesterov": True}
    assert rule_lr_limit("sgd", L, nesterov) == pytest.approx(2 * 1.9 / (2.8 * L))
    assert rule_lr_limit("sgd", L, {"weight_decay": 1.0}) == pytest.approx(2 / 5)
    assert rule_lr_limit("sgd", L, {"clip_norm": 1.0}) is None
    # adaptive rules: only on the preconditioned sharpness; Adam's is 38/lr at beta1 = 0.9
    assert rule_lr_limit("adam", L, {"beta1": 0.9}) is None
    assert rule_lr_limit("adam", L, {"beta1": 0.9}, preconditioned=True) == pytest.approx(38 / L)
    assert edge_threshold("adam", 0.01, {"beta1": 0.9}) == pytest.approx(3800)
    assert edge_threshold("sgd", 0.2, {}) == pytest.approx(10.0)
    assert stability_constant("rmsprop", {"momentum": 0.5}) == (3.0, 0.0)
    assert stability_constant("adagrad", {}) == (2.0, 0.0)


@pytest.mark.parametrize(
    "optimizer",
    [[], ["optimizer.momentum=0.9"], ["optimizer.momentum=0.9", "optimizer.nesterov=true"],
     ["optimizer.weight_decay=0.5"], ["optimizer.momentum=0.5", "optimizer.dampening=0.5"]],
    ids=["plain", "heavy-ball", "nesterov", "weight-decay", "dampening"],
)  # fmt: skip
def test_the_measured_limit_equals_the_analytic_one_where_the_curvature_is_known(
    run_config, optimizer: list[str]
) -> None:
    result, run_dir = run_config(
        "experiment=linear_regression", "objective.n_features=2", "sharpness.every=50",
        "device.dtype=float64", *optimizer,
    )  # fmt: skip
    sharpness = read_metrics(run_dir)["sharpness"]
    assert result.lr_limit is not None
    for point in (sharpness["initial"], sharpness["final"]):
        assert point["lr_limit"] == pytest.approx(result.lr_limit, rel=1e-9)
        assert point["ratio"] == pytest.approx(point["lr"] / result.lr_limit, rel=1e-9)
    assert [p["step"] for p in sharpness["history"]] == [0, 50, 100, 150, 200]


def test_adams_limit_is_judged_on_the_preconditioned_sharpness(run_config) -> None:
    """f = a (x - c)^2 in 1-D: H = 2a, so lambda_max(P^-1 H) = 2a / P with P the rule's own
    sqrt(v_hat) + eps, and the limit is (2 + 2 beta1) / ((1 - beta1) 2a / P)."""
    _result, run_dir = run_config(
        "objective=quadratic", "optimizer=adam", "optimizer.lr=0.05", "trainer.steps=10",
        "sharpness.every=10", "device.dtype=float64",
    )  # fmt: skip
    final = read_metrics(run_dir)["sharpness"]["final"]
    initial = read_metrics(run_dir)["sharpness"]["initial"]
    assert initial["preconditioned"] is None and initial["lr_limit"] is None  # no state yet
    cfg = compose_config(["objective=quadratic", "optimizer=adam", "optimizer.lr=0.05",
                          "trainer.steps=10", "device.dtype=float64"])  # fmt: skip
    experiment = build(cfg)
    experiment.trainer.run()
    rule = experiment.trainer.rule
    (p,) = preconditioner("adam", rule.state, list(experiment.params.values()), **rule.hyper)
    a = experiment.objective.a
    expected = 2 * a / float(p)
    assert final["preconditioned"] == pytest.approx(expected, rel=1e-12)
    assert final["lambda_max"] == pytest.approx(2 * a)
    assert final["lr_limit"] == pytest.approx(38 / expected, rel=1e-12)
    assert final["ratio"] == pytest.approx(0.05 * expected / 38, rel=1e-12)


def test_gdlab_check_limits_at_rosenbrocks_start() -> None:
    cfg = compose_config(["objective=rosenbrock", "device.dtype=float64"])
    experiment = build(cfg)
    start = {k: v.detach() for k, v in experiment.params.items()}
    points = start_limits(experiment.objective.loss, start, {"sgd": {"lr": 0.1}})
    assert points["sgd"].lambda_max == pytest.approx(1506.37, abs=0.005)
    assert points["sgd"].lambda_min == pytest.approx(23.63, abs=0.005)
    assert points["sgd"].lr_limit == pytest.approx(0.0013277, rel=1e-4)


# ------------------------------------------------------------------------------ runs


def trained(overrides: list[str]) -> tuple[dict, list]:
    cfg = compose_config(["trainer.progress=false", *overrides])
    experiment = build(cfg)
    result = experiment.trainer.run()
    return result.params, [result.final_loss, result.grad_norm, result.steps]


@pytest.mark.parametrize(
    "overrides",
    [
        ["objective=rosenbrock", "optimizer.lr=0.001", "optimizer.momentum=0.9"],
        ["experiment=linear_regression", "objective.batch_size=16", "trainer.steps=60"],
        ["objective=rosenbrock", "objective.n=30", "optimizer=adam", "optimizer.lr=0.01",
         "sharpness.dense_max=10"],
    ],
    ids=["rosenbrock-momentum", "minibatch", "adam-lanczos"],
)  # fmt: skip
def test_measuring_changes_nothing_in_the_run(overrides: list[str]) -> None:
    """Bit for bit: parameters, loss, gradient norm; the mini-batch order (RNG) too."""
    plain_params, plain_values = trained(overrides)
    params, values = trained([*overrides, "sharpness.every=7"])
    assert values == plain_values
    for name, value in plain_params.items():
        assert torch.equal(params[name], value)


def test_sharpness_is_recorded_in_metrics_and_tensorboard(run_config) -> None:
    from gdlab.api import read_scalars

    _result, run_dir = run_config("objective=rosenbrock", "optimizer.lr=0.001",
                                 "trainer.steps=25", "sharpness.every=10")  # fmt: skip
    metrics = read_metrics(run_dir)
    sharpness = metrics["sharpness"]
    assert [p["step"] for p in sharpness["history"]] == [0, 10, 20, 25]
    for key in ("step", "lambda_max", "lambda_min", "lr_limit", "ratio"):
        assert key in sharpness["initial"] and key in sharpness["final"]
    scalars = read_scalars(run_dir)
    for tag in ("lambda_max", "lambda_min", "lr_limit", "ratio"):
        assert [s for s, _ in scalars[f"sharpness/{tag}"]] == [0, 10, 20, 25]
    assert scalars["sharpness/lambda_max"][0][1] == pytest.approx(1506.367, rel=1e-5)
    # off by default: nothing measured, nothing written
    _, quiet_dir = run_config("objective=rosenbrock", "trainer.steps=5")
    assert "sharpness" not in read_metrics(quiet_dir)
    assert not any(tag.startswith("sharpness/") for tag in read_scalars(quiet_dir))


class OnceDifferentiable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x**2).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class FirstOrderOnly(Objective):
    def init_params(self, generator, device, dtype):
        return {"x": torch.ones(2, device=device, dtype=dtype)}

    def loss(self, params):
        return OnceDifferentiable.apply(params["x"])


def test_an_objective_without_second_derivatives_is_refused_in_one_line() -> None:
    with pytest.raises(GdlabError, match="first_order has no second derivatives") as err:
        HessianOperator(lambda p: FirstOrderOnly().loss({"x": p["x"][0]}).reshape(1),
                        {"x": torch.ones(1, 2)}, name="first_order")  # fmt: skip
    assert "\n" not in str(err.value) and "sharpness.every=0" in str(err.value)


def test_bad_sharpness_settings_are_refused(run_config) -> None:
    with pytest.raises(GdlabError, match=r"sharpness.every=-1 must be >= 0"):
        run_config("sharpness.every=-1")
    with pytest.raises(GdlabError, match=r"sharpness.tol=0.5 must be in \(0, 0.1\]"):
        run_config("sharpness.tol=0.5")


# ------------------------------------------------------------------------------ population


@pytest.mark.parametrize(
    ("overrides", "columns"),
    [
        (["objective=rosenbrock", "trainer.steps=40"],
         {"lr": [1e-4, 1e-3, 2e-3], "momentum": [0.0, 0.9, 0.0]}),
        (["objective=mlp", "objective.widths=[8]", "objective.n_samples=40", "trainer.steps=20",
          "sharpness.dense_max=50"], {"lr": [0.1, 0.5]}),
        (["objective=multivariate", "optimizer=adam", "trainer.steps=30"],
         {"lr": [0.01, 0.1], "beta1": [0.9, 0.5]}),
        (["experiment=linear_regression", "trainer.steps=40"], {"lr": [0.01, 0.5, 1.5]}),
    ],
    ids=["rosenbrock", "mlp-lanczos", "adam", "regression-with-divergence"],
)  # fmt: skip
def test_members_sharpness_equals_their_plain_runs(overrides: list[str], columns: dict) -> None:
    cfg = compose_config(["trainer.progress=false", "device.dtype=float64",
                          "sharpness.every=10", *overrides])  # fmt: skip
    result = from_config(cfg, columns).run()
    tol = float(cfg.sharpness.tol)
    for i in range(len(result)):
        member = result.member(i)
        plain_cfg = copy.deepcopy(cfg)
        for name, values in columns.items():
            OmegaConf.update(plain_cfg, f"optimizer.{name}", values[i])
        plain = build(plain_cfg).trainer.run()
        assert member.status == plain.status
        if plain.sharpness is None:  # diverged before a finite point could be measured
            assert member.sharpness is None
            continue
        for which in ("initial", "final"):
            a, b = member.sharpness[which], plain.sharpness[which]
            assert a["step"] == b["step"]
            scale = abs(b["lambda_max"])
            exact = b["method"] == "dense"
            for key in ("lambda_max", "lambda_min", "preconditioned"):
                if b[key] is None:
                    assert a[key] is None
                elif exact:
                    assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9 * scale)
                elif key != "lambda_min":  # Lanczos: lambda_max to tol (lambda_min: a bound)
                    assert abs(a[key] - b[key]) <= 2 * tol * scale
            if b["lr_limit"] is not None and exact:
                assert a["lr_limit"] == pytest.approx(b["lr_limit"], rel=1e-9)


def test_population_json_and_summary_carry_the_final_sharpness(tmp_path: Path) -> None:
    from tests.conftest import run_sweep

    _, sweep_dir = run_sweep(
        "hydra/sweeper=population", "objective=rosenbrock", "optimizer.lr=0.0005,0.001",
        "trainer.steps=20", "sharpness.every=10", "logger.tensorboard=false",
        "logger.plots=false", cwd=tmp_path,
    )  # fmt: skip
    import csv
    import json

    (population,) = sweep_dir.rglob("population.json")
    data = json.loads(population.read_text())
    assert data["sharpness_step"] == [20, 20]
    assert data["sharpness_initial_lambda_max"][0] == pytest.approx(1506.367, rel=1e-5)
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    by_lr = {float(r["optimizer.lr"]): r for r in rows}
    assert float(by_lr[0.001]["sharpness.lambda_max"]) == pytest.approx(
        data["sharpness_lambda_max"][1]
    )
    assert float(by_lr[0.001]["sharpness.lr_limit"]) == pytest.approx(
        2 / data["sharpness_lambda_max"][1]
    )


def test_the_edge_of_stability_preset_reaches_2_over_lr_and_stays_there() -> None:
    """The preset's network, narrower and on fewer samples so that it takes seconds: lambda_max
    starts well below 2/lr, reaches it, and hovers near it while the loss falls overall."""
    overrides = ["experiment=edge_of_stability", "objective.widths=[64,64]",
                 "objective.n_samples=200", "optimizer.lr=0.5", "trainer.steps=500"]  # fmt: skip
    cfg = compose_config(["trainer.progress=false", "sharpness.every=20", *overrides])
    result = build(cfg).trainer.run()
    assert result.status == "finished"
    history = result.sharpness["history"]
    assert all(p["method"] == "lanczos" for p in history)
    ratios = [p["lambda_max"] / p["threshold"] for p in history]  # threshold: 2/lr
    assert ratios[0] < 0.8  # progressive sharpening starts below the edge ...
    reached = next(p["step"] for p, r in zip(history, ratios, strict=True) if r >= 0.97)
    assert reached <= 200  # ... reaches it ...
    late = [r for p, r in zip(history, ratios, strict=True) if p["step"] >= 250]
    assert all(0.9 <= r <= 1.2 for r in late), late  # ... and hovers there
    assert history[-1]["ratio"] == pytest.approx(ratios[-1])
    assert result.final_loss < 0.2 * history[0]["loss"]  # while the loss falls overall
