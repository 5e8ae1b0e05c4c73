"""Sweep layout, failure isolation and the sweep summary (issue 3, parts 1, 3 and 6)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gdlab.errors import GdlabError
from gdlab.events import RunResult
from gdlab.experiment import run_experiment
from gdlab.sweeps.callback import SweepSummaryCallback, last_sweep_failed
from gdlab.sweeps.failures import objective_value, record_failure
from gdlab.sweeps.hparams import override_hparams
from gdlab.sweeps.naming import MAX_DIRNAME, job_dirname
from gdlab.sweeps.summary import collect_jobs, write_summary
from tests.conftest import compose_config, read_metrics, run_cli, run_sweep


def make_job(sweep_dir: Path, overrides: list[str], num: int, run: bool = True) -> Path:
    """A job directory as a multirun leaves it: .hydra/ files, and the run's own files."""
    job_dir = sweep_dir / job_dirname(",".join(sorted(overrides)), sweep_dir, num)
    cfg = compose_config(["trainer.progress=false", *overrides])
    hydra_dir = job_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}), hydra_dir / "hydra.yaml")
    if run:
        try:
            run_experiment(cfg, job_dir, overrides=overrides)
        except GdlabError as err:
            record_failure(job_dir, err)
    return job_dir


@pytest.fixture
def small_sweep(tmp_path: Path) -> Path:
    """Five jobs: three that finish or converge, one that diverges, one that fails."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    jobs = [
        ["optimizer.lr=0.01", "logger.plots=false"],
        ["optimizer.lr=0.1", "logger.plots=false"],
        ["optimizer.lr=0.5", "logger.plots=false"],
        ["optimizer.lr=1.5", "objective=multivariate", "logger.plots=false"],  # diverges
        ["optimizer.lr=0.2", "objective.a=0", "logger.plots=false"],  # fails at build
    ]
    for num, overrides in enumerate(jobs):
        make_job(sweep_dir, overrides, num)
    return sweep_dir


# --------------------------------------------------------------------------- job directory names


def test_job_dirname_is_the_override_dirname_when_it_is_usable() -> None:
    assert job_dirname("objective=quadratic,optimizer.lr=0.1") == (
        "objective=quadratic,optimizer.lr=0.1"
    )
    assert job_dirname("") == "defaults"
    assert job_dirname("objective.path=/tmp/x") == "objective.path=_tmp_x"
    # Hydra's float range() and Optuna's samples make long decimals; names keep 6 digits
    assert job_dirname("optimizer.lr=0.15000000000000002,trainer.steps=10") == (
        "optimizer.lr=0.15,trainer.steps=10"
    )
    assert job_dirname("optimizer.momentum=0.6135994074133233") == "optimizer.momentum=0.613599"
    assert job_dirname("optimizer.lr=0.123456789") == "optimizer.lr=0.123456789"  # a user's own


def test_long_job_dirnames_are_shortened_and_stay_distinct() -> None:
    a = job_dirname("objective.A=" + "[1.0, 2.0]," * 40)
    b = job_dirname("objective.A=" + "[1.0, 2.0]," * 41)
    assert a != b
    assert len(a.encode()) <= MAX_DIRNAME and len(b.encode()) <= MAX_DIRNAME
    assert a.startswith("objective.A=[1.0, 2.0]")


def test_a_name_taken_by_another_job_gets_the_job_number(tmp_path: Path) -> None:
    first = job_dirname("optimizer.lr=0.1", tmp_path, 0)
    (tmp_path / first / ".hydra").mkdir()
    OmegaConf.save(
        OmegaConf.create({"hydra": {"job": {"num": 0}}}), tmp_path / first / ".hydra/hydra.yaml"
    )
    second = job_dirname("optimizer.lr=0.1", tmp_path, 1)
    assert (first, second) == ("optimizer.lr=0.1", "optimizer.lr=0.1-job1")
    assert job_dirname("optimizer.lr=0.1", tmp_path, 0) == first  # a requeued job keeps its own


# --------------------------------------------------------------------------- hparams and values


def test_override_hparams_reads_composed_values() -> None:
    overrides = ["optimizer.lr=1e-1", "objective=multivariate", "objective.x0=[1,2]"]
    cfg = compose_config(overrides)
    hparams = override_hparams(cfg, overrides)
    assert hparams == {"optimizer.lr": 0.1, "objective": "multivariate", "objective.x0": "[1, 2]"}


def test_objective_value_is_the_score_and_infinite_unless_the_run_finished() -> None:
    def result(status: str, score: float) -> RunResult:
        return RunResult(status, 3, 5.0, 0.0, {}, 0.1, score=score)

    assert objective_value(result("converged", 0.25)) == 0.25
    assert objective_value(result("diverged", 0.25)) == math.inf
    assert objective_value(result("finished", math.nan)) == math.inf


def test_record_failure_writes_a_failed_metrics_json(tmp_path: Path) -> None:
    record_failure(tmp_path, GdlabError("objective.a=0 makes the function flat\nmore"))
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "failed"
    assert metrics["error"] == "GdlabError: objective.a=0 makes the function flat"
    assert metrics["steps"] is None and metrics["final_loss"] is None


# --------------------------------------------------------------------------- the summary


def test_summary_ranks_finished_jobs_and_never_the_others(small_sweep: Path) -> None:
    rows = collect_jobs(small_sweep)
    assert len(rows) == 5
    assert [r.status for r in rows] == ["converged", "finished", "finished", "diverged", "failed"]
    assert [r.rank for r in rows] == [1, 2, 3, None, None]
    # best first by excess loss: lr 0.5 reaches 5 in one step, lr 0.01 is still far away
    assert [r.lr for r in rows[:3]] == [0.5, 0.1, 0.01]
    excess = [r.excess_loss for r in rows[:3]]
    assert excess == sorted(excess)
    assert rows[4].error.startswith("GdlabError: objective.a=0")


def test_summary_files_hold_one_row_per_job(small_sweep: Path) -> None:
    summary = write_summary(small_sweep, plot=False)
    table = list(csv.DictReader(io.StringIO(summary.csv_path.read_text())))
    assert [row["job"] for row in table] == [r.job for r in summary.rows]
    assert {"rank", "overrides", "status", "steps", "final_loss", "wall_time_s"} <= set(table[0])
    assert table[0]["optimizer.lr"] == "0.5" and table[0]["rank"] == "1"
    for row in table:
        metrics = read_metrics(small_sweep / row["job"])
        assert row["status"] == metrics["status"]
        if metrics["final_loss"] is not None:
            assert float(row["final_loss"]) == metrics["final_loss"]
    assert table[-1]["status"] == "failed" and table[-1]["rank"] == ""
    md = summary.md_path.read_text()
    assert md.count("\n| ") == 6  # header + five jobs
    assert "best of quadratic: optimizer.lr=0.5" in md  # three problems, each ranked alone
    assert "best of multivariate: none ranked" in md
    assert "objective.a=0" in md and "Why jobs did not finish" in md
    assert summary.plot_path is None and not (small_sweep / "lr.png").exists()


def test_callback_writes_the_summary_and_reports_failures(small_sweep: Path, capsys) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(small_sweep)}}, "logger": {}})
    config.logger.plots = True
    SweepSummaryCallback(top=2).on_multirun_end(config)
    out, err = capsys.readouterr()
    assert "5 runs: 1 converged, 1 diverged, 1 failed, 2 finished; best of quadratic: " in out
    assert "best of quadratic: optimizer.lr=0.5 (excess loss 0)" in out
    assert out.count("\n| ") == 4  # header, two rows, and the "more" line
    assert "1 job(s) failed" in err
    assert last_sweep_failed()
    assert (small_sweep / "summary.csv").exists() and (small_sweep / "lr.png").exists()


def test_a_sweep_of_results_only_is_not_failed(tmp_path: Path) -> None:
    make_job(tmp_path, ["experiment=saddle", "logger.plots=false"], 0)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    SweepSummaryCallback().on_multirun_end(config)
    assert [r.status for r in collect_jobs(tmp_path)] == ["diverged"]
    assert not last_sweep_failed()  # diverged is a result, not a failure


# --------------------------------------------------------------------------- the real command


@pytest.mark.slow
def test_multirun_layout_summary_and_console(tmp_path: Path) -> None:
    proc, sweep_dir = run_sweep(
        "optimizer.lr=0.01,0.1,0.5,1.1",
        "objective=quadratic,multivariate",
        "trainer.steps=40",
        cwd=tmp_path,
    )
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    expected = sorted(
        f"objective={o},optimizer.lr={lr},trainer.steps=40"
        for o in ("quadratic", "multivariate")
        for lr in ("0.01", "0.1", "0.5", "1.1")
    )
    assert jobs == expected
    for name in jobs:  # each a complete run directory
        job = sweep_dir / name
        assert (job / ".hydra" / "config.yaml").exists() and (job / "gdlab.log").exists()
        assert list(job.glob("events.out.tfevents.*")) and (job / "loss.png").exists()
        assert read_metrics(job)["status"] in {"finished", "converged", "diverged"}
    table = list(csv.DictReader(io.StringIO((sweep_dir / "summary.csv").read_text())))
    assert len(table) == 8 and table[0]["rank"] == "1"
    assert all(r["status"] != "diverged" for r in table if r["rank"])
    # lr 0.5 on (x - 3)^2 + 5 is a Newton step: the minimum after one update
    best = table[0]
    assert (best["objective"], best["optimizer.lr"], best["status"]) == (
        "quadratic",
        "0.5",
        "converged",
    )
    assert "best of quadratic: optimizer.lr=0.5" in proc.stdout  # ranked per problem
    assert "best of multivariate: " in proc.stdout
    assert f"gdlab: sweep {Path('outputs/multirun')}" in proc.stdout
    assert "| rank | objective | optimizer.lr | status" in proc.stdout
    assert (sweep_dir / "summary.md").exists() and (sweep_dir / "lr.png").exists()
    # gdlab-report rebuilds exactly the same table
    before = (sweep_dir / "summary.csv").read_text()
    (sweep_dir / "summary.csv").unlink()
    report = run_cli_report(str(sweep_dir))
    assert report.returncode == 0, report.stderr
    assert (sweep_dir / "summary.csv").read_text() == before


def run_cli_report(*args: str):
    import subprocess
    import sys

    script = Path(sys.executable).with_name("gdlab-report")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_sets_the_exit_code(tmp_path: Path) -> None:
    proc, sweep_dir = run_sweep(
        "objective.a=0,1", "optimizer.lr=0.1,0.5", "logger.plots=false", cwd=tmp_path, expect=1
    )
    rows = {r.job: r for r in collect_jobs(sweep_dir)}
    assert len(rows) == 4
    failed = [r for r in rows.values() if r.status == "failed"]
    assert len(failed) == 2 and all("objective.a=0" in r.job for r in failed)
    assert all("makes the function flat" in r.error for r in failed)
    assert all(r.rank for r in rows.values() if r.status != "failed")
    assert "2 job(s) failed" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr  # a user mistake stays one line
    assert "makes the function flat" in (sweep_dir / "summary.md").read_text()


@pytest.mark.slow
def test_diverged_jobs_leave_the_exit_code_zero(tmp_path: Path) -> None:
    proc, sweep_dir = run_sweep(
        "experiment=saddle", "optimizer.lr=0.1,0.2", "logger.plots=false", cwd=tmp_path
    )
    assert [r.status for r in collect_jobs(sweep_dir)] == ["diverged", "diverged"]
    assert "none ranked" in proc.stdout


@pytest.mark.slow
def test_the_same_overrides_twice_get_two_directories(tmp_path: Path) -> None:
    _proc, sweep_dir = run_sweep("optimizer.lr=0.1,0.1", "trainer.steps=5", cwd=tmp_path)
    names = sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())  # the jobs
    assert names == ["optimizer.lr=0.1,trainer.steps=5", "optimizer.lr=0.1,trainer.steps=5-job1"]
    for name in names:
        metrics = json.loads((sweep_dir / name / "metrics.json").read_text())
        assert metrics["status"] == "finished"
        assert len(list((sweep_dir / name).glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_single_run_errors_keep_their_one_line_and_exit_code_two(tmp_path: Path) -> None:
    proc = run_cli("objective.a=0", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gdlab: error: objective.a=0 makes the function flat; use a non-zero a"
    ]
