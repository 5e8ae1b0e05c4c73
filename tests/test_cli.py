"""The real `gdlab` command in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow
#: single-run experiments; the race_* presets are sweeps (tests/test_race.py runs them)
EXPERIMENTS = sorted(  # the multirun presets (races, edge_of_stability) have tests of their own
    p.stem
    for p in (REPO / "configs" / "experiment").glob("*.yaml")
    if "mode: MULTIRUN" not in p.read_text()
)


def test_default_run_prints_where_it_went(tmp_path: Path) -> None:
    proc = run_cli(cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 1
    # as the README shows it: relative to where the command ran
    assert f"run directory {run_dirs[0].relative_to(tmp_path)}\n" in proc.stdout
    metrics = json.loads((run_dirs[0] / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] == 50
    assert abs(metrics["params"]["x"] - 3.0) < 1e-3
    assert list(run_dirs[0].glob("events.out.tfevents.*"))
    assert (run_dirs[0] / ".hydra" / "config.yaml").exists()


def test_console_script_and_module_are_the_same_app(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("gdlab")
    proc = subprocess.run(
        [str(script), "objective=quadratic", f"hydra.run.dir={tmp_path / 'a'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    module = run_cli("objective=quadratic", f"hydra.run.dir={tmp_path / 'b'}")
    assert module.returncode == 0, module.stderr
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["params"] == b["params"] and a["final_loss"] == b["final_loss"]


def test_console_scripts_exit_with_the_code_main_returns(tmp_path: Path) -> None:
    """The console scripts are the thin exiting wrappers; `main` itself only returns."""
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert {name: scripts.get(name) for name in ("gdlab", "gdlab-check", "gdlab-report")} == {
        "gdlab": "gdlab.launch:main",  # imports with the collector paused, then cli.console_main
        "gdlab-check": "gdlab.check:console_main",
        "gdlab-report": "gdlab.report:console_main",
    }
    bin_dir = Path(sys.executable).parent
    for command in (
        [str(bin_dir / "gdlab"), "optimizer.lr=abc"],
        [str(bin_dir / "gdlab-report"), str(tmp_path / "missing")],
        [sys.executable, "-m", "gdlab.report", str(tmp_path / "missing")],
    ):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_runs_started_together_never_share_a_directory(tmp_path: Path) -> None:
    with ThreadPoolExecutor(3) as pool:
        procs = list(pool.map(lambda _: run_cli("trainer.steps=5", cwd=tmp_path), range(3)))
    assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs]
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 3
    assert all((d / "metrics.json").exists() for d in run_dirs)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_runs(tmp_path: Path, experiment: str) -> None:
    proc = run_cli(f"experiment={experiment}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    expected = {"saddle": "diverged", "exercise_2d": "converged"}.get(experiment)
    if expected:
        assert metrics["status"] == expected
    else:
        assert metrics["status"] in {"finished", "converged"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line_and_non_zero(tmp_path: Path) -> None:
    proc = run_cli("device=cuda", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "device=cuda" in lines[0] and "device=auto" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_auto_device_says_what_it_chose(tmp_path: Path) -> None:
    proc = run_cli("device=auto", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    chosen = "cuda" if torch.cuda.is_available() else "cpu, chosen by device=auto"
    assert chosen in proc.stdout


def test_wheel_install_finds_its_configs_from_any_directory(tmp_path: Path) -> None:
    """A regular (non-editable) wheel carries configs/ inside the package."""
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("gdlab-*.whl")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    assert (site / "gdlab" / "configs" / "config.yaml").exists()
    env = {"PYTHONPATH": str(site)}
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gdlab.config as c; print(c.__file__); print(c.config_dir())",
        ],
        cwd=elsewhere,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    module_file, configs = where.stdout.split()
    assert module_file.startswith(str(site)) and configs == str(site / "gdlab" / "configs")
    proc = run_cli("experiment=exercise_2d", cwd=elsewhere, env=env)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (elsewhere / "outputs").glob("*/*")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "converged"
