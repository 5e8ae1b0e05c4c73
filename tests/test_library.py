"""gdlab as a library: the commands run in this process, return their exit code and leave the
interpreter as they found it, so they can be called again and again."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import gdlab.experiment
from gdlab import check, cli, report

QUICK = ["trainer.steps=3", "logger.plots=false", "trainer.progress=false"]


@pytest.fixture(autouse=True)
def no_full_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


def global_state() -> tuple:
    """What a call must leave as it found it."""
    root = logging.getLogger()
    return (
        os.environ.get("HYDRA_FULL_ERROR"),
        GlobalHydra.instance().is_initialized(),
        HydraConfig.initialized(),
        list(root.handlers),
        root.level,
        list(sys.argv),
    )


def test_main_twice_in_a_row_as_a_fresh_process_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["gdlab", *QUICK, f"hydra.run.dir={tmp_path / 'a'}"])
    before = global_state()
    assert cli.main() == 0
    assert global_state() == before

    monkeypatch.setattr(sys, "argv", ["gdlab", "optimizer.lr=abc"])
    before = global_state()
    assert cli.main() == 2
    assert global_state() == before
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gdlab: error: optimizer.lr='abc'"), err

    monkeypatch.setattr(sys, "argv", ["gdlab", *QUICK, f"hydra.run.dir={tmp_path / 'c'}"])
    assert cli.main() == 0
    for run in ("a", "c"):
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["status"] == "finished" and metrics["steps"] == 3
        assert (tmp_path / run / ".hydra" / "config.yaml").exists()
        assert list((tmp_path / run).glob("events.out.tfevents.*"))
    # each run's log file holds its own run, and nothing is logged there once it is over
    logging.getLogger("gdlab").warning("after the runs")
    log_a = (tmp_path / "a" / "gdlab.log").read_text()
    assert "3 steps" in log_a and "after the runs" not in log_a
    assert str(tmp_path / "c") not in log_a


def test_main_returns_a_code_and_never_raises_system_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*QUICK, f"hydra.run.dir={tmp_path}"]) == 0
    assert (tmp_path / "metrics.json").exists()
    assert cli.main(["--help"]) == 0
    assert "objective" in capsys.readouterr().out
    assert cli.main(["--no-such-flag"]) == 2  # argparse's usage error
    assert cli.main(["objective=nope"]) == 2
    assert "objective=nope is not an option" in capsys.readouterr().err


def test_the_user_debug_switch_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(Exception, match="abc"):  # the traceback the user asked for
        cli.main(["optimizer.lr=abc"])
    assert os.environ["HYDRA_FULL_ERROR"] == "1"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    assert cli.main(["optimizer.lr=abc"]) == 2
    assert os.environ["HYDRA_FULL_ERROR"] == "0"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_returns_128_plus_the_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    real = gdlab.experiment.run_experiment

    def signalled(*args, **kwargs):  # the signal arrives while the run is being set up
        signal.raise_signal(signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(gdlab.experiment, "run_experiment", signalled)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main([*QUICK, f"hydra.run.dir={tmp_path}"]) == 128 + signum
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "interrupted"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_a_multirun_with_a_failed_job_returns_1_and_the_next_call_0(tmp_path: Path) -> None:
    sweep = ["-m", "objective.a=0,1", *QUICK]
    assert cli.main([*sweep, f"hydra.sweep.dir={tmp_path / 'bad'}"]) == 1
    assert (tmp_path / "bad" / "summary.csv").exists()
    # the failed sweep's verdict does not stick to the calls after it
    assert cli.main([*QUICK, f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    assert cli.main(["-m", "objective.a=1", *QUICK, f"hydra.sweep.dir={tmp_path / 'ok'}"]) == 0
    assert report.main([str(tmp_path / "bad"), "--no-plot"]) == 0


def test_check_and_report_return_their_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = global_state()
    assert check.main(["objective=quadratic", "check.points=1"]) == 0
    assert check.main(["check.points=abc"]) == 2
    assert check.main(["check.points=-1"]) == 2
    assert global_state() == before
    assert report.main([str(tmp_path / "missing")]) == 2
    assert report.main(["--top=-1", str(tmp_path)]) == 2
    assert report.main(["--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert "gdlab-check: error: check.points" in err and "gdlab-report: error:" in err


def test_import_gdlab_loads_no_objective_plugin_or_framework() -> None:
    code = (
        "import sys, gdlab\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith("
        "('gdlab.', 'hydra', 'hydra_plugins', 'torch', 'omegaconf')))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = proc.stdout.split()
    assert not [m for m in loaded if m.startswith(("gdlab.objectives", "hydra_plugins"))]
    assert not [m for m in loaded if m.split(".")[0] in {"torch", "hydra", "omegaconf"}], loaded
