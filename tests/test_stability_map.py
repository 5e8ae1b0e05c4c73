"""stability_map.png: the final excess loss over a two-axis sweep, with the rule's boundary.

The figure layer is checked on heavy-ball and Nesterov SGD simulated in numpy over a grid of
(lr, momentum) on f(x) = (x - 3)^2 + 5 (L = 2), whose measured edge must meet the rule book's
boundary (gdlab.rules.lr_limit) within one grid cell at every momentum; the sweep layer on a
real population sweep read back by `collect_jobs`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gdlab.plotting import png_bytes, png_size
from gdlab.rules import lr_limit
from gdlab.sweeps.jobs import JobRow
from gdlab.sweeps.stability_map import (
    STABILITY_MAP,
    Grid,
    RuleSettings,
    cell_edges,
    choose_axes,
    curvature_from_limits,
    draw_stability_map,
    draw_stability_map_columns,
    edge_agreement,
    edge_distances,
    is_geometric,
    measured_edge,
    plan_from_rows,
    plan_stability_map,
    population_curvature,
    rows_to_columns,
    snap,
    stability_map_figure,
)
from gdlab.sweeps.summary import collect_jobs
from tests.conftest import REPO

L = 2.0  # f(x) = (x - 3)^2 + 5
PNG = b"\x89PNG\r\n\x1a\n"


def simulate(lrs, momenta, steps: int = 300, nesterov: bool = False):
    """torch.optim.SGD's momentum (v = m v + g; x -= lr v, or lr (g + m v) with Nesterov) on
    f from x = 0 for every (lr, momentum) at once: flat arrays (lr, momentum, excess loss,
    diverged), diverged meaning not finite, |x| beyond 1e6, or a final loss above the start."""
    lr, m = (a.ravel() for a in np.meshgrid(lrs, momenta))
    x, v = np.zeros_like(lr), np.zeros_like(lr)
    with np.errstate(all="ignore"):
        for _ in range(steps):
            g = L * (x - 3.0)
            v = m * v + g
            x = x - lr * (g + m * v if nesterov else v)
        loss = (x - 3.0) ** 2 + 5.0
    diverged = ~np.isfinite(loss) | (np.abs(x) > 1e6) | (loss > 9.0 + 5.0)
    excess = np.where(diverged, np.nan, np.maximum(loss - 5.0, 0.0))
    return lr, m, excess, diverged


def theory(nesterov: bool = False):
    def boundary(momenta):
        values = [lr_limit(L, momentum=float(b), nesterov=nesterov) for b in np.ravel(momenta)]
        return np.asarray(values, dtype=float)

    return boundary


def colourbar_label(figure) -> str:
    return figure.axes[-1].get_ylabel()


# --------------------------------------------------------------------------- the figure layer


def test_heavy_ball_edge_meets_2_1_plus_beta_over_L_within_one_cell(tmp_path: Path) -> None:
    lrs, momenta = np.linspace(0.05, 2.2, 60), np.linspace(0.0, 0.9, 40)
    lr, m, excess, diverged = simulate(lrs, momenta)
    ys, distance = edge_distances(lr, m, diverged, theory(), excess)
    assert np.allclose(ys, momenta) and np.isfinite(distance).all()  # every momentum compared
    assert distance.max() <= 1.0, (ys[distance.argmax()], distance.max())
    assert edge_agreement(lr, m, diverged, theory(), excess) == pytest.approx(distance.max())
    # the measured edge: the first diverging lr, just past 2(1 + m)/L
    ys, edge = measured_edge(lr, m, diverged)
    step = lrs[1] - lrs[0]
    assert np.all(edge >= 1.0 + ys - step) and np.all(edge <= 1.0 + ys + step)

    figure = stability_map_figure(
        "optimizer.lr", lr, "optimizer.momentum", m, excess, diverged, theory(),
        "quadratic: heavy ball", theory_label="theory: 2(1+β)/L",
    )  # fmt: skip
    ax = figure.axes[0]
    assert ax.get_xscale() == "linear" and "optimizer.lr" in ax.get_xlabel()
    assert "optimizer.momentum" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("theory: 2(1+β)/L; measured edge within") and "diverged" in labels
    assert colourbar_label(figure).startswith("excess loss f − f* (log; 0 drawn at")
    png = png_bytes(figure)
    assert png.startswith(PNG) and png_size(png) == (640, 520) and len(png) > 20_000
    (tmp_path / STABILITY_MAP).write_bytes(png)


def test_nesterov_on_a_log_lr_grid_meets_its_boundary() -> None:
    lrs, momenta = np.geomspace(0.01, 3.0, 50), np.linspace(0.0, 0.9, 30)
    lr, m, excess, diverged = simulate(lrs, momenta, nesterov=True)
    assert edge_agreement(lr, m, diverged, theory(nesterov=True), excess) <= 1.0
    assert edge_agreement(lr, m, diverged, theory(nesterov=False), excess) > 3.0  # the other rule
    figure = stability_map_figure(
        "optimizer.lr", lr, "optimizer.momentum", m, excess, diverged, theory(nesterov=True)
    )
    ax = figure.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    assert ax.get_xlabel() == "learning rate (optimizer.lr), log scale"
    assert ax.get_xlim() == pytest.approx(tuple(cell_edges(lrs, log=True)[[0, -1]]))


def test_grid_cells_edges_and_spacing() -> None:
    assert is_geometric([0.001, 0.01, 0.1, 1.0]) and not is_geometric(np.arange(0.05, 1.5, 0.1))
    assert not is_geometric([0.0, 0.3, 0.6, 0.9]) and not is_geometric([1.0, 2.0])
    assert cell_edges([0.0, 0.3, 0.6], log=False) == pytest.approx([-0.15, 0.15, 0.45, 0.75])
    assert cell_edges([0.01, 0.1, 1.0], log=True) == pytest.approx(
        [10**-2.5, 10**-1.5, 10**-0.5, 10**0.5]
    )
    assert snap([0.30000000000000004])[0] == 0.3
    # two spellings of one value, a duplicate cell (largest excess; diverged if any), a
    # member without coordinates, an empty cell
    x = np.array([0.1, 0.2, 0.30000000000000004, 0.3, 0.1, np.nan])
    y = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    excess = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    diverged = np.array([False, False, True, False, False, False])
    grid = Grid.of(x, y)
    assert grid.shape == (2, 3)
    values, down = grid.cells(excess, diverged)
    assert values[0].tolist() == [1.0, 2.0, 4.0] and down[0].tolist() == [False, False, True]
    assert values[1, 0] == 5.0 and np.isnan(values[1, 1:]).all() and not down[1].any()
    ys, edge = measured_edge(x, y, diverged)
    assert ys.tolist() == [0.0, 1.0] and edge[0] == 0.3 and np.isnan(edge[1])


def test_edge_distances_count_cells() -> None:
    lr = np.tile(np.arange(1.0, 11.0), 3)  # 10 lrs (columns 0 to 9), 3 momenta
    m = np.repeat([0.0, 0.5, 0.8], 10)
    diverged = np.zeros(30, dtype=bool)
    diverged[5:10] = True  # momentum 0: diverged from lr 6 (column 5)
    diverged[10:20] = True  # momentum 0.5: from the first column; momentum 0.8: never
    momenta = [0.0, 0.5, 0.8]
    for boundary, expected in [
        ([5.5, 0.5, 12.0], [0.5, 0.0, 0.0]),  # half a cell; both below; both past the end
        ([3.0, 3.0, 7.0], [3.0, 2.0, 4.0]),  # 3 cells low; 2 cells high; 4 before the end
    ]:
        _, distance = edge_distances(lr, m, diverged, (momenta, boundary))
        assert distance == pytest.approx(expected)
        assert edge_agreement(lr, m, diverged, (momenta, boundary)) == max(expected)


def test_zeros_and_unknowns_are_drawn_and_labelled() -> None:
    x, y = (a.ravel() for a in np.meshgrid(np.arange(5.0), np.arange(4.0)))
    excess = np.zeros(x.size)
    excess[3] = np.nan
    figure = stability_map_figure("a", x, "b", y, excess, np.zeros(x.size, dtype=bool))
    assert colourbar_label(figure) == "excess loss f − f* (log; 0 drawn at 1e-16)"
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["no result (failed, or no member there)"]
    assert figure.axes[0].get_xlabel() == "a" and png_bytes(figure).startswith(PNG)


def test_choose_axes() -> None:
    grid = [str(v) for v in range(16)]
    four = [str(v / 10) for v in range(4)] * 4
    columns = {"optimizer.momentum": four, "optimizer.lr": grid, "objective": ["q"] * 16}
    assert choose_axes(columns) == ("optimizer.lr", "optimizer.momentum", None)
    assert choose_axes({"b.y": grid, "a.x": four}) == ("a.x", "b.y", None)
    assert choose_axes({"a": grid, "b": ["0", "1", "2"] * 5 + ["0"]}) is None  # 3 values
    assert choose_axes({"a": grid, "b": ["x", "y", "z", "w"] * 4}) is None  # not numbers
    assert choose_axes({"a": grid, "b": four, "c": four}) is None  # three keys
    nesterov = ["true", "false"] * 8
    split = {"optimizer.lr": grid, "optimizer.momentum": four, "optimizer.nesterov": nesterov}
    assert choose_axes(split) == ("optimizer.lr", "optimizer.momentum", "optimizer.nesterov")


def test_curvature_is_read_back_from_the_members_lr_limits() -> None:
    momenta = np.array([0.0, 0.3, 0.6, 0.9, 0.5])
    hb = RuleSettings(name="sgd", dampening=0.2, weight_decay=0.5)
    limits = [lr_limit(2.0, momentum=b, dampening=0.2, weight_decay=0.5) for b in momenta]
    assert curvature_from_limits(momenta, limits, hb) == pytest.approx(2.0)
    flags = np.array([False, True, True, False, True])
    limits = [lr_limit(3.0, momentum=b, nesterov=f) for b, f in zip(momenta, flags, strict=True)]
    assert curvature_from_limits(momenta, limits, RuleSettings(), flags) == pytest.approx(3.0)
    assert curvature_from_limits(momenta, limits, RuleSettings()) is None  # they disagree
    assert curvature_from_limits(momenta, [None] * 5, RuleSettings()) is None


def test_only_lr_and_momentum_of_sgd_get_the_theory(tmp_path: Path) -> None:
    lr, m, excess, diverged = simulate(np.linspace(0.1, 2.0, 8), np.linspace(0.0, 0.8, 5), 50)
    status = np.where(diverged, "diverged", "finished")
    limits = [lr_limit(L, momentum=b) for b in m]
    columns = {"optimizer.lr": lr.astype(str), "optimizer.momentum": m.astype(str)}
    plan = plan_stability_map(columns, status, excess, lr_limit=limits)
    assert plan is not None and plan.curvature == pytest.approx(L)
    # another pair of axes: the same map, no theory
    other = {"optimizer.lr": lr, "optimizer.weight_decay": m}
    plan = plan_stability_map(other, status, excess, lr_limit=limits)
    assert plan is not None and plan.panels[0].theory is None and plan.curvature is None
    # another rule, or clipping: no theory
    for fixed in ({"optimizer.name": ["adam"] * lr.size}, {"optimizer.clip_norm": ["1.0"] * 40}):
        plan = plan_stability_map({**columns, **fixed}, status, excess, lr_limit=limits)
        assert plan is not None and plan.panels[0].theory is None
    # f* unknown: the final loss
    plan = plan_stability_map(columns, status, [None] * lr.size, final_loss=excess + 5.0)
    assert plan is not None and plan.value_label == "final loss (f* unknown)" and plan.log
    assert plan.title == "stability map, final loss of 40 runs"
    assert draw_stability_map_columns(tmp_path, columns, status, excess) == tmp_path / STABILITY_MAP


def test_a_map_that_cannot_be_drawn_is_skipped(tmp_path: Path, caplog) -> None:
    rows = [JobRow(f"j{i}", i, [], "finished") for i in range(20)]
    assert draw_stability_map(tmp_path, rows) is None  # nothing swept
    for i, row in enumerate(rows):
        row.values = {"optimizer.lr": str(i % 5), "optimizer.momentum": str(i // 5)}
        row.excess_loss = "not a number"  # type: ignore[assignment]
    assert draw_stability_map(tmp_path, rows) is None
    assert "skipped stability_map.png" in caplog.text
    assert not (tmp_path / STABILITY_MAP).exists()


def test_importing_it_loads_no_numpy_matplotlib_or_torch() -> None:
    code = (
        "import sys, gdlab.sweeps.stability_map\n"
        "print([m for m in ('numpy', 'matplotlib', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stderr


# --------------------------------------------------------------------------- a real sweep

SWEEP = (
    "hydra/sweeper=population",
    "objective=quadratic",  # a = 1: L = 2
    "optimizer.lr=range(0.05,1.5,0.1)",
    "optimizer.momentum=0,0.3,0.6,0.9",
    "trainer.steps=100",
    "logger.tensorboard=false",
    "logger.plots=false",  # the sweep's own pictures: not what is tested here
)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    """Two population sweeps run side by side: heavy ball over (lr, momentum), and the same
    with optimizer.nesterov=false,true (Nesterov with momentum 0 is refused: exit code 1)."""
    extra = {"heavy_ball": (), "nesterov": ("optimizer.nesterov=false,true",)}
    procs = {}
    for name, more in extra.items():
        cwd = tmp_path_factory.mktemp(name)
        command = [sys.executable, "-m", "gdlab", "-m", *SWEEP, *more]
        procs[name] = (cwd, subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True))  # fmt: skip
    found = {}
    for name, (cwd, proc) in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == (0 if name == "heavy_ball" else 1), err
        (found[name],) = (cwd / "outputs" / "multirun").glob("*/*")
    return found


def arrays(rows: list[JobRow]):
    lr = np.array([float(r.values["optimizer.lr"]) for r in rows])
    m = np.array([float(r.values["optimizer.momentum"]) for r in rows])
    diverged = np.array([r.status == "diverged" for r in rows])
    excess = np.array([np.nan if r.excess_loss is None else r.excess_loss for r in rows])
    return lr, m, excess, diverged


def test_a_population_sweep_over_lr_and_momentum_draws_its_map(sweeps) -> None:
    sweep_dir = sweeps["heavy_ball"]
    rows = collect_jobs(sweep_dir)
    assert len(rows) == 60
    path = draw_stability_map(sweep_dir, rows)
    assert path == sweep_dir / STABILITY_MAP
    png = path.read_bytes()
    assert png.startswith(PNG) and png_size(png) == (640, 520) and len(png) > 10_000
    # what the theory line was drawn from: L read back from the members' lr limits, and
    # population.json's curvature
    lr, m, excess, diverged = arrays(rows)
    limits = [r.lr_limit for r in rows]
    assert curvature_from_limits(m, limits, RuleSettings(name="sgd")) == pytest.approx(L)
    assert population_curvature(sweep_dir / rows[0].job.split("#")[0]) == L
    assert diverged.sum() == 7  # lr > 1 at momentum 0, lr > 1.3 at momentum 0.3
    assert edge_agreement(lr, m, diverged, theory(), excess) <= 1.0
    plan = plan_from_rows(sweep_dir, rows)
    assert plan is not None and (plan.x_key, plan.y_key) == ("optimizer.lr", "optimizer.momentum")
    assert plan.curvature == pytest.approx(L) and len(plan.panels) == 1
    (panel,) = plan.panels
    assert panel.theory_label == "theory: 2(1+β)/L, L = 2"
    assert panel.theory(np.array([0.0, 0.5])) == pytest.approx([1.0, 1.5])
    assert plan.title == "quadratic: stability map, final excess loss of 60 runs"
    # without the lr limits (a record that lacks them): population.json's curvature
    plan = plan_stability_map(
        rows_to_columns(rows),
        [r.status for r in rows],
        excess,
        job_dir=sweep_dir / rows[0].job.split("#")[0],
    )
    assert plan is not None and plan.curvature == L


def test_a_sweep_of_nesterov_too_draws_a_panel_per_rule(sweeps) -> None:
    sweep_dir = sweeps["nesterov"]
    rows = collect_jobs(sweep_dir)
    assert len(rows) == 120
    assert choose_axes(rows_to_columns(rows))[2] == "optimizer.nesterov"
    path = draw_stability_map(sweep_dir, rows)
    assert path is not None and png_size(path.read_bytes()) == (1100, 520)
    plan = plan_from_rows(sweep_dir, rows)
    assert plan is not None and [p.title for p in plan.panels] == ["heavy ball", "Nesterov"]
    labels = [p.theory_label for p in plan.panels]
    assert labels == ["theory: 2(1+β)/L, L = 2", "theory: 2(1+β)/((1+2β)L), L = 2"]
    for flag in (False, True):
        mine = [r for r in rows if r.values["optimizer.nesterov"].lower() == str(flag).lower()]
        lr, m, excess, diverged = arrays(mine)
        assert edge_agreement(lr, m, diverged, theory(nesterov=flag), excess) <= 1.0
        # a sweep with nesterov fixed for all: one panel, that rule's boundary
        (panel,) = plan_from_rows(sweep_dir, mine).panels
        assert panel.theory_label == labels[flag] and panel.title == ""
        if flag:  # Nesterov with momentum 0 is refused: those cells are blank, not diverged
            assert set(m[np.isnan(excess) & ~diverged].tolist()) == {0.0}
