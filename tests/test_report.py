"""`gdlab-report DIR`: the same summary from disk, any time later, also for interrupted sweeps."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from gdlab.report import main
from gdlab.sweeps.callback import SweepSummaryCallback
from gdlab.sweeps.summary import collect_jobs
from tests.test_sweep import make_job


@pytest.fixture
def lr_sweep(tmp_path: Path) -> Path:
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    for num, lr in enumerate(("0.01", "0.1", "0.5", "1.2")):
        make_job(sweep_dir, [f"optimizer.lr={lr}", "logger.plots=false", "trainer.steps=40"], num)
    return sweep_dir


def run_report(*argv: str) -> int:
    """`gdlab-report ARGV` in this process: its exit code, whether `main` returns or exits."""
    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code
    return code or 0


def read_table(sweep_dir: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((sweep_dir / "summary.csv").read_text())))


def test_report_rebuilds_what_the_callback_wrote(lr_sweep: Path, capsys) -> None:
    from omegaconf import OmegaConf

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(lr_sweep)}}})
    SweepSummaryCallback().on_multirun_end(config)
    written = {name: (lr_sweep / name).read_text() for name in ("summary.csv", "summary.md")}
    for name in written:
        (lr_sweep / name).unlink()
    (lr_sweep / "lr.png").unlink()
    capsys.readouterr()
    assert run_report(str(lr_sweep), "--top", "3") == 0
    out = capsys.readouterr().out
    assert {name: (lr_sweep / name).read_text() for name in written} == written
    assert (lr_sweep / "lr.png").read_bytes().startswith(b"\x89PNG")
    assert "4 runs:" in out and "best: optimizer.lr=0.5" in out
    assert "| … 1 more in summary.md |" in out


def test_report_of_an_interrupted_sweep(lr_sweep: Path, capsys) -> None:
    # one job killed after it logged (no metrics.json), one killed before it logged anything
    killed = next(p for p in lr_sweep.iterdir() if "optimizer.lr=0.1," in p.name)
    (killed / "metrics.json").unlink()
    make_job(lr_sweep, ["optimizer.lr=0.3", "logger.plots=false", "trainer.steps=40"], 4, False)
    assert run_report(str(lr_sweep), "--no-plot") == 0
    rows = {r.job: r for r in collect_jobs(lr_sweep)}
    assert len(rows) == 5
    lost = rows[killed.name]
    assert lost.status == "interrupted" and lost.rank is None
    assert (lost.steps, lost.note) == (40, "last logged point")  # read back from its events
    assert lost.final_loss == pytest.approx(5.0012, rel=1e-3)
    never = next(r for r in rows.values() if "optimizer.lr=0.3," in r.job)
    assert (never.status, never.steps, never.final_loss) == ("interrupted", None, None)
    table = read_table(lr_sweep)
    assert [r["status"] for r in table][-2:] == ["interrupted", "interrupted"]
    assert table[-2]["error"] == "last logged point"
    assert not (lr_sweep / "lr.png").exists()
    assert "interrupted *" in (lr_sweep / "summary.md").read_text()


def test_no_lr_plot_when_lr_does_not_vary(tmp_path: Path) -> None:
    for num, seed in enumerate((0, 1)):
        make_job(tmp_path, ["experiment=linear_regression", f"trainer.seed={seed}"], num)
    assert run_report(str(tmp_path)) == 0
    assert len(read_table(tmp_path)) == 2
    assert not (tmp_path / "lr.png").exists()


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_report_refuses_a_directory_without_jobs(tmp_path: Path, capsys, make: str) -> None:
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    assert run_report(str(target)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gdlab-report: error: {target}")


def test_report_refuses_a_single_run_directory(run_config) -> None:
    from gdlab.errors import GdlabError
    from gdlab.report import report

    _, run_dir = run_config("trainer.steps=5")
    (run_dir / ".hydra").mkdir(exist_ok=True)  # as the CLI lays out a run
    with pytest.raises(GdlabError, match="single run's directory"):
        report(run_dir)
    assert not (run_dir / "summary.csv").exists()
