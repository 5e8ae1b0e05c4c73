"""Plots: PNGs in the run directory and TensorBoard images, drawn once at the end."""

from __future__ import annotations

import gc
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gdlab.events import LogRecord, RunInfo, RunResult
from gdlab.objectives.multivariate import QuadraticForm
from gdlab.plotting import paused_gc, png_size
from gdlab.sinks.plots import PlotSink, fit_figure, landscape_figure, loss_figure
from gdlab.sweeps.jobs import JobRow
from gdlab.sweeps.lr_plot import DIVERGED_LABEL, MAX_POINTS, draw_lr_plot, lr_figure

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def figures(monkeypatch) -> dict:
    """The figures a PlotSink draws, by name (loss, landscape, fit), kept for inspection."""
    drawn: dict = {}
    emit = PlotSink._emit

    def keep(self, name, figure, step):
        drawn[name] = figure
        emit(self, name, figure, step)

    monkeypatch.setattr(PlotSink, "_emit", keep)
    return drawn


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
    assert set(images) == {"train_plots/loss", "train_plots/landscape"}
    for name in ("loss", "landscape"):
        png = (run_dir / f"{name}.png").read_bytes()
        width, height, encoded = images[f"train_plots/{name}"]
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
    assert "train_plots/loss" not in image_tags(run_dir)
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


def test_plots_are_drawn_with_the_garbage_collector_paused_and_restored(
    tmp_path: Path, monkeypatch
) -> None:
    """Importing matplotlib would set off a full collection through torch's objects: the
    sink draws with the collector off, and leaves it as it found it (on, or off)."""
    seen = []
    emit = PlotSink._emit

    def note(self, name, figure, step):
        seen.append(gc.isenabled())
        emit(self, name, figure, step)

    monkeypatch.setattr(PlotSink, "_emit", note)
    for enabled in (True, False):
        sink = PlotSink(tmp_path / str(enabled))
        sink.start(RunInfo("q", "cpu", "float32", 1, 1))
        sink.log(LogRecord(0, 2.0, 1.0, 0.1, {"x": torch.tensor(0.0)}))
        (gc.enable if enabled else gc.disable)()
        try:
            sink.finish(RunResult("finished", 1, 1.0, 1.0, {"x": torch.tensor(1.0)}, 0.0))
            assert gc.isenabled() is enabled
        finally:
            gc.enable()
    assert seen == [False, False]
    with pytest.raises(RuntimeError), paused_gc():  # restored on the way out of an error too
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled()


def test_matplotlib_is_imported_with_the_garbage_collector_paused() -> None:
    code = (
        "import gc, sys\n"
        "from gdlab.plotting import figure_class\n"
        "assert 'matplotlib' not in sys.modules\n"
        "runs = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and runs.append(info))\n"
        "figure_class()\n"
        "print('matplotlib.figure' in sys.modules, len(runs), gc.isenabled())\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    imported, collections, enabled = proc.stdout.split()
    # unpaused, the import sets off some 150 collections here, one of them full; paused, at
    # most the one young collection when the collector is switched back on
    assert (imported, enabled) == ("True", "True") and int(collections) <= 1


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


# --------------------------------------------------------------------------- loss.png


def test_quadratic_loss_is_drawn_as_excess_over_the_minimum_on_a_log_axis(
    run_config, figures
) -> None:
    run_config("objective=quadratic", "optimizer.lr=0.1", "optimizer.momentum=0.9")
    ax = figures["loss"].axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_ylabel() == "loss − f*"
    curve = next(line for line in ax.get_lines() if line.get_label() == "f* = 5")
    assert curve.get_ydata()[0] == pytest.approx(9.0)  # f(0) - f* = 14 - 5
    assert "lr 0.1" in ax.get_title() and "momentum 0.9" in ax.get_title()


def test_rounding_below_the_minimum_is_clipped_to_a_labelled_floor() -> None:
    losses = [14.0, 5.5, 5.0, 5.0 - 4.7e-7]  # the last two: f - f* is 0 and < 0 in float32
    ax = loss_figure([0, 1, 2, 3], losses, "t", minimum=5.0, dtype="float32").axes[0]
    floor = torch.finfo(torch.float32).eps * 5.0
    (curve, floor_line) = ax.get_lines()
    assert list(curve.get_ydata()) == pytest.approx([9.0, 0.5, floor, floor])
    assert floor_line.get_label().startswith("float32 precision")
    assert list(floor_line.get_ydata()) == pytest.approx([floor, floor])
    assert ax.get_ylim()[0] > floor / 100  # no cliff towards 1e-300


def test_a_zero_minimum_keeps_tiny_losses_and_floors_only_zeros() -> None:
    # f* = 0 (Rosenbrock): a float32 loss is exact far below eps, so 1e-12 is a real value
    ax = loss_figure([0, 1, 2], [25.0, 1e-12, 0.0], "t", minimum=0.0, dtype="float32").axes[0]
    (curve, floor_line) = ax.get_lines()
    assert list(curve.get_ydata()) == pytest.approx([25.0, 1e-12, 1e-13])
    assert floor_line.get_label() == "f − f* = 0, drawn at 1e-13"


def test_loss_far_below_the_minimum_is_drawn_raw() -> None:
    # a mini-batch loss may lie below f*: no honest excess, so the loss itself
    ax = loss_figure([0, 1, 2], [3.0, 1.0, 0.5], "t", minimum=2.0, dtype="float32").axes[0]
    assert ax.get_ylabel() == "loss"
    assert list(ax.get_lines()[0].get_ydata()) == [3.0, 1.0, 0.5]


def test_precision_floor_follows_the_dtype() -> None:
    ax = loss_figure([0, 1], [14.0, 5.0], "t", minimum=5.0, dtype="float64").axes[0]
    floor_line = ax.get_lines()[1]
    assert floor_line.get_label().startswith("float64 precision")
    assert floor_line.get_ydata()[0] == pytest.approx(5 * 2.0**-52)


# --------------------------------------------------------------------------- landscape.png


def test_diverged_saddle_landscape_keeps_the_start_in_view(run_config, figures) -> None:
    result, _ = run_config("experiment=saddle")
    assert result.status == "diverged"
    ax = figures["landscape"].axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < 2.0 < x1 and y0 < 3.0 < y1  # the start, (2, 3)
    assert x1 - x0 < 100 and y1 - y0 < 100  # not zoomed out to the 1e7 the path reached
    assert [t.get_text() for t in ax.texts if t.get_text() == "diverges"] == ["diverges"]
    assert ax.get_aspect() == 1.0
    assert "lr 0.1" in ax.get_title()


def test_diverged_one_dimensional_landscape_keeps_start_and_minimiser(run_config, figures) -> None:
    result, _ = run_config("objective=quadratic", "optimizer.lr=1e10", "trainer.steps=20")
    assert result.status == "diverged"
    ax = figures["landscape"].axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < 0.0 and 3.0 < x1 < 100  # start 0 and minimiser 3, not 6e10
    assert y0 < 5.0 and 14.0 < y1 < 1e3
    assert any(t.get_text() == "diverges" for t in ax.texts)


def test_converged_landscape_frames_the_whole_path_without_an_exit_mark() -> None:
    objective = QuadraticForm()
    objective.setup(torch.device("cpu"), torch.float32)
    path = [[1.0, 2.0], [-1.5, 0.5], [0.1, 0.1]]  # an overshoot that comes back
    figure = landscape_figure(objective.loss, {"v": torch.zeros(2)}, path, [9, 2, 0.1],
                              [0.0, 0.0], "t")  # fmt: skip
    ax = figure.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < -1.5 and x1 > 1.0 and y0 < 0.0 and y1 > 2.0
    assert not [t for t in ax.texts if t.get_text() == "diverges"]


def test_contours_get_equal_aspect_only_for_comparable_ranges() -> None:
    objective = QuadraticForm()
    objective.setup(torch.device("cpu"), torch.float32)
    template = {"v": torch.zeros(2)}
    comparable = landscape_figure(
        objective.loss, template, [[1.0, 2.0], [0.5, 0.5]], [9, 1], [0.0, 0.0], "t"
    ).axes[0]
    assert comparable.get_aspect() == 1.0
    (x0, x1), (y0, y1) = comparable.get_xlim(), comparable.get_ylim()
    box = comparable.get_position()
    width, height = comparable.get_figure().get_size_inches()
    # one unit is as long on both axes: the view fills the box, nothing is squeezed
    assert (y1 - y0) / (x1 - x0) == pytest.approx(box.height * height / (box.width * width))
    stretched = landscape_figure(
        objective.loss, template, [[100.0, 0.2], [50.0, 0.1]], [9, 1], [0.0, 0.0], "t"
    ).axes[0]
    assert stretched.get_aspect() == "auto"


# --------------------------------------------------------------------------- lr.png


def lr_rows(
    lrs: list[float], momentum: float, limit: float, problem: str = "quadratic"
) -> list[JobRow]:
    """Jobs of a quadratic sweep: those beyond the limit diverge, one sits at the minimum."""
    rows = []
    for lr in lrs:
        overrides = [f"optimizer.lr={lr}", f"optimizer.momentum={momentum}"]
        row = JobRow(f"{lr},{momentum}", 0, overrides, "finished", 50, lr=lr)
        row.values = dict(o.split("=") for o in overrides)
        row.momentum, row.lr_limit, row.problem, row.minimum = momentum, limit, problem, 5.0
        if lr >= limit:
            row.status, row.final_loss = "diverged", math.inf
        else:
            row.excess_loss = 0.0 if lr == 0.5 else 10.0 ** (-10 * lr)
            row.final_loss = 5.0 + row.excess_loss
        rows.append(row)
    return rows


def top_crosses(ax) -> list:
    return [
        line
        for line in ax.get_lines()
        if line.get_marker() == "x" and len(line.get_xdata()) and not line.get_clip_on()
    ]


def test_lr_plot_pins_diverged_jobs_at_the_top_edge(tmp_path: Path) -> None:
    rows = lr_rows([0.1, 0.2, 0.5, 0.8, 1.2, 1.5], 0.0, 1.0)
    rows[-1].final_loss = 1e38  # a huge but finite loss: still a cross, never a data point
    rows[-1].status = "diverged"
    ax = lr_figure(rows).axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    (crosses,) = top_crosses(ax)
    assert sorted(crosses.get_xdata()) == [1.2, 1.5]
    assert list(crosses.get_ydata()) == [1.0, 1.0]
    assert crosses.get_transform() == ax.get_xaxis_transform()  # y in axes fractions: the top
    assert ax.get_ylim()[1] < 10.0  # the diverged losses squash nothing
    assert DIVERGED_LABEL in [line.get_label() for line in ax.get_lines()]
    assert draw_lr_plot(rows, tmp_path / "lr.png").read_bytes().startswith(PNG)


def test_lr_plot_draws_zero_excess_on_a_labelled_floor() -> None:
    ax = lr_figure(lr_rows([0.1, 0.2, 0.5, 0.8], 0.0, 1.0)).axes[0]
    assert ax.get_ylabel() == "final excess loss f − f*"
    (series,) = [line for line in ax.get_lines() if line.get_label() == "final excess loss"]
    assert list(series.get_xdata()) == [0.1, 0.2, 0.5, 0.8]
    floor = series.get_ydata()[2]  # the job at the minimum (excess 0)
    assert 0 < floor < min(y for y in series.get_ydata() if y != floor)
    (floor_line,) = [line for line in ax.get_lines() if line.get_label().startswith("excess 0")]
    assert floor_line.get_ydata()[0] == floor


def test_lr_plot_has_one_stability_line_per_momentum_in_its_series_colour() -> None:
    lrs = [0.1, 0.2, 0.5, 0.8, 1.2, 1.5, 2.0]
    rows = lr_rows(lrs, 0.0, 1.0) + lr_rows(lrs, 0.9, 1.9)
    ax = lr_figure(rows).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    limits = {k: v for k, v in lines.items() if k.startswith("lr limit")}
    assert set(limits) == {"lr limit, momentum 0: 1", "lr limit, momentum 0.9: 1.9"}
    for label, momentum, limit in (("0.0", 0, 1.0), ("0.9", 0.9, 1.9)):
        series = lines[f"optimizer.momentum={label}"]
        stability = limits[f"lr limit, momentum {momentum:g}: {limit:g}"]
        assert list(stability.get_xdata()) == [limit, limit]
        assert stability.get_color() == series.get_color()
    crosses = {tuple(sorted(line.get_xdata())) for line in top_crosses(ax)}
    assert crosses == {(1.2, 1.5, 2.0), (2.0,)}


def test_lr_plot_falls_back_to_the_final_loss_where_the_minimum_is_unknown() -> None:
    rows = lr_rows([0.1, 0.2, 0.8], 0.0, 1.0)
    for row in rows:
        row.excess_loss = None
    ax = lr_figure(rows).axes[0]
    assert ax.get_ylabel() == "final loss"
    (series,) = [line for line in ax.get_lines() if line.get_label() == "final loss"]
    assert list(series.get_ydata()) == pytest.approx([r.final_loss for r in rows])


def test_lr_plot_draws_a_panel_per_problem() -> None:
    rows = lr_rows([0.1, 0.5, 1.2], 0.0, 1.0, "quadratic(a=1)")
    rows += lr_rows([0.1, 0.5, 1.2], 0.0, 0.3, "multivariate(A=[[4,1],[1,6]])")
    axes = lr_figure(rows).axes
    assert [ax.get_title() for ax in axes] == ["quadratic(a=1)", "multivariate(A=[[4,1],[1,6]])"]
    assert [len(top_crosses(ax)[0].get_xdata()) for ax in axes] == [1, 2]


def test_lr_plot_of_a_large_population_thins_its_lines() -> None:
    lrs = [0.001 * k for k in range(1, 1000)]
    rows = [row for _ in range(20) for row in lr_rows(lrs, 0.0, 0.9)]  # 20k rows
    ax = lr_figure(rows).axes[0]
    (series,) = [line for line in ax.get_lines() if line.get_label() == "final excess loss"]
    xs = series.get_xdata()
    assert len(xs) <= MAX_POINTS and list(xs) == sorted(xs)
    assert min(xs) == 0.001 and max(xs) == pytest.approx(0.899)  # the ends survive thinning
    assert len(top_crosses(ax)[0].get_xdata()) == len({lr for lr in lrs if lr >= 0.9})
