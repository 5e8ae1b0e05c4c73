"""`hydra/launcher=ray`: plain and population sweeps on a real Ray, on this machine only.

The slow tests start a Ray head of their own (`ray start --head --block` on 127.0.0.1, in
another working directory, a process group this module owns and ends) and run the real
`gdlab` against it; one sweep starts a local Ray of its own (`init.address` null). Every
process gets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (without it Ray turns 127.0.0.1 into the
machine's outward address), RAY_USAGE_STATS_ENABLED=0, a token of this module's
(RAY_AUTH_MODE=token, RAY_AUTH_TOKEN, so nothing is written to ~/.ray), and an HTTP proxy on
a closed loopback port for what Ray sends with `requests` (see `ray_env`).

A test plugin objective (`ray_probe`, written as an installed-looking distribution put on
PYTHONPATH for the drivers and the head's workers alike) raises, kills its own worker with
os._exit, or reports torch's thread count, as asked.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_sweep
from tests.plugin_kit import write_distribution

pytest.importorskip("hydra_plugins.hydra_ray_launcher")
if importlib.util.find_spec("ray") is None:  # not imported here: this process never runs Ray
    pytest.skip("ray is not installed", allow_module_level=True)

RAY = Path(sys.executable).with_name("ray")
#: metrics.json and summary.csv fields that measure time, not results
WALL_TIME = ("wall_time_s", "steps_per_s")

PROBE = {
    "gdlab_ray_probe/__init__.py": '''
        """x² that raises, kills its own process or reports torch's threads, as asked."""

        import os

        import torch


        class Probe:
            def __init__(self, x0: float = 1.0, mode: str = "ok", report: str = "") -> None:
                if mode not in ("ok", "raise", "die"):
                    raise ValueError(f"objective.mode={mode!r}: ok, raise or die")
                self.x0, self.mode, self.report = x0, mode, report

            def init_params(self, generator, device, dtype):
                if self.report:  # the job's torch threads, as the job runs
                    with open(self.report, "a", encoding="utf-8") as handle:
                        handle.write(f"{os.getpid()} {torch.get_num_threads()}\\n")
                return {"x": torch.tensor([self.x0], device=device, dtype=dtype)}

            def loss(self, params):
                if self.mode == "raise":
                    raise RuntimeError("the probe raises, as asked")
                if self.mode == "die":
                    os._exit(3)  # as SIGKILL or a crash in native code: no clean-up at all
                return (params["x"] ** 2).sum()
    '''
}


# ---------------------------------------------------------------- the launcher's config


def test_ray_launcher_config_local_and_cluster_arguments() -> None:
    """hydra/launcher=ray is gdlab's launcher; a local Ray gets the local settings, a cluster
    only what the user gave (Ray refuses object_store_memory & co. when joining one)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from gdlab.config import config_dir
    from gdlab.threads import launcher_kind, sweep_thread_note
    from hydra_plugins.gdlab_launchers._ray import init_arguments

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        hydra_cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=ray", "hydra.launcher.ray.init.num_cpus=3"],
            return_hydra_config=True,
        ).hydra
    launcher = hydra_cfg.launcher
    assert launcher._target_ == "hydra_plugins.gdlab_launchers.ray_launcher.RayLauncher"
    assert launcher_kind(launcher) == "ray"
    assert OmegaConf.to_container(launcher.ray.remote) == {
        "num_cpus": 1,
        "num_gpus": None,
        "memory": None,
        "max_retries": 0,
    }
    assert "reserves 1 CPU" in sweep_thread_note(launcher, 2)
    local, is_local = init_arguments(launcher.ray)
    assert is_local and local == {
        "address": "local",  # a new Ray, never the cluster of the last `ray start` here
        "num_cpus": 3,
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
    }
    user = OmegaConf.merge(launcher.ray, {"init": {"include_dashboard": True}})
    assert init_arguments(user)[0]["include_dashboard"] is True
    cluster = OmegaConf.merge(launcher.ray, {"init": {"address": "127.0.0.1:6379"}})
    assert init_arguments(cluster) == ({"address": "127.0.0.1:6379", "num_cpus": 3}, False)


def test_a_lost_job_is_a_failed_row_even_without_its_hydra_files(tmp_path: Path) -> None:
    """A worker that died before Hydra wrote the job's .hydra/ still leaves a job directory
    the summary lists: .hydra/ written by the driver, a `failed` metrics.json saying why."""
    from types import SimpleNamespace

    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from gdlab.config import config_dir
    from gdlab.sweeps import collect_jobs
    from hydra_plugins.gdlab_launchers._ray import Job, lost

    class WorkerCrashedError(Exception):
        pass

    errors = SimpleNamespace(
        WorkerCrashedError=WorkerCrashedError,
        TaskCancelledError=type("TaskCancelledError", (Exception,), {}),
        RayTaskError=type("RayTaskError", (Exception,), {}),
    )
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=["optimizer.lr=0.3"], return_hydra_config=True
        )
    with open_dict(cfg):
        cfg.hydra.job.num = 4
        cfg.hydra.overrides.task = ["optimizer.lr=0.3"]
    run_dir = tmp_path / "optimizer.lr=0.3"
    run_dir.mkdir()  # claimed by the driver, then nothing: the worker died at once
    crash = WorkerCrashedError("The worker died unexpectedly while executing this task.")
    ret = lost(
        SimpleNamespace(exceptions=errors), Job(4, ["optimizer.lr=0.3"], cfg, run_dir), crash
    )
    assert ret.return_value == float("inf") and ret.overrides == ["optimizer.lr=0.3"]
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "failed"
    assert metrics["error"] == (
        "RayJobLost: the Ray worker running this job died (WorkerCrashedError: The worker "
        "died unexpectedly while executing this task.)"
    )
    (row,) = collect_jobs(tmp_path)
    assert row.status == "failed" and row.values == {"optimizer.lr": "0.3"}


# ---------------------------------------------------------------- a real Ray


@dataclass
class Head:
    address: str
    cwd: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc), children first."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of every Ray and gdlab process here (this process's, for run_cli)."""
    site = tmp_path_factory.mktemp("ray-site")
    write_distribution(site, "gdlab-ray-probe", PROBE, {"ray_probe": "gdlab_ray_probe:Probe"})
    path = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        patch.setenv("PYTHONPATH", os.pathsep.join(path))
        patch.delenv("RAY_ADDRESS", raising=False)
        # A Ray head probes cloud metadata (169.254.169.254, metadata.google.internal) for its
        # usage report even with usage stats off, and a `ray start` head posts "disabled" to
        # usage-stats.ray.io: both through `requests`, which this sends to a closed loopback
        # port instead (Ray's own gRPC ignores proxies; loopback is never proxied)
        nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there: refused
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            patch.setenv(name, nowhere)
        for name in ("no_proxy", "NO_PROXY"):
            patch.setenv(name, "localhost,127.0.0.1,::1")
        yield dict(os.environ)


@pytest.fixture(scope="module")
def ray_head(ray_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """A Ray head on 127.0.0.1 with 2 CPUs, started from a directory of its own."""
    cwd = tmp_path_factory.mktemp("head-cwd")
    temp_dir = Path(tempfile.mkdtemp(prefix="gdray-", dir="/tmp"))  # short: socket paths
    port = free_port()
    log_path = cwd.parent / "ray-head.log"
    settings = {
        "--port": port,
        "--num-cpus": 2,
        "--node-ip-address": "127.0.0.1",
        "--include-dashboard": "false",
        # free ports, not Ray's fixed defaults, which another Ray on this machine may hold
        "--dashboard-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--ray-client-server-port": free_port(),
        "--temp-dir": temp_dir,
    }
    options = [str(word) for pair in settings.items() for word in pair]
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", "--disable-usage-stats", *options],
            cwd=cwd,
            env=ray_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log_path.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield Head(f"127.0.0.1:{port}", cwd)
    finally:
        stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_group(proc: subprocess.Popen) -> None:
    """End the head's process group (SIGTERM, then SIGKILL), and its workers, which Ray puts
    in process groups of their own."""
    below = descendants(proc.pid)
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)


def on_cluster(head: Head) -> list[str]:
    return ["hydra/launcher=ray", f"hydra.launcher.ray.init.address={head.address}"]


def basic_and_on_cluster(
    args: list[str], head: Head, tmp_path: Path
) -> tuple[Path, subprocess.CompletedProcess[str], Path]:
    """The sweep under the basic launcher, then on the cluster: (basic sweep dir, the Ray
    command, its sweep dir), each run from its own directory under tmp_path."""
    (tmp_path / "basic").mkdir()
    (tmp_path / "ray").mkdir()
    _, basic = run_sweep(*args, cwd=tmp_path / "basic")
    proc, on_ray = run_sweep(*args, *on_cluster(head), cwd=tmp_path / "ray")
    return basic, proc, on_ray


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    """summary.csv's rows without the columns that measure time."""
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "summary.csv").read_text())))
    return [{k: v for k, v in row.items() if k not in WALL_TIME} for row in rows]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


def results(job: Path) -> dict:
    document = read_metrics(job)
    for key in WALL_TIME:
        document.pop(key)
    return document


@pytest.mark.slow
def test_local_ray_started_for_the_sweep(ray_env: dict[str, str], tmp_path: Path) -> None:
    """address null: a Ray on 127.0.0.1 for this sweep (not the head below), gone after it."""
    temp_dir = Path(tempfile.mkdtemp(prefix="gdray-", dir="/tmp"))
    try:
        proc, sweep_dir = run_sweep(
            "optimizer.lr=0.1,0.2",
            "trainer.steps=20",
            "logger.plots=false",
            "hydra/launcher=ray",
            "hydra.launcher.ray.init.num_cpus=2",
            f"+hydra.launcher.ray.init._temp_dir={temp_dir}",
            cwd=tmp_path,
        )
        assert "Started a local Ray instance" in proc.stderr
        assert "'_node_ip_address': '127.0.0.1'" in proc.stdout
        assert "'include_dashboard': False" in proc.stdout
        assert [r["status"] for r in summary_rows(sweep_dir)] == ["finished", "finished"]
        # the Ray the sweep started ended with it (its processes name their temp dir)
        assert not [line for line in cmdlines() if str(temp_dir) in line]
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def cmdlines() -> list[str]:
    """The command line of every process on this machine."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return lines


@pytest.mark.slow
def test_plain_sweep_on_a_cluster_equals_the_basic_launcher(ray_head: Head, tmp_path: Path) -> None:
    args = [
        "objective=quadratic,multivariate",
        "optimizer.lr=0.1,0.6",
        "trainer.steps=30",
        "logger.plots=false",
    ]
    basic, proc, on_ray = basic_and_on_cluster(args, ray_head, tmp_path)

    # where the basic launcher would write: under the driver's cwd, not the head's
    assert not (ray_head.cwd / "outputs").exists()
    assert summary_rows(on_ray) == summary_rows(basic)
    assert [p.name for p in job_dirs(on_ray)] == [p.name for p in job_dirs(basic)]
    for ours, theirs in zip(job_dirs(on_ray), job_dirs(basic), strict=True):
        assert results(ours) == results(theirs)  # bit for bit, wall times aside
        log = (ours / "gdlab.log").read_text()
        assert "gdlab: torch uses 1 thread in this job" in log  # remote.num_cpus: 1
        hydra_yaml = (ours / ".hydra" / "hydra.yaml").read_text()
        assert f"cwd: {tmp_path / 'ray'}\n" in hydra_yaml
    console = proc.stdout + proc.stderr
    assert re.search(r"\(gdlab_job pid=\d+\)\S* \[#[0-3]\] gdlab: finished after 30 steps", console)
    assert "each Ray task reserves 1 CPU" in console


@pytest.mark.slow
def test_population_sweep_split_into_jobs_on_a_cluster(ray_head: Head, tmp_path: Path) -> None:
    args = [
        "hydra/sweeper=population",
        "optimizer.lr=range(0.1,1,0.1)",
        "hydra.sweeper.max_members=3",
        "trainer.steps=30",
    ]
    basic, proc, on_ray = basic_and_on_cluster(args, ray_head, tmp_path)
    assert "9 settings in 3 jobs" in proc.stdout
    jobs = job_dirs(on_ray)
    assert len(jobs) == 3 and all((job / "population.json").exists() for job in jobs)
    rows = summary_rows(on_ray)
    assert len(rows) == 9 and rows == summary_rows(basic)
    assert (on_ray / "lr.png").exists()


@pytest.mark.slow
def test_a_job_that_raises_and_one_whose_worker_dies(ray_head: Head, tmp_path: Path) -> None:
    report = tmp_path / "threads.txt"
    proc, sweep_dir = run_sweep(
        "objective=ray_probe",
        "objective.mode=ok,raise,die",
        f"objective.report={report}",
        "trainer.steps=20",
        "logger.plots=false",
        *on_cluster(ray_head),
        cwd=tmp_path,
        expect=1,  # a job failed
    )
    rows = {row["objective.mode"]: row for row in summary_rows(sweep_dir)}
    assert rows["ok"]["status"] == "finished" and rows["ok"]["rank"] == "1"
    assert rows["raise"]["status"] == "failed"
    assert "RuntimeError: the probe raises, as asked" in rows["raise"]["error"]
    assert rows["die"]["status"] == "failed"
    assert rows["die"]["error"].startswith("RayJobLost: the Ray worker running this job died")
    (died,) = [job for job in job_dirs(sweep_dir) if "mode=die" in job.name]
    assert read_metrics(died)["status"] == "failed"
    assert "the Ray worker running this job died" in proc.stderr + proc.stdout
    # the job's torch threads, measured in the job: one per CPU Ray reserved for it
    assert {line.split()[1] for line in report.read_text().splitlines()} == {"1"}

    again = report_cli(sweep_dir)
    assert again.returncode == 0, again.stderr
    assert "2 failed, 1 finished" in again.stdout


def report_cli(sweep_dir: Path) -> subprocess.CompletedProcess[str]:
    """`gdlab-report DIR` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "gdlab.report", str(sweep_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_population_jobs_whose_worker_dies(ray_head: Head, tmp_path: Path) -> None:
    proc, sweep_dir = run_sweep(
        "hydra/sweeper=population",
        "objective=ray_probe",
        "objective.mode=ok,die",
        "optimizer.lr=0.1,0.2,0.3",
        "hydra.sweeper.max_members=2",
        "trainer.steps=20",
        "logger.plots=false",
        *on_cluster(ray_head),
        cwd=tmp_path,
        expect=1,
    )
    assert "6 settings in 4 jobs" in proc.stdout
    rows = summary_rows(sweep_dir)
    ok = [r for r in rows if r["objective.mode"] == "ok"]
    assert sorted(r["optimizer.lr"] for r in ok) == ["0.1", "0.2", "0.3"]
    assert all(r["status"] in {"finished", "converged"} for r in ok)
    # A population job whose worker died is one failed row (no member results exist),
    # named by its population number, as a population job that raises is
    died = [r for r in rows if r["objective.mode"] == "die"]
    assert len(died) == 2 and {r["status"] for r in died} == {"failed"}
    assert all("Ray worker running this job died" in r["error"] for r in died)
    again = report_cli(sweep_dir)
    assert again.returncode == 0 and "2 failed" in again.stdout


@pytest.mark.slow
def test_torch_threads_follow_the_cpus_ray_reserves(ray_head: Head, tmp_path: Path) -> None:
    report = tmp_path / "threads.txt"
    proc, sweep_dir = run_sweep(
        "objective=ray_probe",
        "optimizer.lr=0.1,0.2",
        f"objective.report={report}",
        "trainer.steps=10",
        "logger.plots=false",
        *on_cluster(ray_head),
        "hydra.launcher.ray.remote.num_cpus=2",
        cwd=tmp_path,
    )
    assert "each Ray task reserves 2 CPUs" in proc.stdout
    for job in job_dirs(sweep_dir):
        assert "gdlab: torch uses 2 threads in this job" in (job / "gdlab.log").read_text()
    threads = [line.split()[1] for line in report.read_text().splitlines()]
    assert threads == ["2", "2"]
