"""Every bad input of the reliability issue ends in one line naming the key, exit 2, no traceback.

The list below IS the list of bad inputs we promise to handle; keep it complete.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

# (command-line overrides, words the one-line message must contain)
BAD_INPUTS = [
    (["optimizer.lr=abc"], ["optimizer.lr", "abc", "Float"]),
    (["optimizer.lr="], ["optimizer.lr"]),
    (["trainer.steps=1.5"], ["trainer.steps", "1.5", "Integer"]),
    (["optimizer.lrr=0.1"], ["unknown key optimizer.lrr", "allowed keys", "lr", "momentum"]),
    (["trainer.stepz=10"], ["unknown key trainer.stepz", "steps"]),
    (["objective.foo=1"], ["unknown key objective.foo", "allowed keys: a, c, d, x0"]),
    (["+optimizer.foo=1"], ["unknown key optimizer.foo", "allowed keys", "lr"]),
    (["+trainer.stepz=10"], ["unknown key trainer.stepz", "steps"]),
    (["objective=nope"], ["objective=nope", "available", "quadratic", "linear_regression"]),
    (["device=tpu"], ["device=tpu", "available", "auto, cpu, cuda"]),
    (["experiment=nope"], ["experiment=nope", "available", "descent_1d"]),
    (["optimizer.lr=0"], ["optimizer.lr", "> 0"]),
    (["optimizer.lr=-1"], ["optimizer.lr", "> 0"]),
    (["optimizer.lr=nan"], ["optimizer.lr", "finite"]),
    (["optimizer.lr=inf"], ["optimizer.lr", "finite"]),
    (["optimizer.momentum=1"], ["optimizer.momentum", "[0, 1)"]),
    (["optimizer.momentum=-0.5"], ["optimizer.momentum", "[0, 1)"]),
    (["optimizer.nesterov=true"], ["optimizer.nesterov", "momentum > 0"]),
    (["optimizer.weight_decay=-1"], ["optimizer.weight_decay", ">= 0"]),
    (["optimizer.schedule.name=linear"], ["optimizer.schedule.name", "constant, step, cosine"]),
    (["trainer.steps=0"], ["trainer.steps", ">= 1"]),
    (["trainer.log_every=0"], ["trainer.log_every", ">= 1"]),
    (["trainer.checkpoint_every=0"], ["trainer.checkpoint_every", ">= 1"]),
    (["trainer.tol=-1"], ["trainer.tol", ">= 0"]),
    (["trainer.zero_grad=maybe"], ["trainer.zero_grad", "maybe", "zero, set_to_none"]),
    (["device.dtype=float16"], ["device.dtype", "float16", "float32, float64"]),
    (["objective=linear_regression", "objective.n_samples=0"], ["objective.n_samples", ">= 1"]),
    (
        ["objective=linear_regression", "objective.batch_size=101"],
        ["objective.batch_size=101", "objective.n_samples=100"],
    ),
    (["objective=quadratic", "objective.a=0"], ["objective.a"]),
    (["trainer.steps=[1"], ["cannot parse"]),
    (
        ["-m", "hydra/sweeper=population", "optimizer.lr=0.1,0.2", "hydra.sweeper.strategy=foo"],
        ["hydra.sweeper.strategy='foo'", "auto, broadcast, vmap, loop"],
    ),
    (
        ["-m", "hydra/sweeper=population", "optimizer.lr=0.1,0.2", "hydra.sweeper.chunk_size=0"],
        ["hydra.sweeper.chunk_size=0", ">= 1"],
    ),
    (["trainer.resume=/nonexistent/run"], ["trainer.resume", "/nonexistent/run"]),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["device=cuda"], ["device=cuda", "no CUDA device", "device=cpu"]))


@pytest.mark.parametrize(
    ("overrides", "words"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS]
)
def test_bad_input_is_one_clear_line(tmp_path: Path, overrides: list[str], words: list[str]):
    proc = run_cli(*overrides, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gdlab: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    # nothing that looks like a result is left behind
    assert not list(tmp_path.rglob("metrics.json"))


def test_debug_switch_shows_the_traceback(tmp_path: Path) -> None:
    proc = run_cli("optimizer.lr=-1", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "optimizer.lr" in proc.stderr


def test_unwritable_output_directory_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run_cli(f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and str(blocker) in lines[0]
