"""Parallel (joblib) and cluster (submitit) launchers, the Optuna search, torch thread limits."""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gdlab.sweeps import collect_jobs
from gdlab.threads import joblib_workers, threads_per_job, usable_cpus
from tests.conftest import read_metrics, run_cli, run_sweep

JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
SUBMITIT = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}


@pytest.mark.parametrize(
    ("n_jobs", "cpus", "threads"),
    [(2, 16, 8), (4, 2, 1), (-1, 16, 1), (-2, 16, 1), (1, 16, 16), (3, 8, 2), (None, 8, 8)],
)
def test_joblib_jobs_share_the_cores(n_jobs, cpus, threads) -> None:
    assert threads_per_job({**JOBLIB, "n_jobs": n_jobs}, cpus) == threads


def test_other_launchers_keep_torch_defaults_except_under_slurm() -> None:
    basic = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
    assert threads_per_job(basic, 16) is None
    assert threads_per_job(None, 16) is None
    assert threads_per_job(SUBMITIT, 16, env={}) is None
    assert threads_per_job(SUBMITIT, 16, env={"SLURM_CPUS_PER_TASK": "4"}) == 4
    assert joblib_workers(-1, 8) == 8 and joblib_workers(-3, 8) == 6


def check_sweep(sweep_dir: Path, n_jobs: int, steps: int) -> list[dict]:
    """Every job's event files and metrics intact, and a summary row for each."""
    job_dirs = sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert len(job_dirs) == n_jobs
    for job in job_dirs:
        metrics = read_metrics(job)
        assert metrics["status"] in {"finished", "converged"}
        events = EventAccumulator(str(job), size_guidance={"scalars": 0})
        events.Reload()
        points = events.Scalars("train/loss")
        assert [p.step for p in points] == list(range(metrics["steps"] + 1))
        assert points[-1].value == pytest.approx(metrics["final_loss"])
        assert events.Scalars("train_result/loss")[-1].value == pytest.approx(metrics["final_loss"])
    table = list(csv.DictReader(io.StringIO((sweep_dir / "summary.csv").read_text())))
    assert sorted(r["job"] for r in table) == [p.name for p in job_dirs]
    assert [r["rank"] for r in table] == [str(i) for i in range(1, n_jobs + 1)]
    losses = [float(r["excess_loss"]) for r in table]
    assert losses == sorted(losses)
    assert all(int(r["steps"]) <= steps for r in table)
    return table


def without_wall_times(table: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if "wall" not in k} for row in table]


@pytest.mark.slow
def test_joblib_sweep_of_four_jobs_two_at_a_time(tmp_path: Path) -> None:
    """gdlab's joblib launcher: the basic launcher's results, one thread line per sweep, each
    job's lines marked with its number, and a prompt exit (loky's idle workers must not keep
    the process waiting: they did once, for their 300 s timeout)."""
    sweep = ("optimizer.lr=0.02,0.1,0.3,0.5", "trainer.steps=30")
    proc, sweep_dir = run_sweep(
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *sweep, cwd=tmp_path, timeout=120
    )
    table = check_sweep(sweep_dir, 4, 30)
    assert table[0]["optimizer.lr"] == "0.5"
    expected = max(1, usable_cpus() // 2)
    for job in sweep_dir.iterdir():
        if (job / "gdlab.log").exists():
            log = (job / "gdlab.log").read_text()
            match = re.search(r"torch uses (\d+) thread", log)
            assert match and int(match.group(1)) == expected
            assert (job / "loss.png").exists()
    assert "| rank | optimizer.lr |" in proc.stdout
    lines = proc.stdout.splitlines()
    assert [line for line in lines if "thread" in line] == [
        f"gdlab: joblib runs 2 jobs at once on {usable_cpus()} core"
        f"{'' if usable_cpus() == 1 else 's'}: torch uses {expected} thread"
        f"{'' if expected == 1 else 's'} in each"
    ]
    for num in range(4):  # every line of a job carries its number, as Hydra lists the jobs
        mine = [line for line in lines if line.startswith(f"[#{num}] gdlab: ")]
        assert any("run directory" in line for line in mine), lines
    assert not [line for line in lines if line.startswith("gdlab: run directory")]

    basic = tmp_path / "basic"
    basic.mkdir()
    _, basic_dir = run_sweep(*sweep, cwd=basic)
    assert without_wall_times(check_sweep(basic_dir, 4, 30)) == without_wall_times(table)


def test_joblib_launch_reuses_the_warm_workers() -> None:
    """The warm-up's workers are the ones the launch gets: joblib hands the same reusable
    executor to a Parallel with the same arguments (the whole point of warming them)."""
    from joblib import Parallel, delayed

    from hydra_plugins.gdlab_launchers._joblib import WarmUp, parallel_arguments

    warm_up = WarmUp.start({"n_jobs": 2, "prefer": "processes", "pre_dispatch": "2*n_jobs"})
    warm_up.wait()
    assert warm_up.workers
    arguments = parallel_arguments({"n_jobs": 2, "prefer": "processes", "pre_dispatch": "2*n_jobs"})
    pids = Parallel(**arguments)(delayed(os.getpid)() for _ in range(8))  # type: ignore
    assert set(pids) <= set(warm_up.workers)


class Loader:
    """A config loader that composes a config of its overrides, and counts."""

    calls = 0

    def load_sweep_config(self, master_config, sweep_overrides):
        Loader.calls += 1
        return OmegaConf.create({"overrides": list(sweep_overrides)})


def test_compositions_are_kept_once_and_never_travel_with_the_loader() -> None:
    """What the sweeper's check composes is handed to the launcher once; detached, the loader
    pickles as Hydra's own (it goes to the workers with every job)."""
    import pickle

    from hydra_plugins.gdlab_launchers._compositions import Compositions

    loader = Loader()
    compositions = Compositions.attach(loader)
    master = OmegaConf.create({})
    checked = loader.load_sweep_config(master_config=master, sweep_overrides=["a=1"])
    assert Loader.calls == 1 and checked.overrides == ["a=1"]
    kept = compositions.take(["a=1"])
    assert kept == checked and kept is not checked
    assert compositions.take(["a=1"]) is None  # once
    assert compositions.compose(master, ["b=2"]).overrides == ["b=2"] and Loader.calls == 2
    assert compositions.take(["b=2"]) is None  # composed for the launch, not kept
    compositions.detach()
    assert "load_sweep_config" not in vars(pickle.loads(pickle.dumps(loader)))
    compositions.attach_again()
    loader.load_sweep_config(master, ["c=3"])
    assert compositions.take(["c=3"]) is not None


@pytest.mark.slow
def test_submitit_local_sweep_of_two_jobs(tmp_path: Path) -> None:
    _proc, sweep_dir = run_sweep(
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "optimizer.lr=0.1,0.2",
        "objective=multivariate",
        "trainer.steps=25",
        cwd=tmp_path,
    )
    check_sweep(sweep_dir, 2, 25)
    assert (sweep_dir / ".submitit").is_dir()  # submitit's own logs stay out of the job list
    assert len(collect_jobs(sweep_dir)) == 2


@pytest.mark.slow
def test_optuna_search_over_lr_and_momentum(tmp_path: Path) -> None:
    proc = run_cli(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        "objective=multivariate",
        "trainer.steps=30",
        "logger.plots=false",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    rows = collect_jobs(sweep_dir)
    assert len(rows) == 4
    for row in rows:  # names carry the sampled values, not the search's own switch
        assert "hparams_search" not in row.job
        assert {"optimizer.lr", "optimizer.momentum"} <= set(row.values)
        assert 0.001 <= float(row.values["optimizer.lr"]) <= 1.0
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    # Optuna minimised the score gdlab ranks by: Hydra's best is gdlab's rank 1
    ranked = [r for r in rows if r.rank == 1]
    if ranked:
        assert results["best_value"] == pytest.approx(ranked[0].score)
    else:  # no trial finished or converged: no best is presented
        assert results["best_value"] is None
    if ranked:
        assert {k: float(v) for k, v in results["best_params"].items()} == pytest.approx(
            {k: float(ranked[0].values[k]) for k in results["best_params"]}
        )
    assert (sweep_dir / "summary.csv").exists()
