"""`gdlab-check`: autograd against the analytic grad and finite differences, and its verdicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from gdlab.check import run_check
from gdlab.config import config_dir
from gdlab.errors import GdlabError
from gdlab.gradcheck import Tolerances, check_objective, random_points
from gdlab.objectives.registry import registry

BUILT_INS = sorted(e.name for e in registry().usable() if e.package == "gdlab")


def compose_check(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="check", overrides=list(overrides))


def with_objective(cfg: DictConfig, target: str, **fields: object) -> DictConfig:
    """The config with its objective replaced by a class defined in this test module."""
    with open_dict(cfg):
        cfg.objective = {"_target_": f"tests.test_check.{target}", **fields}
    return cfg


class Cube:
    """f(x) = sum x^3 with a deliberately wrong grad, 3x instead of 3x^2: right only at 0 and 1."""

    def init_params(self, generator, device, dtype):
        return {"x": torch.ones(2, device=device, dtype=dtype)}

    def loss(self, params):
        return (params["x"] ** 3).sum()

    def grad(self, params):
        return {"x": 3 * params["x"]}


class WrongBackward(torch.autograd.Function):
    """x^2 whose backward forgets the factor 2: autograd itself is wrong."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x * x).sum()

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * x


class BadAutograd:
    def init_params(self, generator, device, dtype):
        return {"w": torch.full((3,), 0.5, device=device, dtype=dtype)}

    def loss(self, params):
        return WrongBackward.apply(params["w"])


class GradMissesAParameter:
    def init_params(self, generator, device, dtype):
        return {"a": torch.ones(1, device=device, dtype=dtype), "b": torch.ones(1, device=device)}

    def loss(self, params):
        return (params["a"] * params["b"]).sum()

    def grad(self, params):
        return {"a": params["b"].clone()}


@pytest.mark.parametrize("name", BUILT_INS)
def test_every_builtin_passes(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(compose_check(f"objective={name}", "check.points=2")) == 0
    out = capsys.readouterr()
    assert f"gdlab-check: {name} (package gdlab, entry point {name} = " in out.out
    assert "gdlab-check: OK" in out.out and out.err == ""
    lines = out.out.splitlines()
    starts = [line for line in lines if line.startswith("start ")]
    randoms = [line for line in lines if line.startswith("random ")]
    assert starts and len(randoms) == 2 * len(starts)  # every parameter at 3 points
    assert all(" pass " in line for line in starts + randoms)


def test_the_table_has_a_row_per_parameter_and_point(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(compose_check("objective=matrix", "check.points=3")) == 0
    rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()]
    rows = [r for r in rows if r and r[0] in ("start", "random")]
    labels = [" ".join(r[:2]) if r[0] == "random" else r[0] for r in rows]
    params = [r[2] if r[0] == "random" else r[1] for r in rows]
    assert labels == ["start"] * 2 + [f"random {i}" for i in (1, 2, 3) for _ in range(2)]
    assert params == ["W", "x"] * 4


def test_a_wrong_analytic_grad_names_the_parameter_and_point(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = with_objective(compose_check("check.points=2"), "Cube")
    assert run_check(cfg) == 1
    out = capsys.readouterr()
    errors = out.err.strip().splitlines()
    # Right at the start x = (1, 1), wrong at both random points.
    assert len(errors) == 2
    assert errors[0].startswith("gdlab-check: mismatch: parameter 'x' at point 'random 1' (x=[")
    assert "analytic grad differs from autograd" in errors[0]
    assert "'random 2'" in errors[1]
    assert "MISMATCH" in out.out and "gdlab-check: OK" not in out.out


def test_a_wrong_autograd_fails_the_finite_difference_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = with_objective(compose_check("check.points=1"), "BadAutograd")
    assert run_check(cfg) == 1
    out = capsys.readouterr()
    errors = out.err.strip().splitlines()
    assert errors == [e for e in errors if "autograd differs from finite differences" in e]
    assert "parameter 'w' at point 'start' (w=[0.5, 0.5, 0.5])" in errors[0]
    assert "'random 1'" in errors[1]
    assert "FAIL" in out.out and "the class has no analytic grad" in out.out


def test_a_grad_that_misses_a_parameter_is_a_mismatch(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = with_objective(compose_check("check.points=0"), "GradMissesAParameter")
    assert run_check(cfg) == 1
    err = capsys.readouterr().err
    assert "parameter 'b' at point 'start'" in err and "grad() returned no tensor for 'b'" in err
    assert "parameter 'a'" not in err


def test_finite_differences_are_measured_and_small_for_a_correct_grad() -> None:
    from gdlab.objectives.rosenbrock import Rosenbrock

    objective = Rosenbrock(n=5)
    objective.setup(torch.device("cpu"), torch.float64)
    start = objective.init_params(torch.Generator(), torch.device("cpu"), torch.float64)
    rows = check_objective(objective, random_points(start, 2, seed=1, scale=0.5), Tolerances())
    assert [r.point for r in rows] == ["start", "random 1", "random 2"]
    assert all(r.ok and r.fd_ok and r.analytic_ok for r in rows)
    assert all(r.fd_diff < 1e-4 and r.analytic_diff < 1e-9 for r in rows)


def test_random_points_are_seeded() -> None:
    start = {"x": torch.zeros(3, dtype=torch.float64)}
    a, b = random_points(start, 2, 0, 1.0), random_points(start, 2, 0, 1.0)
    c = random_points(start, 2, 1, 1.0)
    assert list(a) == ["start", "random 1", "random 2"]
    assert torch.equal(a["random 2"]["x"], b["random 2"]["x"])
    assert not torch.equal(a["random 1"]["x"], c["random 1"]["x"])
    assert torch.equal(a["start"]["x"], start["x"])


def test_the_start_is_the_runs_start(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = compose_check("objective=multivariate", "objective.x0=[3,-4]", "check.points=0")
    assert run_check(cfg) == 0
    assert "[3, -4]" in capsys.readouterr().out


@pytest.mark.parametrize("override", ["check.points=-1", "check.scale=0", "check.fd_eps=-1"])
def test_bad_settings_are_one_line_errors(override: str) -> None:
    with pytest.raises(GdlabError, match=override.split("=")[0]):
        run_check(compose_check("objective=quadratic", override))


@pytest.mark.slow
def test_the_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("gdlab-check")
    ok = subprocess.run(
        [str(script), "objective=rosenbrock", "objective.n=4", "check.points=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "rosenbrock (package gdlab" in ok.stdout and "gdlab-check: OK" in ok.stdout
    assert "[-1.2, 1, -1.2, 1]" in ok.stdout
    assert list(tmp_path.iterdir()) == []
    bad = subprocess.run(
        [sys.executable, "-m", "gdlab.check", "objective=quadratic", "check.points=-2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    unknown = subprocess.run(
        [str(script), "objective=nope"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert unknown.returncode == 2  # 1 is kept for gradient mismatches
    [line] = unknown.stderr.strip().splitlines()
    assert line.startswith("gdlab-check: error: objective=nope is not an option; available: ")
    assert "rosenbrock" in line
    assert bad.stderr.strip().splitlines() == ["gdlab-check: error: check.points=-2 must be >= 0"]
