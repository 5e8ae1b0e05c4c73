"""The plugin's own tests: its gradient is right and gdlab finds, runs and checks it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from gdlab_booth.booth import Booth


def test_analytic_gradient_equals_autograd() -> None:
    booth = Booth()
    booth.setup(torch.device("cpu"), torch.float64)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        xy = (10 * torch.randn(2, generator=generator, dtype=torch.float64)).requires_grad_(True)
        booth.loss({"xy": xy}).backward()
        torch.testing.assert_close(booth.grad({"xy": xy.detach()})["xy"], xy.grad)


def test_minimum_is_at_the_minimizer() -> None:
    booth = Booth()
    booth.setup(torch.device("cpu"), torch.float64)
    assert float(booth.loss(booth.minimizer)) == booth.minimum == 0.0


def test_gdlab_check_passes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gdlab.check", "objective=booth"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "gdlab-check: OK" in proc.stdout


def test_the_preset_descends_to_the_minimum(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gdlab",
            "objective=booth_far_start",
            "optimizer.lr=0.05",
            "trainer.steps=300",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["distance_to_minimizer"] < 1e-3
