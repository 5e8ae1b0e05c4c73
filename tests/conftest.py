"""Shared fixtures: compose configs with Hydra's compose API, run them into tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gdlab.config import config_dir
from gdlab.events import RunResult
from gdlab.experiment import run_experiment

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config `gdlab <overrides>` would run, without Hydra's own node."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def run_config(tmp_path: Path) -> Callable[..., tuple[RunResult, Path]]:
    """Run a composed config into a fresh directory under tmp_path; return result and dir."""
    counter = iter(range(1_000_000))

    def run(*overrides: str) -> tuple[RunResult, Path]:
        run_dir = tmp_path / f"run{next(counter)}"
        cfg = compose_config(["trainer.progress=false", *overrides])
        return run_experiment(cfg, run_dir), run_dir

    return run


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def start_training(
    *args: str, cwd: Path | None = None, first_line: str = "on cpu"
) -> subprocess.Popen[str]:
    """Start the real `gdlab ARGS` in a subprocess that trains until stopped; returns once its
    first line (`<objective> on cpu, ...`, containing `first_line`) is out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gdlab", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first_line in first, first + (proc.stderr.read() if proc.stderr else "")
    return proc


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `gdlab` command (as `python -m gdlab`) in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gdlab", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_sweep(
    *args: str, cwd: Path, expect: int = 0, timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`gdlab -m ARGS` in `cwd`: checks the exit code, returns the process and its sweep dir."""
    proc = run_cli("-m", *args, cwd=cwd, timeout=timeout)
    assert proc.returncode == expect, proc.stderr
    (sweep_dir,) = (Path(cwd) / "outputs" / "multirun").glob("*/*")
    return proc, sweep_dir
