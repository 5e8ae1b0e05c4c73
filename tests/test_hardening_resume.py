"""Resume and run directories never mix or lose runs (issue 15), one class of problem at a time:

paths that need quoting, two users of one directory, a new run over an old one, a checkpoint
from another run, the order of the final writes, refused resumes that still wrote, damaged
checkpoints, settings changed on resume, resuming somewhere else, and refusals that leave
empty directories behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import gdlab.sinks.metrics
from gdlab import rundir
from gdlab.checkpoint import CHECKPOINT_NAME, load_checkpoint
from gdlab.config import config_dir
from gdlab.errors import GdlabError
from gdlab.experiment import run_experiment
from gdlab.resume import prepare_resume
from tests.conftest import compose_config, read_metrics, run_cli, start_training
from tests.test_resume import StopAfter, comparable, scalars

QUICK = ["trainer.progress=false", "trainer.steps=40", "trainer.log_every=1"]
#: `gdlab ARGS` that receives SIGINT when it logs step STOP_AT, as if Ctrl-C were pressed then
STOP_AT_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from gdlab import cli, trainer
    original = trainer.Trainer._observe
    def observe(self, step, *args, **kwargs):
        if step == int(os.environ.get("STOP_AT", "5")):
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, step, *args, **kwargs)
    trainer.Trainer._observe = observe
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def interrupted_run(run_dir: Path, *overrides: str, stop_after: int = 6) -> Path:
    """A run stopped by a 'signal' after `stop_after` steps, made in this process."""
    args = [*QUICK, *overrides]
    result = run_experiment(
        compose_config(args), run_dir, overrides=args, interrupt=StopAfter(stop_after)
    )
    assert result.status == "interrupted"
    return run_dir


def cli_interrupted(tmp_path: Path, *args: str, cwd: Path | None = None):
    """The real command, stopped by SIGINT at step 5: its process (exit code 130)."""
    script = tmp_path / "stop_at.py"
    script.write_text(STOP_AT_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd or tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 130, proc.stdout + proc.stderr
    return proc


def resume(run_dir: Path, *extra: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return prepare_resume(run_dir, list(extra))


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gdlab: error: ")
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


# ----------------------------------------------------------------------- 1. quoting


NASTY_PATHS = [
    "/runs/objective=quadratic,optimizer.lr=0.1",
    "sweep [x]/job",
    "it's here",
    'say "hi"',
    "a'b\"c\\'d\\",
    "back\\slash",
    "$HOME/x",
    "a${x}b",
    "null",
    "2026",
    "1e5",
    "true",
    "{a:b}",
    "~/x",
    "tab\there",
    "ü/é",
    "-m",
    "/plain/run-dir_1.2/08-22-01-2871",
]


@pytest.mark.parametrize("path", NASTY_PATHS)
def test_resume_path_and_printed_command_survive_the_shell_and_hydra(path: str) -> None:
    """Any path: Hydra reads the override back as the path, and the printed command, run
    by bash, hands gdlab that override as one argument."""
    override = rundir.resume_override(path)
    value = OverridesParser.create().parse_override(override).value()
    assert OmegaConf.create({"resume": value}).resume == path  # interpolations stay text
    command = rundir.resume_command(path)
    assert command.startswith("gdlab ")
    argv = subprocess.run(
        ["bash", "-c", "printf '%s\\0' " + command.removeprefix("gdlab ")],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")[:-1]
    assert [a.decode() for a in argv] == [override]


@pytest.mark.slow
def test_printed_command_resumes_an_interrupted_sweep_job_in_place(tmp_path: Path) -> None:
    """A sweep job's directory holds '=' and ','; here the sweep's holds '[', a quote and a
    space too. The printed line, pasted into bash, continues the job where it is."""
    sweep_dir = tmp_path / "sweep [1] it's"
    proc = cli_interrupted(
        tmp_path,
        "-m",
        "optimizer.lr=0.1,0.2",
        *QUICK,
        f"hydra.sweep.dir={rundir.hydra_quote(sweep_dir)}",
    )
    (line,) = [x for x in proc.stdout.splitlines() if "continue with: " in x]
    command = line.split("continue with: ", 1)[1]
    (job_dir,) = [p for p in sweep_dir.iterdir() if p.is_dir()]
    assert "=" in job_dir.name and "," in job_dir.name
    assert read_metrics(job_dir)["status"] == "interrupted"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "resuming at step" in done.stdout
    metrics = read_metrics(job_dir)
    assert metrics["status"] == "finished" and metrics["steps"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([sweep_dir.name, "stop_at.py"])


# ----------------------------------------------------------------------- 2. the lock


def hold_lock_in_a_child(run_dir: Path) -> subprocess.Popen[str]:
    code = (
        "import sys, time\n"
        "from gdlab import rundir\n"
        f"rundir.lock({str(run_dir)!r})\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


def test_lock_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    child = hold_lock_in_a_child(tmp_path)
    try:
        with pytest.raises(
            GdlabError, match=rf"in use by another gdlab process \(pid {child.pid} "
        ) as err:
            rundir.lock(tmp_path)
        assert "\n" not in str(err.value)
    finally:
        child.kill()
        child.wait()
    assert (tmp_path / rundir.LOCK_NAME).exists()  # SIGKILL: the file stays, the lock doesn't
    assert rundir.lock(tmp_path) is True
    assert rundir.lock(tmp_path) is False  # already ours
    rundir.release(tmp_path)
    assert not (tmp_path / rundir.LOCK_NAME).exists()


def start_long_run(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """A command that trains until stopped; returns once its first line is out."""
    return start_training(*args, cwd=cwd, first_line="quadratic on cpu")


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.02)


LONG = ["trainer.steps=100000000", "trainer.tol=0", "trainer.progress=false", "logger.plots=false"]


@pytest.mark.slow
def test_a_directory_in_use_is_refused_to_a_second_command(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = start_long_run(
        *LONG, "trainer.checkpoint_every=1000", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    wait_for(run_dir / CHECKPOINT_NAME)
    try:
        for second in ([f"trainer.resume={run_dir}"], [f"hydra.run.dir={run_dir}"]):
            line = one_error_line(run_cli(*second, cwd=tmp_path))
            assert f"in use by another gdlab process (pid {first.pid} " in line
            assert "hydra.run.dir=" in line  # the holder's command
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130
    assert not (run_dir / rundir.LOCK_NAME).exists()
    # two resumes at once: the second is refused while the first trains
    resumed = start_long_run(f"trainer.resume={run_dir}", cwd=tmp_path)
    try:
        line = one_error_line(run_cli(f"trainer.resume={run_dir}", cwd=tmp_path))
        assert f"pid {resumed.pid} " in line
    finally:
        resumed.send_signal(signal.SIGINT)
        resumed.communicate(timeout=60)
    assert resumed.returncode == 130
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # two sessions, no third
    steps = [s for s, _ in scalars(run_dir)["train/loss"]]
    assert len(steps) == len(set(steps))


@pytest.mark.slow
def test_a_killed_run_leaves_no_lock_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start_long_run(
        *LONG, "trainer.checkpoint_every=1000", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    wait_for(run_dir / CHECKPOINT_NAME)
    proc.kill()
    proc.communicate(timeout=60)
    step = load_checkpoint(run_dir)["step"]
    done = run_cli(f"trainer.resume={run_dir}", f"trainer.steps={step + 5}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_metrics(run_dir)["steps"] == step + 5


# ----------------------------------------------------------------------- 3. overwrites


def crashed_without_checkpoint(run_dir: Path) -> None:
    interrupted_run(run_dir)
    (run_dir / CHECKPOINT_NAME).unlink()
    (run_dir / "metrics.json").unlink()


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        lambda d: run_cli(*QUICK, f"hydra.run.dir={d}"),
        interrupted_run,
        crashed_without_checkpoint,
    ],
    ids=["finished", "interrupted", "crashed"],
)
def test_a_new_run_never_overwrites_another(tmp_path: Path, make) -> None:
    run_dir = tmp_path / "run"
    make(run_dir)
    before = snapshot(run_dir)
    line = one_error_line(
        run_cli(*QUICK, "optimizer.lr=0.2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    )
    assert "holds another run" in line
    assert "choose another hydra.run.dir" in line and f"trainer.resume={run_dir}" in line
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------------- 4. foreign checkpoints


@pytest.mark.parametrize(
    ("other", "named"),
    [(["objective=linear_regression"], "objective"), (["optimizer.lr=0.05"], "optimizer.lr")],
)
def test_a_checkpoint_from_another_run_is_refused(tmp_path: Path, other, named) -> None:
    own, foreign = tmp_path / "own", tmp_path / "foreign"
    interrupted_run(own)
    interrupted_run(foreign, *other)
    for run_dir, overrides in ((own, QUICK), (foreign, [*QUICK, *other])):
        (run_dir / ".hydra").mkdir()  # what the command records beside the checkpoint
        OmegaConf.save(compose_config(overrides), run_dir / ".hydra" / "config.yaml")
    resume(own)  # its own checkpoint is fine
    shutil.copy(foreign / CHECKPOINT_NAME, own / CHECKPOINT_NAME)
    with pytest.raises(GdlabError, match=rf"not the checkpoint of the run in .*{named}") as err:
        resume(own)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------- 5. order of writes


@pytest.mark.parametrize("failing", ["metrics", "plots"])
def test_a_run_counts_as_ended_only_once_its_files_are_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A failure while the final files are written leaves a checkpoint to resume from, and
    the resume writes them: the result is never lost behind an 'already ended'."""
    args = [*QUICK, "trainer.checkpoint_every=10"]
    straight = tmp_path / "straight"
    run_experiment(compose_config(args), straight, overrides=args)
    run_dir = tmp_path / "run"

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    if failing == "metrics":
        monkeypatch.setattr(gdlab.sinks.metrics, "write_metrics", broken)
    else:
        from gdlab.sinks.plots import PlotSink

        monkeypatch.setattr(PlotSink, "finish", broken)
    with pytest.raises(OSError):
        run_experiment(compose_config(args), run_dir, overrides=args)
    assert load_checkpoint(run_dir)["status"] == "running"  # not 'finished'
    monkeypatch.undo()
    cfg, state, overrides = resume(run_dir)
    final = run_experiment(cfg, run_dir, resume_state=state, overrides=overrides)
    assert final.status == "finished" and load_checkpoint(run_dir)["status"] == "finished"
    assert comparable(read_metrics(run_dir)) == comparable(read_metrics(straight))


# ----------------------------------------------------------------------- 6 + 8. refused resumes


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("optimizer.lr=0.2", "optimizer.lr (0.1 -> 0.2)"),
        ("optimizer.momentum=0.5", "optimizer.momentum"),
        ("optimizer=adam", "optimizer.name (sgd -> adam)"),
        ("optimizer.schedule.name=cosine", "optimizer.schedule.name"),
        ("trainer.seed=3", "trainer.seed"),
        ("trainer.tol=0.1", "trainer.tol"),
        ("sharpness.every=5", "sharpness.every"),
    ],
)
def test_changed_settings_are_refused_naming_them(tmp_path: Path, change: str, named: str) -> None:
    run_dir = interrupted_run(tmp_path / "run")
    with pytest.raises(GdlabError, match="a resumed run keeps its settings") as err:
        resume(run_dir, change)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_budget_cadence_and_progress_may_change_on_resume(tmp_path: Path) -> None:
    run_dir = interrupted_run(tmp_path / "run")
    cfg, _, _ = resume(
        run_dir,
        "trainer.steps=60",
        "trainer.log_every=3",
        "trainer.checkpoint_every=7",
        "trainer.progress=false",
        "optimizer.lr=0.1",  # the same value is no change
    )
    assert (cfg.trainer.steps, cfg.trainer.log_every, cfg.trainer.checkpoint_every) == (60, 3, 7)


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cli_interrupted(tmp_path, *QUICK, f"hydra.run.dir={run_dir}")
    before = snapshot(run_dir)
    refusals = {
        "optimizer.lr=-1": "optimizer.lr",  # a changed setting (the example)
        "trainer.log_every=0": "trainer.log_every=0 must be >= 1",  # a bad value of a free key
        "trainer.steps=2": "below the checkpoint's step",
        "objective.a=2": "objective",
    }
    if not torch.cuda.is_available():
        refusals["device=cuda"] = "no CUDA device"
    for change, words in refusals.items():
        line = one_error_line(run_cli(f"trainer.resume={run_dir}", change, cwd=tmp_path))
        assert words in line, line
        assert snapshot(run_dir) == before, change


# ----------------------------------------------------------------------- 7. damaged checkpoints


def rewrite(path: Path, **fields) -> None:
    state = torch.load(path, weights_only=True)
    torch.save({**state, **fields}, path)


DAMAGE = {
    "random-bytes": (lambda p: p.write_bytes(os.urandom(4096)), "not a file torch.save writes"),
    "text": (lambda p: p.write_text("hello, I am a text file\n"), "not a file torch.save writes"),
    "empty": (lambda p: p.write_bytes(b""), "the file is empty"),
    "config-not-yaml": (
        lambda p: rewrite(p, config_yaml="objective: {a: [1,\n  b"),
        "its stored config is not valid YAML",
    ),
    "config-a-list": (lambda p: rewrite(p, config_yaml="- 1\n- 2\n"), "not a mapping"),
    "config-without-objective": (lambda p: rewrite(p, config_yaml="x: 1\n"), "has no objective"),
    "negative-step": (lambda p: rewrite(p, step=-3), "its step -3 is negative"),
    "boolean-step": (lambda p: rewrite(p, step=True), "'step' is missing or not an integer"),
    "boolean-version": (lambda p: rewrite(p, version=True), "'version'"),
    "unknown-status": (lambda p: rewrite(p, status="paused"), "its status 'paused' is none of"),
    "overrides-not-strings": (lambda p: rewrite(p, overrides=[1, 2]), "overrides are not all"),
    "pickled-object": (
        lambda p: torch.save(GdlabError("x"), p),
        "it holds Python objects, not only tensors and plain data",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_one_line_saying_what_is_wrong(tmp_path: Path, kind: str) -> None:
    run_dir = interrupted_run(tmp_path / "run")
    damage, words = DAMAGE[kind]
    damage(run_dir / CHECKPOINT_NAME)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(GdlabError) as err:
            resume(run_dir)
    message = str(err.value)
    assert words in message, message
    assert "\n" not in message and len(message) < 400
    assert not caught, [str(w.message) for w in caught]  # no torch warning first


@pytest.mark.slow
def test_a_checkpoint_with_a_broken_config_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    run_dir = interrupted_run(tmp_path / "run")
    rewrite(run_dir / CHECKPOINT_NAME, config_yaml="objective: {a: [1,\n  b")
    line = one_error_line(run_cli(f"trainer.resume={run_dir}", cwd=tmp_path))
    assert "its stored config is not valid YAML" in line


# ----------------------------------------------------------------------- 9. resume elsewhere


@pytest.mark.slow
def test_a_resume_continues_in_place_or_not_at_all(tmp_path: Path) -> None:
    run_dir = interrupted_run(tmp_path / "run")
    before = snapshot(run_dir)
    elsewhere = tmp_path / "elsewhere"
    line = one_error_line(
        run_cli(f"trainer.resume={run_dir}", f"hydra.run.dir={elsewhere}", cwd=tmp_path)
    )
    assert "continues that run in its own directory" in line and "hydra.run.dir" in line
    for multirun in (
        ["-m", f"trainer.resume={run_dir}"],
        ["hparams_search=optuna", f"trainer.resume={run_dir}"],
    ):
        line = one_error_line(run_cli(*multirun, cwd=tmp_path))
        assert "does not go with a multirun" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no new directory at all
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------------- 10. no leftovers


REFUSED = [
    ["optimizer.lr=-1"],
    ["objective.a=0"],  # found while the objective is built
    ["optimizer.lrr=1"],
    ["device=tpu"],
    ["trainer.resume=/nonexistent/run"],
    ["optimizer.lr=-1", "hydra.run.dir=made/for/it"],
    ["-m", "objective=nope,quadratic"],
    ["-m", "optimizer.lrr=1,2", "hydra.sweep.dir=sweeps/s"],
]


@pytest.mark.slow
@pytest.mark.parametrize("args", REFUSED, ids=[" ".join(a) for a in REFUSED])
def test_a_refused_command_leaves_no_directory(tmp_path: Path, args: list[str]) -> None:
    one_error_line(run_cli(*args, cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_refused_run_leaves_the_users_empty_directory_empty(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    one_error_line(run_cli("optimizer.lr=-1", f"hydra.run.dir={mine}", cwd=tmp_path))
    assert mine.is_dir() and list(mine.iterdir()) == []
