"""From one machine to a cluster: the SLURM launcher config and scripts/bench_scale.py.

No SLURM here: the launcher config is composed (Hydra's compose API and `gdlab --cfg hydra`)
and its placeholder checked, never submitted. The benchmark's pure helpers are tested on
made-up sweep directories, and one tiny end-to-end run of the script is marked slow.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gdlab.config import config_dir
from gdlab.threads import threads_per_job
from tests.conftest import REPO, run_cli

SLURM_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def compose_with_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


# --- configs/hydra/launcher/slurm.yaml --------------------------------------------------------


def test_slurm_launcher_is_one_override_with_the_partition_filled() -> None:
    cfg = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == SLURM_TARGET
    assert launcher.partition == "gpu"
    assert launcher.tasks_per_node == 1 and launcher.nodes == 1
    assert launcher.timeout_min > 0 and launcher.mem_gb > 0 and launcher.array_parallelism > 0
    assert str(launcher.submitit_folder).endswith("/.submitit/%j")
    # gdlab's thread rule under submitit: torch gets the job's SLURM_CPUS_PER_TASK threads,
    # and that is what cpus_per_task asks SLURM for
    cpus = launcher.cpus_per_task
    env = {"SLURM_CPUS_PER_TASK": str(cpus)}
    assert threads_per_job(launcher, 64, env=env) == cpus
    # Hydra builds the real launcher from it (no SLURM needed until it submits)
    built = instantiate(launcher)
    assert type(built).__name__ == "SlurmLauncher"
    assert built.params["partition"] == "gpu" and built.params["cpus_per_task"] == cpus


def test_slurm_launcher_has_every_key_of_submitit_slurm() -> None:
    """The node is spelled out (a `???` over submitit_slurm's schema would be dropped), so it
    must keep the schema's keys: every `hydra.launcher.<key>=` of submitit_slurm works."""
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    cfg = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=cpu"])
    schema = {f.name for f in dataclasses.fields(SlurmQueueConf)}
    assert set(cfg.hydra.launcher.keys()) == schema
    cfg = compose_with_hydra(
        ["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.qos=high"]
    )
    assert cfg.hydra.launcher.qos == "high"


def test_slurm_partition_is_a_placeholder_until_set() -> None:
    cfg = compose_with_hydra(["hydra/launcher=slurm"])
    assert OmegaConf.is_missing(cfg.hydra.launcher, "partition")


def test_cfg_hydra_prints_the_slurm_launcher(tmp_path: Path) -> None:
    proc = run_cli(
        "--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    launcher = OmegaConf.create(proc.stdout).hydra.launcher
    assert launcher._target_ == SLURM_TARGET and launcher.partition == "gpu"


@pytest.mark.parametrize("sweeper", [[], ["hydra/sweeper=population"]])
def test_a_missing_partition_is_one_line_naming_the_key(tmp_path: Path, sweeper) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        "-m", *sweeper, "hydra/launcher=slurm", "optimizer.lr=0.1,0.2", "trainer.steps=2",
        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gdlab: error: ") and "hydra.launcher.partition" in lines[0]
    assert "issing mandatory value" in lines[0]
    # nothing ran: no job directory
    assert not sweep_dir.exists() or not any(
        p.is_dir() and p.name[0] != "." for p in sweep_dir.iterdir()
    )


# --- scripts/bench_scale.py -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = REPO / "scripts" / "bench_scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def swept_values(override: str) -> list:
    parsed = OverridesParser.create().parse_override(override)
    return list(parsed.sweep_iterator())


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine has SLURM")
def test_slurm_without_slurm_is_one_line(tmp_path: Path) -> None:
    """Off a cluster (no srun), submitit's RuntimeError becomes one line and exit code 2."""
    proc = run_cli(
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=cpu",
        "optimizer.lr=0.1",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "(no srun)" in lines[0] and "Traceback" not in proc.stderr


def test_grid_and_ranges_make_the_members_asked_for(bench) -> None:
    assert bench.grid(1_000_000, 1000) == (1000, 1000)
    assert bench.grid(20_000, 1000) == (20, 1000)
    assert bench.grid(2500, 1000) == (3, 1000)  # rounded up to whole rows of lrs
    assert bench.grid(300, 1000) == (1, 300)
    for k in (1000, 7, 3, 1):
        lrs = swept_values(bench.lr_range(k))
        assert len(lrs) == k
        assert lrs[-1] == pytest.approx(bench.LR_MAX) and lrs[0] > 0
    assert bench.job_count(1_000_000, 125_000) == 8
    assert bench.job_count(1_000_001, 125_000) == 9
    assert bench.job_count(5, None) == 1


def test_sweep_overrides(bench) -> None:
    joblib = bench.sweep_overrides(20_000, 1000, 5000, 200, 2)
    assert joblib[:2] == ["hydra/sweeper=population", "experiment=linear_regression"]
    assert joblib[2] == "trainer.seed=range(0,20)"  # the outer axis: balanced jobs
    assert joblib[3].startswith("optimizer.lr=range(")
    for expected in (
        "trainer.steps=200",
        "hydra.sweeper.max_members=5000",
        "logger.plots=false",
        "hydra.sweeper.compile=true",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ):
        assert expected in joblib
    assert "logger.plots=false" not in bench.sweep_overrides(10, 10, None, 5, 1, plots=True)
    ray = bench.sweep_overrides(20_000, 1000, 5000, 200, 2, launcher="ray")
    assert "hydra/launcher=ray" in ray and "++hydra.launcher.ray.init.num_cpus=2" in ray
    assert "++hydra.launcher.ray.remote.num_cpus=1" in ray
    with pytest.raises(ValueError):
        bench.sweep_overrides(10, 10, None, 5, 1, launcher="dask")


def test_efficiency_and_verdict(bench) -> None:
    assert bench.efficiency(10.0, 6.25, 2) == pytest.approx(0.8)
    assert bench.efficiency(10.0, 5.0, 2) == pytest.approx(1.0)
    assert bench.efficiency(12.0, 4.0, 4) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        bench.efficiency(1.0, 0.0, 2)
    assert bench.verdict(True) == "PASS" and bench.verdict(False) == "MISS"


def fake_job(sweep: Path, name: str, doc: dict, start: float, end: float) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    for file in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (job / ".hydra" / file).write_text("{}")
        os.utime(job / ".hydra" / file, (start, start))
    (job / "population.json").write_text(json.dumps(doc))
    os.utime(job / "population.json", (end - 0.5, end - 0.5))
    (job / "gdlab.log").write_text("")
    os.utime(job / "gdlab.log", (end, end))
    return job


def test_jobs_are_read_back_from_the_sweep(bench, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sweep = tmp_path / "sweep"
    inline = {"members": 3, "wall_time_s": 1.5, "steps_run": 200, "steps": [200, 6, None]}
    parquet = {"members": 2, "wall_time_s": 2.5, "members_file": "members.parquet"}
    fake_job(sweep, "+population=0", inline, 1000.0, 1004.0)
    job = fake_job(sweep, "+population=1", parquet, 1001.0, 1010.0)
    pq.write_table(pa.table({"steps": [10, 200]}), job / "members.parquet")
    (sweep / ".population").mkdir()  # the plan, not a job
    (sweep / "summary.md").write_text("")
    jobs = bench.read_jobs(sweep)
    assert [j.name for j in jobs] == ["+population=0", "+population=1"]
    assert [j.members for j in jobs] == [3, 2]
    assert [j.train_s for j in jobs] == [1.5, 2.5]
    assert jobs[0].start == pytest.approx(1000.0) and jobs[0].end == pytest.approx(1004.0)
    assert bench.jobs_phase(jobs) == pytest.approx(10.0)
    assert bench.member_steps_run(sweep) == 200 + 6 + 10 + 200
    with pytest.raises(ValueError):
        bench.jobs_phase([])


def test_figures_are_medians_and_ratios(bench) -> None:
    def m(workers: int, wall: float, phase: float, train: float, tree: int | None) -> object:
        return bench.Measurement(workers, wall, phase, train, 1000, 4, None, tree, 100 * 2**20)

    runs = {
        1: [m(1, 10.0, 8.0, 6.0, 400 * 2**20), m(1, 12.0, 9.0, 6.0, 420 * 2**20),
            m(1, 11.0, 8.5, 6.2, 410 * 2**20)],
        2: [m(2, 7.0, 5.0, 6.5, 900 * 2**20), m(2, 6.0, 4.5, 6.0, None),
            m(2, 6.5, 5.5, 7.0, 1000 * 2**20)],
    }  # fmt: skip
    f = bench.figures(runs, 2, steps=200)
    assert f["wall"] == (11.0, 6.5) and f["phase"] == (8.5, 5.0)
    assert f["efficiency_wall"] == pytest.approx(11.0 / 13.0)
    assert f["efficiency_phase"] == pytest.approx(0.85)
    assert f["train_ratio"] == pytest.approx(6.0 / 6.5)
    assert f["rate_wall"][0] == pytest.approx(1000 * 200 / 11.0)
    assert f["tree_peak"] == (410 * 2**20, 950 * 2**20)  # a missing sample is left out
    assert f["per_member"][1] == pytest.approx(950 * 2**20 / 1000)


@pytest.mark.slow
def test_bench_scale_runs_end_to_end_on_a_tiny_population(tmp_path: Path) -> None:
    command = [
        sys.executable, str(REPO / "scripts" / "bench_scale.py"),
        "--members", "2000", "--max-members", "500", "--steps", "5", "--repeats", "1",
        "--compile", "false", "--no-warmup", "--exit-grace", "5", "--tmp-dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "2,000 members (2 seeds x 1,000 lrs" in out and "4 jobs of <= 500" in out
    assert "repeat 1, 1 worker:" in out and "repeat 1, 2 workers:" in out
    for label in ("whole command", "jobs' phase"):
        assert any(
            line.startswith(("PASS  ", "MISS  ")) and f"scaling efficiency, {label}:" in line
            for line in out.splitlines()
        ), out
    assert "a million members in one command: not checked at 2,000" in out
    assert not any(tmp_path.iterdir())  # the temporary directory is gone
    print(out)  # the figures, with pytest -s
