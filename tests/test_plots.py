"""Plots: PNGs in the run directory and TensorBoard images, drawn once at the end."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gdlab.events import LogRecord, RunInfo, RunResult
from gdlab.objectives.multivariate import QuadraticForm
from gdlab.plotting import png_size
from gdlab.sinks.plots import PlotSink, fit_figure, landscape_figure, loss_figure
from gdlab.sweep.jobs import JobRow
from gdlab.sweep.lr_plot import draw_lr_plot, lr_figure

PNG = b"\x89PNG\r\n\x1a\n"


def pngs(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.glob("*.png")}


def image_tags(run_dir: Path) -> dict[str, tuple[int, int, bytes]]:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    out = {}
    for tag in events.Tags()["images"]:
        image = events.Images(tag)[-1]
        out[tag] = (image.width, image.height, image.encoded_image_string)
    return out


def test_quadratic_run_draws_loss_and_function_with_path(run_config) -> None:
    _, run_dir = run_config()
    assert pngs(run_dir) == {"loss.png", "landscape.png"}
    images = image_tags(run_dir)
    assert set(images) == {"plots/loss", "plots/landscape"}
    for name in ("loss", "landscape"):
        png = (run_dir / f"{name}.png").read_bytes()
        width, height, encoded = images[f"plots/{name}"]
        assert png.startswith(PNG) and encoded == png  # the same picture in both places
        assert (width, height) == png_size(png) == (600, 400)


def test_two_dimensional_and_regression_runs(run_config) -> None:
    _, run_dir = run_config("experiment=exercise_2d")
    assert pngs(run_dir) == {"loss.png", "landscape.png"}
    _, run_dir = run_config("experiment=linear_regression")
    assert pngs(run_dir) == {"loss.png", "landscape.png", "fit.png"}  # (w, b) plane and the fit
    _, run_dir = run_config("experiment=matrix", "trainer.steps=20")
    assert pngs(run_dir) == {"loss.png"}  # 16 numbers: no landscape to draw


def test_diverged_runs_are_drawn_without_their_non_finite_points(run_config) -> None:
    result, run_dir = run_config("objective=quadratic", "optimizer.lr=1e10", "trainer.steps=20")
    assert result.status == "diverged"
    assert pngs(run_dir) == {"loss.png", "landscape.png"}


def test_plots_flag_and_logger_none_turn_plots_off(run_config) -> None:
    _, run_dir = run_config("logger.plots=false")
    assert pngs(run_dir) == set()
    assert "plots/loss" not in image_tags(run_dir)
    _, run_dir = run_config("logger=none")
    assert pngs(run_dir) == set()


def test_plots_without_tensorboard_still_write_pngs(run_config) -> None:
    _, run_dir = run_config("logger.tensorboard=false")
    assert pngs(run_dir) == {"loss.png", "landscape.png"}
    assert not list(run_dir.glob("events.out.tfevents.*"))


def test_loss_axis_is_logarithmic_only_for_positive_losses() -> None:
    positive = loss_figure([0, 1, 2], [4.0, 2.0, 1.0], "t").axes[0]
    assert positive.get_yscale() == "log"
    signed = loss_figure([0, 1, 2], [1.0, -2.0, math.nan], "t").axes[0]
    assert signed.get_yscale() == "linear"
    (line,) = signed.get_lines()
    assert list(line.get_xdata()) == [0, 1]  # the NaN point is left out


def test_landscape_draws_the_path_it_is_given() -> None:
    objective = QuadraticForm()
    objective.setup(torch.device("cpu"), torch.float32)
    template = {"v": torch.zeros(2)}
    path = [[1.0, 2.0], [0.5, 0.8], [0.1, 0.1]]
    figure = landscape_figure(objective.loss, template, path, [9, 2, 0.1], [0.0, 0.0], "t")
    ax = figure.axes[0]
    descent = next(line for line in ax.get_lines() if line.get_label() == "descent")
    assert list(descent.get_xdata()) == [1.0, 0.5, 0.1]
    assert list(descent.get_ydata()) == [2.0, 0.8, 0.1]
    assert ax.collections, "contour lines are drawn"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("v[0]", "v[1]")


def test_fit_plot_has_the_true_and_the_fitted_line(run_config) -> None:
    from gdlab.objectives.linear_regression import LinearRegression

    objective = LinearRegression()
    objective.setup(torch.device("cpu"), torch.float32)
    figure = fit_figure(objective, {"w": torch.tensor([2.5]), "b": torch.tensor([1.0])}, "t")
    lines = {line.get_label().split(":")[0]: line for line in figure.axes[0].get_lines()}
    (x0, x1), (y0, y1) = lines["true"].get_xdata(), lines["true"].get_ydata()
    assert (y1 - y0) / (x1 - x0) == pytest.approx(3.0)
    (x0, x1), (y0, y1) = lines["fitted"].get_xdata(), lines["fitted"].get_ydata()
    assert (y1 - y0) / (x1 - x0) == pytest.approx(2.5)


def test_a_plot_that_cannot_be_drawn_is_skipped_not_fatal(tmp_path: Path, caplog) -> None:
    class Broken:
        def loss(self, params):
            raise RuntimeError("no")

    sink = PlotSink(tmp_path, Broken())
    sink.start(RunInfo("broken", "cpu", "float32", 2, 1))
    for step, x in enumerate([0.0, 1.0, 2.0]):
        sink.log(LogRecord(step, 1.0 / (step + 1), 1.0, 0.1, {"x": torch.tensor(x)}))
    sink.finish(RunResult("finished", 2, 0.3, 1.0, {"x": torch.tensor(2.0)}, 0.01))
    assert pngs(tmp_path) == {"loss.png"}
    assert "skipped landscape.png" in caplog.text


def test_lr_plot_has_log_axes_and_marks_diverged_jobs(tmp_path: Path) -> None:
    rows = [
        JobRow("a", 0, ["optimizer.lr=0.01"], "finished", 50, 6.2, lr=0.01),
        JobRow("b", 1, ["optimizer.lr=0.1"], "finished", 50, 5.0, lr=0.1),
        JobRow("c", 2, ["optimizer.lr=2.0"], "diverged", 9, math.inf, lr=2.0),
    ]
    for row in rows:
        row.values = dict(o.split("=") for o in row.overrides)
    ax = lr_figure(rows).axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["final loss"].get_xdata()) == [0.01, 0.1]
    marked = [line for line in ax.get_lines() if line.get_marker() == "x" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in marked] == [[2.0]]  # the diverged job
    assert marked[0].get_ydata()[0] == pytest.approx(62.0)  # an infinite loss: at the top
    path = draw_lr_plot(rows, tmp_path / "lr.png")
    assert path.read_bytes().startswith(PNG)


@pytest.mark.slow
def test_matplotlib_is_imported_only_when_plotting(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from tests.conftest import compose_config\n"
        "from gdlab.experiment import run_experiment\n"
        "cfg = compose_config(['trainer.progress=false', 'logger.plots={flag}'])\n"
        "run_experiment(cfg, sys.argv[1])\n"
        "print('matplotlib' in sys.modules)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    for flag, imported in (("false", "False"), ("true", "True")):
        proc = subprocess.run(
            [sys.executable, "-c", code.format(flag=flag), str(tmp_path / flag)],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == imported
