"""What a run leaves behind, read back the way users see it: TensorBoard files and metrics.json."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import read_metrics

METRIC_KEYS = {
    "status",
    "steps",
    "final_loss",
    "params",
    "grad_norm",
    "distance_to_minimizer",
    "minimum",
    "excess_loss",
    "initial_loss",
    "lr",
    "lr_limit",
    "score",
    "problem",
    "stop_reason",
    "wall_time_s",
    "steps_per_s",
    "objective",
    "device",
    "dtype",
}


def load_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_event_files_hold_every_step_for_short_runs(run_config) -> None:
    result, run_dir = run_config("trainer.steps=50")
    assert list(run_dir.glob("events.out.tfevents.*")), "event file must be in the run directory"
    events = load_events(run_dir)
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "train/lr", "train_params/x"} <= scalars
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(51))  # steps 0..49 and the final point
    assert loss[0].value == pytest.approx(14.0)  # f(0) = 9 + 5
    assert loss[-1].value == pytest.approx(result.final_loss)
    assert events.Scalars("train_params/x")[-1].value == pytest.approx(result.params["x"].item())
    assert all(e.value == pytest.approx(0.1) for e in events.Scalars("train/lr"))
    assert "config" in events.Tags()["tensors"]
    config_text = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "_target_: gdlab.objectives.quadratic.Quadratic" in config_text


def test_long_runs_log_about_a_thousand_points(run_config) -> None:
    _, run_dir = run_config("trainer.steps=5000", "trainer.tol=0")
    steps = [e.step for e in load_events(run_dir).Scalars("train/loss")]
    assert steps[:3] == [0, 5, 10]
    assert steps[-1] == 5000  # the last point is never lost
    assert len(steps) == 1001


def test_log_every_is_respected(run_config) -> None:
    _, run_dir = run_config("trainer.steps=95", "trainer.log_every=10", "trainer.tol=0")
    steps = [e.step for e in load_events(run_dir).Scalars("train/loss")]
    assert steps == [*range(0, 95, 10), 95]


def test_vector_params_get_one_tag_per_entry_and_large_ones_none(run_config) -> None:
    _, run_dir = run_config("experiment=matrix", "trainer.steps=5")
    tags = set(load_events(run_dir).Tags()["scalars"])
    assert {f"train_params/x/{i}" for i in range(4)} <= tags
    # 12 numbers: not a scalar curve
    assert not any(tag.startswith("train_params/W") for tag in tags)


def test_logger_none_writes_no_event_files(run_config) -> None:
    _, run_dir = run_config("logger=none")
    assert not list(run_dir.glob("events.out.tfevents.*"))
    assert read_metrics(run_dir)["status"] == "finished"


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        (["trainer.steps=50"], "finished"),
        (["experiment=exercise_2d"], "converged"),
        (["experiment=saddle"], "diverged"),
    ],
)
def test_metrics_json_for_each_status(run_config, overrides, status) -> None:
    result, run_dir = run_config(*overrides)
    metrics = read_metrics(run_dir)
    assert set(metrics) == METRIC_KEYS
    assert metrics["status"] == status
    assert metrics["steps"] == result.steps
    assert metrics["device"] == "cpu" and metrics["dtype"] == "float32"
    assert metrics["wall_time_s"] > 0 and metrics["steps_per_s"] > 0
    if status == "diverged":
        assert metrics["distance_to_minimizer"] is None  # a saddle has no minimiser
    else:
        assert metrics["distance_to_minimizer"] < 1e-3
    # params come back as nested lists of floats with the parameters' shapes
    for name, value in result.params.items():
        assert metrics["params"][name] == pytest.approx(value.double().tolist(), rel=1e-6)


def test_float64_runs_report_float64(run_config) -> None:
    result, run_dir = run_config("objective=multivariate", "device.dtype=float64")
    assert (
        result.params["v"].dtype.is_floating_point
        and str(result.params["v"].dtype) == "torch.float64"
    )
    assert read_metrics(run_dir)["dtype"] == "float64"
