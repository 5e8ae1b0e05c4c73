"""Faults a real user meets, with the real CLI in a subprocess: signals, kills, sweeps."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gdlab.checkpoint import CHECKPOINT_NAME
from tests.conftest import run_cli, start_training
from tests.test_resume import comparable, scalars

pytestmark = pytest.mark.slow

STEPS = 30_000
LONG_RUN = [
    "objective=linear_regression",
    "objective.batch_size=10",
    "optimizer.lr=0.01",
    "optimizer.momentum=0.9",
    f"trainer.steps={STEPS}",
    "trainer.log_every=100",
    "trainer.checkpoint_every=2000",
    "trainer.tol=0",
]


def start(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    """Start a long run and return once it is training (its first line is out)."""
    args = (*LONG_RUN, *extra, f"hydra.run.dir={run_dir}")
    return start_training(*args, first_line="linear_regression on cpu")


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same long run, never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference")
    proc = run_cli(*LONG_RUN, f"hydra.run.dir={run_dir}", timeout=300)
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.mark.parametrize(
    ("signum", "delay"),
    [(signal.SIGTERM, 0.0), (signal.SIGTERM, 0.7), (signal.SIGTERM, 1.5), (signal.SIGINT, 0.4)],
    ids=["term-at-once", "term-early", "term-later", "int"],
)
def test_signal_then_resume_equals_the_uninterrupted_run(tmp_path, reference, signum, delay):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    time.sleep(delay)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, out + err
    stopped = metrics(run_dir)
    assert stopped["status"] == "interrupted"
    assert 0 <= stopped["steps"] < STEPS, "the signal came too late to test anything"
    assert f"trainer.resume={run_dir}" in out

    resumed = run_cli(f"trainer.resume={run_dir}", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {stopped['steps']}" in resumed.stdout
    assert comparable(metrics(run_dir)) == comparable(metrics(reference))
    assert scalars(run_dir) == scalars(reference)


def test_sigkill_then_resume_loses_at_most_checkpoint_every(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    deadline = time.monotonic() + 60
    while not (run_dir / CHECKPOINT_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()  # no result pretends to be whole
    logged = max(step for step, _ in scalars(run_dir)["train/loss"])

    resumed = run_cli(f"trainer.resume={run_dir}", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    restart = int(resumed.stdout.split("resuming at step ")[1].split()[0])
    assert restart < STEPS
    assert logged - restart <= 2000 + 100  # checkpoint_every, plus one log interval in flight
    assert comparable(metrics(run_dir)) == comparable(metrics(reference))
    assert scalars(run_dir) == scalars(reference)


def test_second_signal_exits_at_once(tmp_path):
    script = (
        "import time\n"
        "from gdlab.interrupts import GracefulInterrupt\n"
        "with GracefulInterrupt() as stop:\n"
        "    print('ready', flush=True)\n"
        "    while True:\n"
        "        time.sleep(0.01)  # a step that never notices the request\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert proc.poll() is None  # the first signal only asks
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM


def test_corrupt_checkpoint_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli("trainer.steps=20", f"hydra.run.dir={run_dir}").returncode == 0
    data = (run_dir / CHECKPOINT_NAME).read_bytes()
    (run_dir / CHECKPOINT_NAME).write_bytes(data[: len(data) // 3])
    proc = run_cli(f"trainer.resume={run_dir}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a readable checkpoint" in lines[0]
    assert "Traceback" not in proc.stderr


def test_resuming_a_finished_run_exits_zero_and_keeps_its_config(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli("experiment=exercise_2d", f"hydra.run.dir={run_dir}").returncode == 0
    proc = run_cli(f"trainer.resume={run_dir}")
    assert proc.returncode == 0, proc.stderr
    assert "already ended (converged" in proc.stdout
    saved = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "QuadraticForm" in saved  # not the resume command's default objective


def test_resume_with_an_objective_field_says_the_objective_is_kept(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli("experiment=linear_regression", f"hydra.run.dir={run_dir}").returncode == 0
    before = (run_dir / ".hydra" / "config.yaml").read_text()
    proc = run_cli(f"trainer.resume={run_dir}", "objective.noise_std=0.7")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "objective.noise_std" in line and "keeps its objective" in line
    assert (run_dir / ".hydra" / "config.yaml").read_text() == before  # left as it was


def test_a_diverging_job_does_not_stop_the_sweep(tmp_path):
    proc = run_cli(
        "-m",
        "optimizer.lr=0.1,1.5,0.05",
        "trainer.steps=300",
        "trainer.tol=0",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    statuses = {
        p.parent.name: json.loads(p.read_text())["status"] for p in tmp_path.glob("*/metrics.json")
    }
    assert len(statuses) == 3
    assert sorted(statuses.values()) == ["diverged", "finished", "finished"]


def test_same_config_gives_identical_results_across_processes(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        proc = run_cli(
            "experiment=linear_regression", "objective.batch_size=20", f"hydra.run.dir={run_dir}"
        )
        assert proc.returncode == 0, proc.stderr
    first, second = (metrics(r) for r in runs)
    assert comparable(first) == comparable(second)
    assert scalars(runs[0]) == scalars(runs[1])
