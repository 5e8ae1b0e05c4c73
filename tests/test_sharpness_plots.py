"""sharpness.png of a run and edge_of_stability.png of a sweep (Cohen et al. 2021, Figure 1)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gdlab.curvature import SharpnessPoint
from gdlab.experiment import run_experiment
from gdlab.plotting import png_size
from gdlab.sinks.plots import sharpness_figure, threshold_label
from gdlab.sweeps.edge_plot import (
    EDGE_PLOT,
    MAX_RUNS,
    EdgeRun,
    draw_edge_of_stability,
    edge_figure,
    load_edge_runs,
)
from gdlab.sweeps.jobs import JobRow
from gdlab.sweeps.summary import collect_jobs
from tests.conftest import compose_config
from tests.test_plots import PNG, image_tags, pngs

QUICK = ("objective=rosenbrock", "trainer.steps=30", "sharpness.every=5")


def point(step: int, lam: float, lr: float = 0.1, **extra: float | None) -> SharpnessPoint:
    values = {
        "step": step,
        "lambda_max": lam,
        "lambda_min": -0.1 * lam,
        "lr": lr,
        "lr_limit": 2 / lam,
        "ratio": lr * lam / 2,
        "preconditioned": None,
        "threshold": 2 / lr,
        "loss": 1.0 / (1 + step),
        "products": 2,
        "method": "dense",
    }
    return SharpnessPoint(**{**values, **extra})


# --------------------------------------------------------------------------- a run: sharpness.png


def test_a_run_that_measures_sharpness_draws_it(run_config) -> None:
    result, run_dir = run_config(*QUICK)
    assert result.sharpness is not None
    assert "sharpness.png" in pngs(run_dir)
    png = (run_dir / "sharpness.png").read_bytes()
    assert png.startswith(PNG) and png_size(png) == (600, 600)
    width, height, encoded = image_tags(run_dir)["train_plots/sharpness"]
    assert encoded == png and (width, height) == (600, 600)  # the same picture in TensorBoard


def test_no_sharpness_png_without_measurements(run_config) -> None:
    _, run_dir = run_config("objective=rosenbrock", "trainer.steps=30", "sharpness.every=0")
    assert "sharpness.png" not in pngs(run_dir) and "loss.png" in pngs(run_dir)
    _, run_dir = run_config(*QUICK, "logger.plots=false")
    assert pngs(run_dir) == set()


def test_sgd_panel_draws_lambda_max_threshold_and_faint_lambda_min() -> None:
    points = [point(s, 5 + s) for s in range(0, 30, 5)]
    figure = sharpness_figure(points, [0, 10, 20], [3.0, 2.0, 1.0], "t", "sgd")
    top, bottom = figure.axes
    assert top.get_yscale() == "log" and bottom.get_yscale() == "linear"
    assert top.get_shared_x_axes().joined(top, bottom)
    lines = {line.get_label(): line for line in bottom.get_lines()}
    assert list(lines["sharpness λ_max(H)"].get_ydata()) == [p.lambda_max for p in points]
    assert lines["λ_min(H)"].get_alpha() < 1
    assert lines["2/lr = 20"].get_linestyle() == "--"
    assert min(lines["λ_min(H)"].get_ydata()) < 0  # negative values are drawn on a linear axis


def test_adaptive_panel_draws_the_preconditioned_sharpness() -> None:
    # before the rule's first step there is no preconditioner: that point is left out
    points = [point(0, 10, lr=0.01, threshold=None)]
    points += [point(s, 10, lr=0.01, preconditioned=100 + s, threshold=3800) for s in (5, 10)]
    figure = sharpness_figure(points, [], [], "t", "adam")
    _, bottom = figure.axes
    lines = {line.get_label(): line for line in bottom.get_lines()}
    assert list(lines["λ_max(P⁻¹H)"].get_ydata()) == [105, 110]
    assert "threshold for optimizer=adam: 38/lr = 3800" in lines
    assert "λ_min(H)" not in lines  # H's scale is not P^-1 H's
    (loss,) = figure.axes[0].get_lines()  # no logged loss: the measurements' own
    assert list(loss.get_xdata()) == [0, 5, 10]


def test_threshold_labels_and_a_diverging_run() -> None:
    assert threshold_label([point(0, 1, lr=0.1)], "sgd") == "2/lr = 20"
    momentum = [point(0, 1, lr=0.1, threshold=38.0), point(5, 1, lr=0.05, threshold=76.0)]
    assert threshold_label(momentum, "sgd") == "threshold for optimizer=sgd: 3.8/lr"
    diverging = [point(s, 10.0 ** (4 * s), lr=0.1) for s in range(6)]
    diverging.append(point(6, math.inf))
    figure = sharpness_figure(diverging, [0, 1, 2], [1.0, 1e9, math.inf], "t", "sgd")
    assert figure.axes[1].get_yscale() == "symlog"  # 1e20 does not flatten the rest


# --------------------------------------------------------------------------- a sweep


def make_job(sweep_dir: Path, num: int, overrides: list[str], run: bool = True) -> Path:
    """Job `num` of a sweep as a multirun leaves it: .hydra/ files and the run's own."""
    job_dir = sweep_dir / str(num)
    hydra_dir = job_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    cfg = compose_config(["trainer.progress=false", *overrides])
    OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}), hydra_dir / "hydra.yaml")
    if run:
        run_experiment(cfg, job_dir, overrides=overrides)
    return job_dir


def test_a_sweep_of_lrs_draws_the_edge_of_stability(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    for num, lr in enumerate(("0.002", "0.001")):
        make_job(sweep_dir, num, [*QUICK, f"optimizer.lr={lr}", "logger.plots=false"])
    rows = collect_jobs(sweep_dir)
    path = draw_edge_of_stability(sweep_dir, rows)
    assert path == sweep_dir / EDGE_PLOT
    png = path.read_bytes()
    assert png.startswith(PNG) and len(png) > 10_000
    assert png_size(png) == (600, 600)
    runs, left_out = load_edge_runs(sweep_dir, rows)
    assert [run.label for run in runs] == ["lr=0.001", "lr=0.002"] and left_out == ""
    assert all(len(run.steps) > len(run.history) for run in runs)  # the logged train/loss


def test_no_edge_plot_without_sharpness(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    for num, lr in enumerate(("0.002", "0.001")):
        overrides = ["objective=rosenbrock", "trainer.steps=10", f"optimizer.lr={lr}"]
        make_job(sweep_dir, num, [*overrides, "logger.plots=false", "logger.tensorboard=false"])
    assert draw_edge_of_stability(sweep_dir, collect_jobs(sweep_dir)) is None
    assert not (sweep_dir / EDGE_PLOT).exists()
    assert draw_edge_of_stability(tmp_path / "missing", []) is None


def write_fake_job(sweep_dir: Path, num: int, lr: float, status: str = "finished") -> None:
    """A job with .hydra/ files and a metrics.json holding a sharpness history, not run."""
    job_dir = make_job(sweep_dir, num, [f"optimizer.lr={lr}"], run=False)
    history = [point(s, min(2 / lr, 1 + s), lr=lr).as_dict() for s in range(0, 50, 10)]
    metrics = {"status": status, "steps": 40, "final_loss": 0.1, "score": 0.1}
    metrics["sharpness"] = {"every": 10, "history": history}
    (job_dir / "metrics.json").write_text(json.dumps(metrics))


def test_the_edge_plot_draws_at_most_max_runs_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_dir = tmp_path / "sweep"
    for num in range(MAX_RUNS + 2):
        write_fake_job(sweep_dir, num, 0.01 * (MAX_RUNS + 2 - num))
    rows = collect_jobs(sweep_dir)
    runs, left_out = load_edge_runs(sweep_dir, rows)
    assert left_out == f"first {MAX_RUNS} of {MAX_RUNS + 2} runs"
    assert sorted(run.row.num for run in runs) == list(range(MAX_RUNS))  # the lowest-numbered
    assert [run.lr for run in runs] == sorted(run.lr for run in runs)
    assert "first 8 of 10 runs" in edge_figure(runs, left_out).axes[0].get_title()
    assert draw_edge_of_stability(sweep_dir, rows) is not None
    (sweep_dir / EDGE_PLOT).unlink()

    def broken(*_: object) -> None:
        raise RuntimeError("no picture today")

    monkeypatch.setattr("gdlab.sweeps.edge_plot.edge_figure", broken)
    with caplog.at_level("WARNING", logger="gdlab"):
        assert draw_edge_of_stability(sweep_dir, rows) is None
    assert "skipped edge_of_stability.png: RuntimeError: no picture today" in caplog.text
    assert not (sweep_dir / EDGE_PLOT).exists()


def test_a_diverged_run_leaves_the_panels_at_the_top() -> None:
    rows = [
        JobRow(job=str(i), num=i, overrides=[], status=s)
        for i, s in enumerate(("finished", "diverged"))
    ]
    calm = EdgeRun(
        rows[0], 0.1, [point(s, 5.0 + s).as_dict() for s in range(5)], [0, 4], [2.0, 1.0]
    )
    wild = [point(s, 10.0 ** (3 * s)).as_dict() for s in range(5)]
    loud = EdgeRun(rows[1], 0.5, wild, [0, 4], [2.0, 1e30], label="lr=0.5 (diverged)")
    top, bottom = edge_figure([calm, loud]).axes
    assert top.get_ylim()[1] <= 20.0 + 1e-9  # a decade above the calm run's loss
    assert bottom.get_ylim()[1] < 50  # the calm run's sharpness and its 2/lr = 20


def test_importing_the_edge_plot_stays_light() -> None:
    """write_summary imports it in every sweep: no matplotlib, torch or TensorBoard."""
    code = (
        "import sys\n"
        "import gdlab.sweeps.edge_plot\n"
        "print([m for m in ('torch', 'matplotlib', 'tensorboard') if m in sys.modules])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_edge_of_stability_command_draws_its_picture(tmp_path: Path) -> None:
    """`gdlab experiment=edge_of_stability` is a multirun by itself; smaller here, for time."""
    from tests.conftest import run_cli

    proc = run_cli(
        "experiment=edge_of_stability", "trainer.steps=120", "objective.n_samples=100",
        "objective.widths=[16,16]", "sharpness.every=40", "logger.tensorboard=false",
        "optimizer.lr=0.1,0.4", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert (sweep_dir / "edge_of_stability.png").stat().st_size > 10_000
    header = (sweep_dir / "summary.csv").read_text().splitlines()[0].split(",")
    assert "sharpness.lambda_max" in header and "sharpness.lr_limit" in header
    assert len(list(sweep_dir.glob("*/sharpness.png"))) == 2
