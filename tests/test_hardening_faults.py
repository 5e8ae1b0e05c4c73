"""Faults a run meets from outside: nothing torn, one line, exit codes as documented.

- a full disk at the start, in the middle (the event file, a checkpoint, the log file) and at
  the end (the plots): one line naming the directory, exit code 2, no torn, empty or temporary
  file, the last good checkpoint kept;
- a run directory that takes no files (read-only, /proc/self): one line, exit code 2;
- a console whose reader goes away or that is closed: no traceback, the run's files complete,
  the command's own exit code;
- Ctrl-C while `gdlab` imports, and for a whole joblib sweep: exit 130 quietly, every started
  job checkpointed and marked interrupted.

The disk tests mount small tmpfs file systems (root only); where that is not possible they are
skipped.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml

from gdlab.atomic import DiskFull, write_bytes_atomic
from gdlab.checkpoint import CHECKPOINT_NAME, save_checkpoint
from gdlab.entry import QuietStream, RunLogHandler, run_app
from gdlab.events import LogRecord, RunInfo, RunResult
from gdlab.sinks.event_file import EventFile, ScalarEvents, masked_crc32c
from tests.conftest import REPO, run_cli

Mount = Callable[..., Path]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """`tmpfs(size, name="disk", read_only=False)`: a fresh tmpfs of `size` under tmp_path
    (created with `run` as an empty directory when read-only); unmounted afterwards."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted: list[Path] = []

    def mount(size: str, name: str = "disk", read_only: bool = False) -> Path:
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        if read_only:
            (path / "run").mkdir()
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def one_error_line(stderr: str) -> str:
    """The only line on stderr, a `gdlab: error:` line; no traceback anywhere."""
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gdlab: error: "), stderr
    return lines[0].removeprefix("gdlab: error: ")


def records(path: Path) -> int:
    """The number of TFRecords in an event file, each checked whole (length and data CRCs);
    the file must end exactly after the last one."""
    data = path.read_bytes()
    count = offset = 0
    while offset < len(data):
        header = data[offset : offset + 8]
        assert len(header) == 8, f"{path}: torn record header at {offset}"
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        assert header_crc == masked_crc32c(header), f"{path}: bad length CRC at {offset}"
        body = data[offset + 12 : offset + 12 + length]
        tail = data[offset + 12 + length : offset + 16 + length]
        assert len(body) == length and len(tail) == 4, f"{path}: torn record at {offset}"
        assert struct.unpack("<I", tail)[0] == masked_crc32c(body), f"{path}: bad CRC"
        offset += 16 + length
        count += 1
    return count


def assert_nothing_torn(root: Path) -> None:
    """No temporary or empty file under `root`, and every file of a run whole: PNGs end with
    their IEND chunk, JSON and YAML parse, checkpoints load, event files hold whole records."""
    for path in root.rglob("*"):
        if path.is_dir() or path.name == ".gdlab.lock":
            continue
        assert not path.name.endswith(".tmp"), f"temporary file left: {path}"
        assert path.stat().st_size > 0, f"empty file: {path}"
        if path.suffix == ".png":
            assert path.read_bytes().endswith(b"IEND\xaeB`\x82"), f"torn PNG: {path}"
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            assert yaml.safe_load(path.read_text()) is not None, path
        elif path.name == CHECKPOINT_NAME:
            torch.load(path, weights_only=True)
        elif path.name.startswith("events.out.tfevents"):
            assert records(path) > 0


def checkpoint_of(run_dir: Path) -> dict:
    return torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)


def fill(disk: Path) -> None:
    """Write a filler file until the disk takes no more."""
    with open(disk / "filler", "wb", buffering=0) as handle:
        try:
            while handle.write(b"\0" * 4096):
                pass
        except OSError as err:
            assert err.errno == errno.ENOSPC


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended early ({proc.returncode}):\n{out}\n{err}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def gdlab(*args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gdlab", *args],
        stdout=popen.pop("stdout", subprocess.PIPE),
        stderr=subprocess.PIPE,
        text=True,
        **popen,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- a full disk: writers


@pytest.mark.parametrize("writer", ["bytes", "checkpoint"])
def test_an_atomic_write_on_a_full_disk_keeps_the_old_file(tmpfs: Mount, writer: str) -> None:
    """metrics.json, the plots (bytes) and checkpoints (torch.save, which reports a full disk
    as a RuntimeError): the previous file stays whole, no temporary file is left, and the
    error is one line naming the directory."""
    disk = tmpfs("16k")

    def write(size: int) -> None:
        if writer == "bytes":
            write_bytes_atomic(disk / "metrics.json", b"7" * size)
        else:
            save_checkpoint(disk, {"step": size, "params": {"x": torch.zeros(size // 4)}})

    write(1000)
    before = sorted(p.name for p in disk.iterdir())
    old = (disk / before[0]).read_bytes()
    with pytest.raises(DiskFull) as caught:
        write(40_000)
    message = f"the disk is full: cannot write {disk} (No space left on device)"
    if writer == "checkpoint":  # the line says so, for a run to be resumed
        message += "; its last checkpoint is kept, to resume from once there is space"
    assert str(caught.value) == message
    assert str(pickle.loads(pickle.dumps(caught.value))) == message  # from a joblib worker
    assert sorted(p.name for p in disk.iterdir()) == before
    assert (disk / before[0]).read_bytes() == old
    if writer == "checkpoint":
        assert checkpoint_of(disk)["step"] == 1000


def test_the_event_file_on_a_full_disk_keeps_whole_records(tmpfs: Mount) -> None:
    disk = tmpfs("16k")
    writer = EventFile(disk, max_pending=7)
    encoder = ScalarEvents()
    with pytest.raises(DiskFull, match=re.escape(f"cannot write {disk} (")):
        for step in range(100_000):
            writer.add_serialized(encoder.encode(step, 1.0, [("train/loss", 1.0), ("x", 2.0)]))
    writer.add_serialized(encoder.encode(0, 1.0, [("train/loss", 1.0)]))  # takes nothing more
    writer.close()  # and closes without a second error
    assert records(writer.path) > 100

    fill(disk)  # not even room for the first record: no event file at all
    with pytest.raises(DiskFull):
        EventFile(disk)
    assert [p.name for p in disk.iterdir() if p.name.startswith("events")] == [writer.path.name]


def test_plots_on_a_full_disk_are_an_error_and_leave_no_png(tmpfs: Mount) -> None:
    """A plot that cannot be drawn is skipped (tests/test_plots.py); one that cannot be
    written is the run's error: no torn or empty PNG."""
    from gdlab.sinks.plots import PlotSink

    disk = tmpfs("8k")
    sink = PlotSink(disk)
    sink.start(RunInfo("quadratic", "cpu", "float32", 2, 1))
    for step, x in enumerate([0.0, 1.0, 2.0]):
        sink.log(LogRecord(step, 1.0 / (step + 1), 1.0, 0.1, {"x": torch.tensor(x)}))
    with pytest.raises(DiskFull):
        sink.finish(RunResult("finished", 2, 0.3, 1.0, {"x": torch.tensor(2.0)}, 0.01))
    assert list(disk.iterdir()) == []


def test_the_log_file_on_a_full_disk_is_whole_lines_and_one_error(tmpfs: Mount, capfd) -> None:
    """gdlab.log (RunLogHandler): no "--- Logging error ---" traceback per record, no torn
    last line, and the command ends with one line and exit code 2."""
    disk = tmpfs("4k")
    logger = logging.getLogger("gdlab.tests.full_log")

    def app() -> None:
        handler = RunLogHandler(str(disk / "gdlab.log"))
        logger.addHandler(handler)
        try:
            for i in range(200):
                logger.warning("line %d %s", i, "x" * 100)
        finally:
            logger.removeHandler(handler)
            handler.close()

    assert run_app(app, "gdlab") == 2
    err = capfd.readouterr().err
    assert one_error_line(err) == f"the disk is full: cannot write {disk} (No space left on device)"
    lines = (disk / "gdlab.log").read_text().split("\n")
    assert lines[-1] == "" and len(lines) > 10
    assert all(re.fullmatch(r"line \d+ x{100}", line) for line in lines[:-1])


def test_the_run_log_is_written_by_gdlabs_handler() -> None:
    """configs/hydra/job_logging/gdlab.yaml names RunLogHandler for gdlab.log."""
    config = yaml.safe_load((REPO / "configs/hydra/job_logging/gdlab.yaml").read_text())
    assert config["handlers"]["file"]["class"] == "gdlab.entry.RunLogHandler"


# --------------------------------------------------------------------------- a full disk: runs

QUICK = ("trainer.progress=false", "trainer.tol=0")


@pytest.mark.slow
def test_a_full_disk_at_the_start_is_one_line_and_leaves_nothing_torn(tmpfs: Mount) -> None:
    disk = tmpfs("8k")  # not even Hydra's .hydra/ fits
    proc = run_cli(f"hydra.run.dir={disk / 'run'}", "trainer.steps=5", *QUICK)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert line == f"the disk is full: cannot write {disk / 'run'} (No space left on device)"
    assert_nothing_torn(disk)


@pytest.mark.slow
def test_a_full_disk_in_the_middle_keeps_the_last_checkpoint(tmpfs: Mount) -> None:
    """The event file fills the disk while the run goes: whole records, the last good
    checkpoint, no result that pretends to be whole."""
    disk = tmpfs("256k")
    run_dir = disk / "run"
    proc = run_cli(
        f"hydra.run.dir={run_dir}",
        "trainer.steps=10000000",
        "trainer.log_every=1",
        "trainer.checkpoint_every=500",
        *QUICK,
    )
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert line.startswith(f"the disk is full: cannot write {run_dir} (No space left on device)")
    assert line.endswith("its last checkpoint is kept, to resume from once there is space")
    state = checkpoint_of(run_dir)
    assert state["status"] == "running" and state["step"] > 0 and state["step"] % 500 == 0
    assert not (run_dir / "metrics.json").exists()
    assert_nothing_torn(disk)


@pytest.mark.slow
def test_a_disk_filled_during_a_run_fails_the_next_checkpoint_not_the_last(tmpfs: Mount) -> None:
    disk = tmpfs("1m")
    run_dir = disk / "run"
    proc = gdlab(
        f"hydra.run.dir={run_dir}",
        "logger=none",
        "trainer.steps=100000000",
        "trainer.checkpoint_every=20000",
        *QUICK,
    )
    wait_for((run_dir / CHECKPOINT_NAME).exists, proc)
    fill(disk)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "its last checkpoint is kept" in one_error_line(err)
    state = checkpoint_of(run_dir)
    assert state["status"] == "running" and state["step"] % 20000 == 0
    (disk / "filler").unlink()
    assert_nothing_torn(disk)


@pytest.mark.slow
def test_a_full_disk_at_the_end_leaves_no_torn_plot(tmpfs: Mount) -> None:
    """Everything fits but the plots: one line, no torn or empty PNG (they were written in
    place before, and a run ended with exit code 0 and empty PNGs)."""
    run = ("logger.tensorboard=false", "trainer.steps=20", *QUICK)
    roomy = tmpfs("1m", name="a")
    assert run_cli(f"hydra.run.dir={roomy / 'run'}", "logger.plots=false", *run).returncode == 0
    stats = os.statvfs(roomy)
    used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
    disk = tmpfs(f"{used + 16384}", name="b")  # 4 pages to spare: less than any plot
    run_dir = disk / "run"
    proc = run_cli(f"hydra.run.dir={run_dir}", "logger.plots=true", *run)
    assert proc.returncode == 2, proc.stderr
    assert one_error_line(proc.stderr).startswith(f"the disk is full: cannot write {run_dir} (")
    assert_nothing_torn(disk)


# --------------------------------------------------------------------------- unwritable places


@pytest.mark.slow
@pytest.mark.parametrize("place", ["read-only run dir", "under a read-only dir", "/proc/self"])
def test_a_place_that_takes_no_files_is_one_line(tmpfs: Mount, place: str) -> None:
    if place == "/proc/self":
        run_dir, expected = Path("/proc/self"), "cannot write /proc/self: "
    else:
        disk = tmpfs("64k", read_only=True)
        run_dir = disk / ("run" if place == "read-only run dir" else "new")
        expected = f"cannot write {run_dir}: Read-only file system"
    proc = run_cli(f"hydra.run.dir={run_dir}", "trainer.steps=3", *QUICK)
    assert proc.returncode == 2
    assert one_error_line(proc.stderr).startswith(expected)


# --------------------------------------------------------------------------- closed streams


def test_a_reader_that_goes_away_is_no_error() -> None:
    read, write = os.pipe()
    os.close(read)
    with open(write, "w", closefd=True) as stream:
        quiet = QuietStream(stream)
        quiet.write("gdlab: a line\n" * 10_000)
        quiet.flush()
        quiet.write("and another\n")
        assert quiet.lost


def run_files_complete(run_dir: Path) -> None:
    for name in ("metrics.json", CHECKPOINT_NAME, "loss.png", "landscape.png", "gdlab.log"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "finished"
    assert "run directory" in (run_dir / "gdlab.log").read_text()
    assert_nothing_torn(run_dir)


@pytest.mark.slow
def test_gdlab_piped_into_head_finishes_its_run_quietly(tmp_path: Path) -> None:
    """`gdlab | head -1`: the reader goes away after the first line; the run goes on."""
    run_dir = tmp_path / "run"
    proc = gdlab(f"hydra.run.dir={run_dir}", "trainer.steps=20000", *QUICK)
    assert proc.stdout is not None and proc.stderr is not None
    assert "quadratic on cpu" in proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""
    run_files_complete(run_dir)


@pytest.mark.slow
def test_gdlab_cfg_into_a_closed_pipe_and_with_stdout_closed(tmp_path: Path) -> None:
    """`gdlab --cfg job | true` exits 0 quietly; `gdlab >&-` runs with its files complete
    (no file of the run takes the closed descriptor's number)."""
    proc = gdlab("--cfg", "job")
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    assert proc.stderr is not None and proc.stderr.read() == ""

    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "gdlab", f"hydra.run.dir={run_dir}", *QUICK]
    closed = subprocess.run(
        ["bash", "-c", 'exec "$@" >&-', "bash", *args], capture_output=True, text=True
    )
    assert closed.returncode == 0, closed.stderr
    assert "Traceback" not in closed.stderr
    run_files_complete(run_dir)


@pytest.mark.slow
def test_gdlab_report_into_a_closed_pipe(tmp_path: Path) -> None:
    """`gdlab-report DIR | true` and `gdlab-report DIR >&-`: exit 0, no traceback."""
    sweep = tmp_path / "sweep"
    made = run_cli("-m", "optimizer.lr=0.1,0.2", "trainer.steps=3", "logger=none", *QUICK,
                   f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert made.returncode == 0, made.stderr
    report = [str(Path(sys.executable).with_name("gdlab-report")), str(sweep)]
    proc = subprocess.Popen(report, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err
    closed = subprocess.run(
        ["bash", "-c", 'exec "$@" >&-', "bash", *report], capture_output=True, text=True
    )
    assert closed.returncode == 0 and "Traceback" not in closed.stderr, closed.stderr


# --------------------------------------------------------------------------- Ctrl-C

#: `gdlab` with an audit hook that stops inside `import torch` until it is signalled
IMPORTING = """
import os, sys, time
def hook(event, args):
    if event == "import" and args[0] == "torch" and not getattr(hook, "done", False):
        hook.done = True
        os.write(2, b"importing torch\\n")
        time.sleep(60)
sys.addaudithook(hook)
sys.argv = ["gdlab", "trainer.steps=3", "hydra.run.dir=" + sys.argv[1]]
from gdlab.launch import main
main()
"""


@pytest.mark.slow
def test_ctrl_c_while_gdlab_imports_exits_130_quietly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", IMPORTING, str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    assert proc.stderr.readline() == "importing torch\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip() == "gdlab: interrupted"
    assert not (tmp_path / "run").exists()


def test_a_workers_runs_take_the_sweeps_stop_request_as_a_first_ctrl_c(monkeypatch) -> None:
    """In a joblib worker: a signal noted while no run listened stops the next run at once;
    the parent's STOP_REQUEST counts as a first Ctrl-C at most, even after one."""
    from gdlab import interrupts

    monkeypatch.setattr(interrupts, "WORKER", interrupts.WorkerSignals())
    monkeypatch.setattr(interrupts.WORKER, "active", True)

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(interrupts.os, "_exit", exit_now)
    stop = interrupts.GracefulInterrupt()
    stop._handle(interrupts.STOP_REQUEST, None)
    assert stop.requested == signal.SIGINT
    stop._handle(signal.SIGINT, None)  # the terminal's Ctrl-C, after the parent's request
    stop._handle(interrupts.STOP_REQUEST, None)
    with pytest.raises(SystemExit) as second:
        stop._handle(signal.SIGINT, None)
    assert second.value.code == 130

    assert interrupts.WORKER.since(time.time() + 10) is None  # noted before: stale
    interrupts.WORKER.note(signal.SIGTERM)
    assert interrupts.WORKER.since(0.0) == signal.SIGTERM
    with interrupts.GracefulInterrupt() as adopted:  # a signal while the job was set up
        assert adopted.requested == signal.SIGTERM


JOBLIB_SWEEP = (
    "-m",
    "objective=quadratic",
    "optimizer.lr=0.01,0.02,0.03",
    "trainer.steps=100000000",
    "trainer.log_every=100000",
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
    *QUICK,
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c-to-the-group", "sigterm-to-the-parent"],
)
def test_a_joblib_sweep_stopped_by_a_signal_checkpoints_its_jobs(
    tmp_path: Path, signum: int, to_group: bool
) -> None:
    """Ctrl-C reaches the parent and its workers at once; SIGTERM from a scheduler may reach
    the parent alone, which asks the workers to stop. Either way: no traceback, every job that
    started is checkpointed and interrupted, none starts after, exit 128 + signal."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = gdlab(*JOBLIB_SWEEP, f"hydra.sweep.dir={sweep}", start_new_session=True)
    wait_for(lambda: len(list(sweep.glob(f"*/{CHECKPOINT_NAME}"))) >= 2, proc, timeout=150)
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    started = [job for job in sweep.iterdir() if (job / "gdlab.log").exists()]
    assert len(started) == 2, started
    for job in started:
        assert json.loads((job / "metrics.json").read_text())["status"] == "interrupted"
        assert checkpoint_of(job)["status"] == "interrupted"
        assert_nothing_torn(job)
