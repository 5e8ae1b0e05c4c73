"""TensorBoard HParams: one session per run directory, read back with TensorBoard itself."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import api_pb2, metadata

from gdlab.events import RunInfo, RunResult
from gdlab.experiment import run_experiment
from gdlab.sinks.tensorboard import TensorBoardSink
from tests.conftest import compose_config, read_metrics, run_sweep


def run_with_overrides(run_dir: Path, *overrides: str) -> RunResult:
    """What a sweep job does: the overrides compose the config and name the hparams."""
    cfg = compose_config(["trainer.progress=false", "logger.plots=false", *overrides])
    return run_experiment(cfg, run_dir, overrides=list(overrides))


def hparams_content(run_dir: Path) -> dict[str, bytes]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events.PluginTagToContent(metadata.PLUGIN_NAME)


def session_hparams(content: dict[str, bytes]) -> dict:
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    return {
        name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        for name, value in start.hparams.items()
    }


def session_status(content: dict[str, bytes]) -> str:
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    return api_pb2.Status.Name(end.status)


def test_a_run_is_one_session_with_its_hparams_and_final_metrics(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_with_overrides(run_dir, "objective=multivariate", "optimizer.lr=0.05")
    assert [p.name for p in run_dir.iterdir() if p.is_dir()] == []  # no timestamped sub-run
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    content = hparams_content(run_dir)
    assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    hparams = session_hparams(content)
    assert hparams == {
        "objective": "multivariate",
        "optimizer.name": "sgd",
        "optimizer.lr": pytest.approx(0.05),
        "optimizer.momentum": 0.0,
        "trainer.steps": 50.0,
        "device": "cpu",
        "device.dtype": "float32",
    }
    assert session_status(content) == "STATUS_SUCCESS"
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    final = {tag: events.Scalars(tag)[-1] for tag in events.Tags()["scalars"]}
    assert final["train_result/loss"].value == pytest.approx(result.final_loss)
    assert final["train_result/steps"].value == result.steps == final["train_result/loss"].step
    assert final["train_result/diverged"].value == 0.0
    distance = final["train_result/distance_to_minimizer"].value
    assert distance == pytest.approx(result.distance_to_minimizer)
    assert final["train/loss"].value == pytest.approx(result.final_loss)  # linked curve


def test_swept_keys_become_hparams_and_divergence_is_a_number(tmp_path: Path) -> None:
    run_with_overrides(tmp_path, "experiment=saddle", "trainer.seed=3", "objective.e=1.5")
    hparams = session_hparams(hparams_content(tmp_path))
    assert hparams["experiment"] == "saddle"
    assert hparams["trainer.seed"] == 3.0 and hparams["objective.e"] == 1.5
    assert hparams["objective"] == "multivariate"  # the saddle preset's class
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    assert events.Scalars("train_result/diverged")[-1].value == 1.0
    assert "train_result/distance_to_minimizer" not in events.Tags()["scalars"]  # none known
    assert read_metrics(tmp_path)["status"] == "diverged"


def test_a_run_that_raises_ends_its_session_as_failed(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path)
    sink.start(RunInfo("quadratic", "cpu", "float32", 10, 1, hparams={"optimizer.lr": 0.1}))
    sink.close()  # no finish(): the run raised
    assert session_status(hparams_content(tmp_path)) == "STATUS_FAILURE"


def test_a_sweep_directory_has_one_run_per_job(tmp_path: Path) -> None:
    for lr in ("0.1", "0.3"):
        run_with_overrides(tmp_path / f"optimizer.lr={lr}", f"optimizer.lr={lr}")
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    assert sorted(multiplexer.Runs()) == ["optimizer.lr=0.1", "optimizer.lr=0.3"]
    sessions = multiplexer.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    assert sorted(sessions) == ["optimizer.lr=0.1", "optimizer.lr=0.3"]
    lrs = {run: session_hparams(tags)["optimizer.lr"] for run, tags in sessions.items()}
    assert lrs == {"optimizer.lr=0.1": pytest.approx(0.1), "optimizer.lr=0.3": pytest.approx(0.3)}


# --------------------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


@pytest.mark.slow
def test_tensorboard_server_shows_one_hparams_row_per_job(tmp_path: Path) -> None:
    _proc, sweep_dir = run_sweep(
        "optimizer.lr=0.05,0.2,1.2", "objective=multivariate", "logger.plots=false", cwd=tmp_path
    )
    jobs = {p.name: read_metrics(p) for p in sweep_dir.iterdir() if (p / "metrics.json").exists()}
    assert len(jobs) == 3

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(sweep_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast=false",
            "--reload_interval=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/data/plugin/hparams"
    request = {
        "experimentName": "",
        "allowedStatuses": ALL_STATUSES,
        "startIndex": 0,
        "sliceSize": 100,
    }
    try:
        groups: list = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()
            try:
                groups = post_json(f"{base}/session_groups", request).get("sessionGroups", [])
            except OSError:  # not listening yet, or still loading (URLError, timeouts)
                groups = []
            if len(groups) >= 3 and all(len(g.get("metricValues", [])) >= 4 for g in groups):
                break
            time.sleep(0.5)
        experiment = post_json(f"{base}/experiment", {"experimentName": ""})
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    assert sorted(g["name"] for g in groups) == sorted(jobs)  # exactly one row per job
    hparam_names = {h["name"]: h for h in experiment["hparamInfos"]}
    assert {"objective", "optimizer.lr", "optimizer.momentum", "trainer.steps"} <= set(hparam_names)
    assert hparam_names["optimizer.lr"]["differs"] is True
    metric_tags = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"train_result/loss", "train_result/steps", "train_result/diverged"} <= metric_tags
    assert "train/loss" in metric_tags
    for group in groups:
        metrics = jobs[group["name"]]
        assert [s["name"] for s in group["sessions"]] == [group["name"]]
        lr = re.search(r"optimizer\.lr=([^,]+)", group["name"]).group(1)
        assert group["hparams"]["optimizer.lr"] == pytest.approx(float(lr))
        values = {m["name"]["tag"]: m.get("value") for m in group["metricValues"]}
        assert values["train_result/steps"] == metrics["steps"]
        assert values["train_result/diverged"] == float(metrics["status"] == "diverged")
        if metrics["final_loss"] is not None:
            assert values["train_result/loss"] == pytest.approx(metrics["final_loss"], rel=1e-6)
    statuses = {jobs[g["name"]]["status"] for g in groups}
    assert "diverged" in statuses and statuses & {"finished", "converged"}


def test_the_hparams_constants_written_out_equal_tensorboards() -> None:
    from tensorboard.plugins.hparams import metadata

    from gdlab.sinks import hparams

    for name in ("PLUGIN_NAME", "PLUGIN_DATA_VERSION", "SESSION_START_INFO_TAG",
                 "SESSION_END_INFO_TAG"):  # fmt: skip
        assert getattr(hparams, name) == getattr(metadata, name)


def test_the_command_pauses_the_collector_only_while_it_imports() -> None:
    import subprocess
    import sys

    code = (
        "import gc, gdlab.cli as cli; "
        "cli.console_main = lambda: print(gc.isenabled(), gc.get_freeze_count() > 0); "
        "import gdlab.launch; gdlab.launch.main()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr
