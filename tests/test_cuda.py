"""CUDA runs (skipped without a GPU): data on the device, no host sync between log points."""

from __future__ import annotations

import pytest
import torch

from gdlab.experiment import build
from gdlab.trainer import Trainer
from tests.conftest import compose_config

pytestmark = pytest.mark.cuda

OBJECTIVES = [
    ["objective=quadratic"],
    ["objective=multivariate"],
    ["objective=linear_regression"],
    ["objective=linear_regression", "objective.batch_size=10", "optimizer.momentum=0.9"],
    ["objective=matrix", "optimizer.lr=0.01"],
]


@pytest.mark.parametrize("overrides", OBJECTIVES, ids=lambda o: " ".join(o))
def test_no_host_sync_between_log_points(monkeypatch, tmp_path, overrides) -> None:
    cfg = compose_config(
        [*overrides, "device=cuda", "trainer.steps=200", "trainer.log_every=50",
         "trainer.tol=0", "trainer.progress=false", "logger.plots=false"]
    )  # fmt: skip
    experiment = build(cfg, tmp_path)
    observe = Trainer._observe

    def observe_allowing_sync(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode(0)  # a log point is where the trainer may read back
        try:
            return observe(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(Trainer, "_observe", observe_allowing_sync)
    for sink in experiment.sinks:
        sink.start(experiment.info)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = experiment.trainer.run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        for sink in experiment.sinks:
            sink.close()
    assert result.steps == 200


def test_regression_data_live_on_the_device(tmp_path) -> None:
    experiment = build(compose_config(["objective=linear_regression", "device=cuda"]), tmp_path)
    assert experiment.objective.X.device.type == "cuda"
    assert experiment.objective.y.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in experiment.params.values())


@pytest.mark.parametrize("overrides", OBJECTIVES[:3], ids=lambda o: " ".join(o))
def test_cuda_matches_cpu_in_float64(run_config, overrides) -> None:
    # deterministic objectives only: CUDA generators draw other numbers than the CPU's
    if "objective=linear_regression" in overrides:
        pytest.skip("the regression's data are drawn by the device's own generator")
    common = [*overrides, "device.dtype=float64", "trainer.steps=100", "trainer.tol=0"]
    on_cpu, _ = run_config(*common, "device=cpu")
    on_gpu, _ = run_config(*common, "device=cuda")
    for name, value in on_cpu.params.items():
        torch.testing.assert_close(on_gpu.params[name], value, rtol=1e-10, atol=1e-12)
