"""gdlab from Python (issue 13): `gdlab.run`, `load`, `sweep`, `load_sweep` run the command in
this process, read its directory back, and leave the interpreter as they found it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from matplotlib.figure import Figure

import gdlab
import gdlab.experiment
from gdlab import cli

REPO = Path(__file__).resolve().parents[1]
QUICK = ("trainer.steps=20", "logger.plots=false")


@pytest.fixture(autouse=True)
def no_full_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


def guest_state() -> tuple:
    """What a call must leave as it found it."""
    return (
        os.getcwd(),
        torch.get_num_threads(),
        *(tuple(logging.getLogger(n).handlers) for n in ("", "gdlab", "hydra")),
        logging.getLogger().level,
        GlobalHydra.instance().is_initialized(),
        HydraConfig.initialized(),
        os.environ.get("HYDRA_FULL_ERROR"),
        list(sys.argv),
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
    )


def test_run_reads_back_what_the_command_wrote(tmp_path: Path) -> None:
    r = gdlab.run("objective=quadratic", "optimizer.lr=0.1", "trainer.steps=20", dir=tmp_path / "q")
    assert r.dir == tmp_path / "q" and r.dir.is_absolute()
    assert r.status == "finished"
    assert r.metrics == json.loads((tmp_path / "q" / "metrics.json").read_text())
    assert r.metrics["steps"] == 20 and r.metrics["lr"] == 0.1
    assert set(r.params) == {"x"} and r.params["x"].dtype == torch.float32
    assert r.params["x"].item() == pytest.approx(r.metrics["params"]["x"])
    loss = r.history["train/loss"]
    assert [step for step, _ in loss] == list(range(21))  # every step up to 1,000 steps
    assert loss[0] == (0, 14.0) and loss[-1][1] == pytest.approx(r.metrics["final_loss"])
    assert {"train/grad_norm", "train/lr"} <= set(r.history)
    frame = r.to_pandas()
    assert frame.index.name == "step" and len(frame) == 21
    assert frame["train/loss"].iloc[-1] == pytest.approx(r.metrics["final_loss"])
    figures = r.plot()
    assert [f.get_label() for f in figures] == ["loss", "landscape"]
    assert all(isinstance(f, Figure) for f in figures)
    assert [f.get_label() for f in r.plot("landscape")] == ["landscape"]
    with pytest.raises(gdlab.GdlabError, match=r"no plot fit in .*; plots: landscape, loss"):
        r.plot("fit")
    assert r.overrides == ["objective=quadratic", "optimizer.lr=0.1", "trainer.steps=20"]
    assert r.config.optimizer.lr == 0.1

    again = gdlab.load(tmp_path / "q")
    assert again.dir == r.dir and again.metrics == r.metrics
    assert again.history == r.history and torch.equal(again.params["x"], r.params["x"])


def test_a_diverged_run_is_a_result_and_plots_without_files(tmp_path: Path) -> None:
    r = gdlab.run("optimizer.lr=1.5", *QUICK, dir=tmp_path / "d")
    assert r.status == "diverged" and r.metrics["lr_limit"] == 1.0
    assert not list(r.dir.glob("*.png"))
    (figure,) = r.plot()  # no plot files: the loss curve, drawn from the history
    assert figure.get_label() == "loss"


def test_a_session_of_calls_leaves_the_interpreter_healthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # so that the joblib job's own limit (cores // 1) differs
    try:
        before = guest_state()
        first = gdlab.run("objective=quadratic", *QUICK)
        second = gdlab.run("experiment=exercise_2d", "logger.plots=false")  # the same second
        third = gdlab.run("experiment=exercise_2d", "logger.plots=false")
        assert guest_state() == before
        assert (first.status, second.status, third.status) == ("finished", "converged", "converged")
        assert len({first.dir, second.dir, third.dir}) == 3
        for r in (first, second, third):  # fresh directories under outputs/, as the CLI's
            assert r.dir.parent.parent == tmp_path / "outputs"
        assert second.metrics["objective"] == "multivariate" and set(second.params) == {"v"}

        # joblib runs one job at a time in this process, limiting torch to cores // 1 threads
        s = gdlab.sweep(
            "optimizer.lr=0.1,0.5", *QUICK, "hydra.launcher.n_jobs=1", launcher="joblib"
        )
        assert guest_state() == before  # torch's thread count too, limited in the job
        assert s.dir.parent.parent == tmp_path / "outputs" / "multirun"
        assert sorted(r["optimizer.lr"] for r in s.rows) == [0.1, 0.5]
        assert "torch uses" in (s.runs[0].dir / "gdlab.log").read_text()

        capsys.readouterr()
        assert cli.main(["optimizer.lr=abc"]) == 2
        line = capsys.readouterr().err.strip()
        with pytest.raises(gdlab.GdlabError) as raised:
            gdlab.run("optimizer.lr=abc")
        assert line == f"gdlab: error: {raised.value}"
        assert "\n" not in str(raised.value)
        assert guest_state() == before
    finally:
        torch.set_num_threads(threads)


def test_an_interrupted_run_raises_keyboard_interrupt_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class CtrlC:  # presses Ctrl-C when step 5 is logged
        def start(self, info: object) -> None: ...
        def log(self, record: object) -> None:
            if record.step == 5:
                signal.raise_signal(signal.SIGINT)

        def finish(self, result: object) -> None: ...
        def close(self) -> None: ...

    real = gdlab.experiment.make_sinks
    monkeypatch.setattr(gdlab.experiment, "make_sinks", lambda *a, **k: [*real(*a, **k), CtrlC()])
    before = guest_state()
    with pytest.raises(KeyboardInterrupt, match=r"trainer\.resume="):
        gdlab.run(*QUICK, dir=tmp_path / "i")
    assert guest_state() == before
    monkeypatch.setattr(gdlab.experiment, "make_sinks", real)

    r = gdlab.load(tmp_path / "i")
    assert r.status == "interrupted" and 5 <= r.metrics["steps"] < 20
    assert set(r.params) == {"x"} and r.history["train/loss"]

    # killed before it wrote metrics.json: the checkpoint's parameters, the logged points
    shutil.copytree(tmp_path / "i", tmp_path / "killed")
    (tmp_path / "killed" / "metrics.json").unlink()
    killed = gdlab.load(tmp_path / "killed")
    assert killed.status == "interrupted" and killed.metrics == {}
    assert torch.equal(killed.params["x"], r.params["x"])
    assert killed.history == r.history

    resumed = gdlab.run(f"trainer.resume={tmp_path / 'i'}")
    assert resumed.dir == r.dir and resumed.status == "finished"
    assert resumed.metrics["steps"] == 20
    assert [s for s, _ in resumed.history["train/loss"]] == list(range(21))


def test_population_sweep_rows_carry_problems_ranks_and_stability_limits(tmp_path: Path) -> None:
    s = gdlab.sweep(
        "objective=quadratic,multivariate",
        "optimizer.lr=range(0.1,1.55,0.1)",
        *QUICK,
        population=True,
        dir=tmp_path / "p",
    )
    assert len(s.rows) == 2 * 15 and len(s.runs) == 30
    assert {r["problem"] for r in s.rows} == {"quadratic", "multivariate"}
    for problem in ("quadratic", "multivariate"):
        rows = [r for r in s.rows if r["problem"] == problem]
        ranks = [r["rank"] for r in rows if r["rank"] is not None]
        assert ranks == list(range(1, len(ranks) + 1))  # ranked per problem, best first
        assert len({r["lr_limit"] for r in rows}) == 1  # 2/L of the problem's curvature
        limit = rows[0]["lr_limit"]
        assert all(r["status"] == "diverged" for r in rows if r["optimizer.lr"] > limit + 1e-9)
    assert s.rows[0]["lr_limit"] == pytest.approx(1.0)  # quadratic: f'' = 2
    header = (s.dir / "summary.csv").read_text().splitlines()[0].split(",")
    assert list(s.rows[0]) == header
    assert isinstance(s.best, dict) and set(s.best) == {"quadratic", "multivariate"}
    assert all(best["rank"] == 1 for best in s.best.values())
    member = s.runs[0]
    assert isinstance(member, gdlab.api.Member) and member.status == s.rows[0]["status"]
    assert member.metrics["final_loss"] == pytest.approx(s.rows[0]["final_loss"])
    assert set(member.params) == {"x"}
    assert s.to_pandas().shape[0] == 30
    assert [f.get_label() for f in s.plot()] == ["lr"]

    again = gdlab.load_sweep(tmp_path / "p")
    assert again.rows == s.rows

    one = gdlab.sweep("optimizer.lr=range(0.01,1.0,0.01)", population=True, dir=tmp_path / "q")
    assert len(one.rows) == 99 and one.problems == ["quadratic"]
    assert one.best == one.rows[0] and one.best["rank"] == 1  # one problem: the row itself


def test_a_plain_sweep_of_one_problem(tmp_path: Path) -> None:
    s = gdlab.sweep("objective=quadratic", "optimizer.lr=0.01,0.1,0.5", *QUICK, dir=tmp_path / "a")
    assert [r["optimizer.lr"] for r in s.rows] == [0.5, 0.1, 0.01]
    assert s.best == s.rows[0] and s.best["rank"] == 1 and s.best["status"] == "converged"
    assert [r.dir.name for r in s.runs] == [r["job"] for r in s.rows]
    assert s.runs[0].history["train/loss"]
    frame = s.to_pandas()
    assert list(frame["rank"]) == [1, 2, 3]
    assert [f.get_label() for f in s.plot()] == ["lr"]  # drawn from the rows: no plot files
    assert gdlab.load_sweep(s.dir).rows == s.rows


def test_mistakes_raise_gdlab_error_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(gdlab.GdlabError, match=r"^objective=nope is not an option; available:"):
        gdlab.run("objective=nope", dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written, as on the command line
    with pytest.raises(gdlab.GdlabError, match=r"objective\.a=0 makes the function flat"):
        gdlab.run("objective.a=0", *QUICK, dir=tmp_path / "flat")  # found while building
    with pytest.raises(gdlab.GdlabError, match="flags"):
        gdlab.run("-m", "optimizer.lr=0.1,0.2")
    with pytest.raises(gdlab.GdlabError, match="hydra/launcher=nope is not an option"):
        gdlab.sweep("optimizer.lr=0.1", launcher="nope", dir=tmp_path / "nope")
    with pytest.raises(gdlab.GdlabError, match="not both"):
        gdlab.run(f"hydra.run.dir={tmp_path / 'a'}", dir=tmp_path / "b")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(gdlab.GdlabError, match="is not empty"):
        gdlab.run(*QUICK, dir=tmp_path / "used")
    with pytest.raises(gdlab.GdlabError, match="not a gdlab run directory"):
        gdlab.load(tmp_path / "used")
    with pytest.raises(gdlab.GdlabError, match="no such run directory"):
        gdlab.load(tmp_path / "missing")
    with pytest.raises(gdlab.GdlabError, match="no job directories"):
        gdlab.load_sweep(tmp_path / "used")
    with pytest.raises(TypeError):
        gdlab.run(0.1)  # type: ignore[arg-type]

    run = gdlab.run(*QUICK, dir=tmp_path / "ok")
    with pytest.raises(gdlab.GdlabError, match="single run's directory"):
        gdlab.load_sweep(run.dir)


def test_the_api_is_loaded_on_first_use() -> None:
    code = (
        "import sys, gdlab\n"
        "assert 'gdlab.api' not in sys.modules and 'torch' not in sys.modules\n"
        "import gdlab.sweeps.jobs\n"  # the subpackage is gdlab.sweeps: gdlab.sweep is the API
        "assert 'torch' not in sys.modules\n"
        "assert callable(gdlab.sweep) and gdlab.run.__module__ == 'gdlab.api'\n"
        "from gdlab import Run, Sweep, load, load_sweep\n"
        "assert {'run', 'sweep', 'load', 'load_sweep', 'Run', 'Sweep'} <= set(dir(gdlab))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_the_tour_notebook_runs_top_to_bottom(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(REPO / "examples" / "tour.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")
    # kernel "python3" is ipykernel's; jupyter_client starts it with this interpreter
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # its outputs/ go here
    )
    client.execute()  # raises CellExecutionError on any error
    images = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 6  # loss and landscape, 2-D, fit, lr with its limit, the race
    assert (tmp_path / "outputs").is_dir()
