"""A million-member population over one worker and over two: does it scale on this machine?

The workload is the tutorial regression (`experiment=linear_regression`: 100 samples, one
feature, 200 steps, float32) as ONE population sweep of about --members settings (default
1,000,000): --lrs learning rates in (0, 1.2] times as many seeds as it takes, cut into jobs of
--max-members (default 125,000: 8 jobs), run as the whole command a user types:

  gdlab -m hydra/sweeper=population experiment=linear_regression 'trainer.seed=range(0,S)'
        'optimizer.lr=range(...)' hydra.sweeper.max_members=M hydra.sweeper.compile=true
        logger.plots=false hydra/launcher=joblib hydra.launcher.n_jobs=W

with W = 1 and W = 2 workers (--workers). --launcher ray: `hydra/launcher=ray` with a Ray
started for the sweep on W CPUs (`++hydra.launcher.ray.init.num_cpus=W`) and one CPU per task
(`++hydra.launcher.ray.remote.num_cpus=1`). The seeds are the outer axis, so every job holds
whole rows of all learning rates and the jobs cost the same (the large lrs diverge and stop
early; jobs sliced along lr would not). Each command is confined to W cores (its CPU
affinity: the first W of this script's), so gdlab's thread rule gives every job one torch
thread and W workers get exactly W cores: t(1 worker) is the command on one core, and with
joblib's n_jobs=1 the jobs run in gdlab's own process. --no-pin leaves the affinity alone
(then one joblib worker runs torch on every core). OMP_NUM_THREADS=1 for the main process.

Measured for each command (median of --repeats; the W = 1 and W = 2 runs alternate):

  whole command   wall time of the process, from start to exit (planning the members, the
                  jobs, the sweep summary of a row per member).
  jobs' phase     from the first job's start to the last job's end, read back from the
                  sweep's files: a job starts when Hydra writes its `.hydra/` and ends when
                  it writes `population.json` (and its last log line).
  training        each job's training loop (`wall_time_s` in its `population.json`, the
                  compile included where a worker compiles), summed over the jobs; also one
                  job's, the median over the jobs (without the compiles, when there are more
                  jobs than workers).
  CPU time        user + system seconds of the process tree (psutil, each process's last
                  sample), and cores busy = CPU time / wall time: below W when the command
                  waits, or when other work on the machine takes the cores.
  peak memory     the process tree's resident memory (psutil, sampled every --sample s: the
                  command and every descendant, joblib's or Ray's worker processes included)
                  at its largest; shared pages (torch's libraries) count once per process, so
                  this is an upper bound. Per member: that peak / members (fixed costs
                  included). Also ru_maxrss from os.wait4: the gdlab process itself and the
                  descendants it reaped, i.e. the main process when the jobs run in workers.
  setting-steps/s members x steps / seconds (nominal: members that stop early count their
                  whole budget; the member-steps actually run are printed too).

Scaling efficiency = t(1 worker) / (W x t(W workers)) for the whole command and for the jobs'
phase, against the target >= 0.8 on 2 cores; and a million members in one command within
this machine's memory (peak below MemTotal, exit code 0): PASS or MISS lines. A warm-up
command (2,000 members, 10 steps) fills inductor's cache first (--no-warmup skips it), so that
neither timed command pays a cold compile. A command still running --exit-grace seconds after
writing its summary.md is killed and timed to that file (and a NOTE says so): gdlab can wait at
exit for joblib's idle worker processes until their idle timeout. Trailing arguments are more
overrides for every command.

    .venv/bin/python scripts/bench_scale.py                       # 1M members: a few minutes
    .venv/bin/python scripts/bench_scale.py --repeats 3 --launcher ray
    .venv/bin/python scripts/bench_scale.py --members 20000 --max-members 5000 --compile false

Outputs go to a temporary directory (--tmp-dir to choose its parent), deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_population import mem_total

WORKLOAD = ["experiment=linear_regression"]
LR_MAX = 1.2
EFFICIENCY_TARGET = 0.8
MILLION = 1_000_000
POPULATION_JSON = "population.json"


# --- pure helpers (tested in tests/test_scale.py) ---------------------------------------------


def grid(members: int, lrs: int) -> tuple[int, int]:
    """(seeds, lrs) of the sweep: `lrs` learning rates (fewer if members is smaller) times
    the seeds it takes to reach at least `members` settings."""
    if members < 1 or lrs < 1:
        raise ValueError("members and lrs must be >= 1")
    n_lr = min(lrs, members)
    return math.ceil(members / n_lr), n_lr


def lr_range(k: int) -> str:
    """`optimizer.lr=range(...)`: k learning rates evenly spaced in (0, LR_MAX]."""
    step = LR_MAX / k
    return f"optimizer.lr=range({step!r},{LR_MAX + step / 2!r},{step!r})"


def job_count(members: int, max_members: int | None) -> int:
    """How many population jobs the sweeper makes of `members` settings."""
    return 1 if not max_members else math.ceil(members / max_members)


def sweep_overrides(
    members: int,
    lrs: int,
    max_members: int | None,
    steps: int,
    workers: int,
    launcher: str = "joblib",
    plots: bool = False,
    compile_choice: str = "true",
) -> list[str]:
    """The overrides of `gdlab -m` for one timed command (the sweep dir apart)."""
    seeds, n_lr = grid(members, lrs)
    overrides = [
        "hydra/sweeper=population",
        *WORKLOAD,
        f"trainer.seed=range(0,{seeds})",  # outer axis: each job gets whole rows of lrs
        lr_range(n_lr),
        f"trainer.steps={steps}",
        f"hydra.sweeper.compile={compile_choice}",
    ]
    if max_members:
        overrides.append(f"hydra.sweeper.max_members={max_members}")
    if not plots:
        overrides.append("logger.plots=false")
    if launcher == "joblib":
        overrides += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}"]
    elif launcher == "ray":
        overrides += [
            "hydra/launcher=ray",
            f"++hydra.launcher.ray.init.num_cpus={workers}",
            "++hydra.launcher.ray.remote.num_cpus=1",  # gdlab: one torch thread per task
        ]
    else:
        raise ValueError(f"unknown launcher {launcher!r}")
    return overrides


def efficiency(t_one: float, t_many: float, workers: int) -> float:
    """Scaling efficiency t(1 worker) / (workers x t(workers)): 1.0 is perfect."""
    if t_many <= 0 or workers < 1:
        raise ValueError("times and workers must be positive")
    return t_one / (workers * t_many)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@dataclass
class JobStats:
    """One population job as its files tell it."""

    name: str
    members: int
    train_s: float  # population.json's wall_time_s (its training loop)
    steps_run: int | None  # population.json's steps_run (the loop's steps)
    start: float  # mtime of the first file Hydra wrote for it (.hydra/)
    end: float  # mtime of population.json or its log, whichever is later


def read_jobs(sweep_dir: Path) -> list[JobStats]:
    """Every population job under `sweep_dir` (a directory holding population.json)."""
    jobs = []
    for path in sorted(Path(sweep_dir).glob(f"*/{POPULATION_JSON}")):
        job = path.parent
        doc = json.loads(path.read_text(encoding="utf-8"))
        started = [p.stat().st_mtime for p in (job / ".hydra").glob("*")]
        ended = [path.stat().st_mtime]
        ended += [p.stat().st_mtime for p in job.glob("*.log")]
        jobs.append(
            JobStats(
                name=job.name,
                members=int(doc["members"]),
                train_s=float(doc.get("wall_time_s") or 0.0),
                steps_run=doc.get("steps_run"),
                start=min(started) if started else min(ended),
                end=max(ended),
            )
        )
    return jobs


def jobs_phase(jobs: list[JobStats]) -> float:
    """Seconds from the first job's start to the last job's end."""
    if not jobs:
        raise ValueError("no population jobs")
    return max(j.end for j in jobs) - min(j.start for j in jobs)


def member_steps_run(sweep_dir: Path) -> int | None:
    """Steps the members actually ran, summed (the `steps` column of every job's records);
    None if a job's records cannot be read."""
    total = 0
    for path in Path(sweep_dir).glob(f"*/{POPULATION_JSON}"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if "members_file" in doc:
            import pyarrow.compute as pc
            import pyarrow.parquet as pq

            column = pq.read_table(path.parent / doc["members_file"], columns=["steps"])
            total += int(pc.sum(column["steps"]).as_py() or 0)
        elif isinstance(doc.get("steps"), list):
            total += sum(s for s in doc["steps"] if s is not None)
        else:
            return None
    return total


# --- running one command ----------------------------------------------------------------------


@dataclass
class Measurement:
    workers: int
    wall: float
    phase: float
    train: float
    members: int
    jobs: int
    steps_run: int | None
    tree_peak: int | None  # bytes, psutil sampling of the process tree
    main_peak: int  # bytes, os.wait4's ru_maxrss
    hung: bool = False  # did not exit after its summary (see run_command)
    cpu: float | None = None  # CPU seconds the whole process tree used
    job_train_median: float | None = None  # one job's training loop, median over the jobs
    load: float | None = None  # 1-minute load average when the command ended


def sample_tree(root: object, cpu: dict[int, float]) -> int:
    """Resident bytes of a psutil.Process and all its descendants (those alive now); records
    each one's CPU seconds so far (user + system) in `cpu`, by pid."""
    import psutil

    total = 0
    try:
        procs = [root, *root.children(recursive=True)]  # type: ignore[attr-defined]
    except psutil.Error:
        return 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # it ended between the two calls
            total += proc.memory_info().rss
            times = proc.cpu_times()
            cpu[proc.pid] = times.user + times.system
    return total


@dataclass
class Finished:
    wall: float  # seconds
    main_peak: int  # bytes, ru_maxrss
    tree_peak: int | None  # bytes, psutil sampling
    hung: bool  # killed `grace` s after its last file: its wall time is taken at that file
    cpu: float | None  # CPU seconds of the tree (psutil: each process's last sample, summed)


def run_command(
    command: list[str], cwd: Path, env: dict[str, str], cpus: list[int] | None,
    timeout: float, sample: float, log: Path, last_file: Path | None = None, grace: float = 0,
) -> Finished:  # fmt: skip
    """Run `command` to its end. A failure or a timeout stops the benchmark with the
    command's last output. A command still running `grace` seconds after `last_file`
    appeared (the sweep's summary.md, its last write) is killed with its process group and
    timed to that file's mtime: a joblib sweep's gdlab may wait at exit for loky's idle
    workers (up to their 300 s idle timeout) instead of exiting."""
    try:
        import psutil
    except ImportError:
        psutil = None

    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    with open(log, "w") as out:
        epoch, start = time.time(), time.perf_counter()
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=pin, start_new_session=True,
        )  # fmt: skip
        root = psutil.Process(proc.pid) if psutil is not None else None
        peak, seen, hung, cpu = 0, None, False, {}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter()
            if now - start > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                sys.exit(f"bench_scale: timed out after {timeout:.0f} s: {' '.join(command)}")
            if last_file is not None and seen is None and last_file.exists():
                seen = now
            if seen is not None and now - seen > grace:
                os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers
                _, status, usage = os.wait4(proc.pid, 0)
                hung = True
                break
            if root is not None:
                peak = max(peak, sample_tree(root, cpu))
            time.sleep(sample)
        wall = time.perf_counter() - start
    proc.returncode = 0 if hung else os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"bench_scale: {' '.join(command)[:400]} failed ({proc.returncode}):\n{tail}")
    if hung:
        assert last_file is not None
        wall = last_file.stat().st_mtime - epoch
    if root is None:
        return Finished(wall, usage.ru_maxrss * 1024, None, hung, None)
    return Finished(wall, usage.ru_maxrss * 1024, peak, hung, sum(cpu.values()))


def measure(args: argparse.Namespace, workers: int, work: Path, label: str) -> Measurement:
    """One timed command with `workers` workers; its sweep directory is deleted afterwards."""
    sweep = work / label
    overrides = sweep_overrides(
        args.members, args.lrs, args.max_members, args.steps, workers, args.launcher,
        args.plots, args.compile,
    )  # fmt: skip
    command = [sys.executable, "-m", "gdlab", "-m", *overrides, *args.extra]
    command.append(f"hydra.sweep.dir={sweep}")
    cpus = None if args.no_pin else sorted(os.sched_getaffinity(0))[:workers]
    done = run_command(
        command, work, ENV, cpus, args.timeout, args.sample, work / f"{label}.log",
        last_file=sweep / "summary.md", grace=args.exit_grace,
    )  # fmt: skip
    jobs = read_jobs(sweep)
    members = sum(j.members for j in jobs)
    measurement = Measurement(
        workers=workers,
        wall=done.wall,
        phase=jobs_phase(jobs),
        train=sum(j.train_s for j in jobs),
        members=members,
        jobs=len(jobs),
        steps_run=member_steps_run(sweep),
        tree_peak=done.tree_peak,
        main_peak=done.main_peak,
        hung=done.hung,
        cpu=done.cpu,
        job_train_median=median([j.train_s for j in jobs]),
        load=os.getloadavg()[0],
    )
    shutil.rmtree(sweep, ignore_errors=True)  # a million members' summary is ~270 MB
    return measurement


ENV = dict(os.environ)


# --- report -----------------------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def figures(runs: dict[int, list[Measurement]], workers: int, steps: int) -> dict[str, Any]:
    """The medians of the repeats and what follows from them (pure: tested)."""
    one, many = runs[1], runs[workers]
    members = one[0].members
    nominal = members * steps
    out: dict[str, Any] = {"members": members, "nominal": nominal}
    for key in ("wall", "phase", "train"):
        t1 = median([getattr(m, key) for m in one])
        tw = median([getattr(m, key) for m in many])
        out[key] = (t1, tw)
        out[f"rate_{key}"] = (nominal / t1, nominal / tw)
    out["efficiency_wall"] = efficiency(*out["wall"], workers)
    out["efficiency_phase"] = efficiency(*out["phase"], workers)
    # the same jobs' training loops side by side: 1.0 when two jobs at once do not slow
    # each other down, below 1 when they compete (memory bandwidth, other load)
    out["train_ratio"] = out["train"][0] / out["train"][1]
    out["tree_peak"] = tuple(median([m.tree_peak for m in runs[w]]) for w in (1, workers))
    out["main_peak"] = tuple(median([m.main_peak for m in runs[w]]) for w in (1, workers))
    out["job_train"] = tuple(median([m.job_train_median for m in runs[w]]) for w in (1, workers))
    out["cpu"] = tuple(median([m.cpu for m in runs[w]]) for w in (1, workers))
    out["cores_busy"] = tuple(
        None if c is None else c / t for c, t in zip(out["cpu"], out["wall"], strict=True)
    )
    out["per_member"] = tuple(
        (tree or main) / members
        for tree, main in zip(out["tree_peak"], out["main_peak"], strict=True)
    )
    return out


def report(args: argparse.Namespace, runs: dict[int, list[Measurement]], workers: int) -> None:
    one, many = runs[1], runs[workers]
    expected = math.prod(grid(args.members, args.lrs))
    for m in (*one, *many):
        if m.members != expected:
            sys.exit(f"bench_scale: expected {expected} members, a sweep had {m.members}")
    f = figures(runs, workers, args.steps)
    members, nominal = f["members"], f["nominal"]

    def row(label: str, pair: tuple, fmt: str, note: str = "") -> None:
        cells = [("n/a" if v is None else format(v, fmt)) for v in pair]
        print(f"{label:<30} {cells[0]:>14} {cells[1]:>14} {note}")

    print()
    header = f"{'':<30} {'1 worker':>14} {f'{workers} workers':>14} {'efficiency':>11}"
    print(header)
    print("-" * len(header))
    row("whole command (s)", f["wall"], ".2f", f"{f['efficiency_wall']:>11.2f}")
    row("jobs' phase (s)", f["phase"], ".2f", f"{f['efficiency_phase']:>11.2f}")
    row(
        "training loops, summed (s)", f["train"], ".2f",
        f"{'':>11}   (1-worker / {workers}-worker sum: {f['train_ratio']:.2f})",
    )  # fmt: skip
    compiles = "(the first in each worker compiles)" if args.compile != "false" else ""
    row("one job's training, median (s)", f["job_train"], ".2f", compiles)
    row("CPU time, process tree (s)", f["cpu"], ".1f")
    row(
        "cores busy (CPU / wall)",
        f["cores_busy"],
        ".2f",
        "" if args.no_pin else f"(of 1 and {workers} cores: pinned)",
    )
    row("setting-steps/s, whole command", f["rate_wall"], ".3g")
    row("setting-steps/s, jobs' phase", f["rate_phase"], ".3g")
    row("setting-steps/s, per training", f["rate_train"], ".3g", "(per worker-second)")
    row("peak RSS, process tree (MiB)", [v and v / 2**20 for v in f["tree_peak"]], ",.0f")
    row("peak RSS, main process (MiB)", [v / 2**20 for v in f["main_peak"]], ",.0f")
    row("peak RSS per member (bytes)", f["per_member"], ",.0f", "(tree peak / members)")
    steps_run = one[0].steps_run
    if steps_run is not None:
        early = ": converged and diverged members stop early" if steps_run < nominal else ""
        print(
            f"\nmember-steps actually run: {steps_run:,} of {nominal:,} nominal "
            f"({steps_run / nominal:.0%}{early})"
        )
    hung = [m for m in (*one, *many) if m.hung]
    if hung:
        print(
            f"\nNOTE: {len(hung)} command(s) ({', '.join(f'{m.workers} workers' for m in hung)}) "
            f"were still running {args.exit_grace:g} s after writing their summary (gdlab "
            "waiting at exit for joblib's idle loky workers); they were killed and timed to "
            "their summary.md"
        )
    print()
    for label, key in (("whole command", "efficiency_wall"), ("jobs' phase", "efficiency_phase")):
        eff = f[key]
        print(
            f"{verdict(eff >= EFFICIENCY_TARGET)}  scaling efficiency, {label}: {eff:.2f} "
            f"(target >= {EFFICIENCY_TARGET} on {workers} cores)"
        )
    total = mem_total()
    worst = max(p for p in (*f["tree_peak"], *f["main_peak"]) if p is not None)
    if members >= MILLION:
        print(
            f"{verdict(worst < total)}  {members:,} members in one command: exit code 0, peak "
            f"{mib(worst)} of {mib(total)} (target: a million without running out of memory)"
        )
    else:
        print(
            f"n/a   a million members in one command: not checked at {members:,} members "
            f"(peak {mib(worst)} of {mib(total)}; the default --members is {MILLION:,})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=MILLION, help="settings (about)")
    parser.add_argument(
        "--max-members", type=int, default=125_000, help="members per job (0: one job)"
    )
    parser.add_argument("--lrs", type=int, default=1000, help="learning rates (inner axis)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1, help="timed pairs (median)")
    parser.add_argument("--workers", type=int, default=2, help="compared with one worker")
    parser.add_argument("--launcher", choices=["joblib", "ray"], default="joblib")
    parser.add_argument(
        "--compile", choices=["auto", "true", "false"], default="true",
        help="hydra.sweeper.compile (default true: the fast path at every job size)",
    )  # fmt: skip
    parser.add_argument("--plots", action="store_true", help="keep the sweep's plots")
    parser.add_argument("--no-pin", action="store_true", help="leave the CPU affinity alone")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up command")
    parser.add_argument("--sample", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per command")
    parser.add_argument("--tmp-dir", default=None, help="parent of the temporary directory")
    parser.add_argument(
        "--exit-grace", type=float, default=20.0,
        help="seconds a command may run on after writing its summary before it is killed",
    )  # fmt: skip
    parser.add_argument("extra", nargs="*", help="more overrides for every command")
    args = parser.parse_args()
    args.max_members = args.max_members or None
    workers = args.workers
    if workers < 2:
        sys.exit("bench_scale: --workers must be >= 2 (it is compared with one worker)")
    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) < workers:
        sys.exit(
            f"bench_scale: {workers} workers need {workers} cores; this process has {len(cpus)}"
        )
    if args.launcher == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as err:
            sys.exit(
                f"bench_scale: --launcher ray needs Ray ({err}); install the launchers extra: "
                "pip install -e '.[launchers]'"
            )
    ENV["OMP_NUM_THREADS"] = "1"  # the main process; jobs get theirs from gdlab's thread rule

    seeds, n_lr = grid(args.members, args.lrs)
    members = seeds * n_lr
    jobs = job_count(members, args.max_members)
    print(
        f"workload: {' '.join(WORKLOAD)}, {members:,} members ({seeds:,} seeds x {n_lr:,} lrs "
        f"in (0, {LR_MAX}]), {args.steps} steps, {jobs} job{'s' if jobs > 1 else ''} of "
        f"<= {args.max_members or members:,}; launcher {args.launcher}, 1 against {workers} "
        f"workers, {'pinned to as many cores' if not args.no_pin else 'affinity untouched'}, "
        f"compile={args.compile}, plots {'on' if args.plots else 'off'}"
        f"{''.join(' ' + e for e in args.extra)}; machine: "
        f"{len(cpus)} cores, {mib(mem_total())}, load {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="gdlab-bench-scale-", dir=args.tmp_dir) as tmp:
        work = Path(tmp)
        if not args.no_warmup:
            warm = argparse.Namespace(**vars(args))
            warm.members, warm.max_members = 2 * min(n_lr, 1000), min(n_lr, 1000)
            warm.steps = min(args.steps, 10)
            start = time.perf_counter()
            measure(warm, 1, work, "warmup")
            print(f"warm-up command (fills inductor's cache): {time.perf_counter() - start:.1f} s")
        runs: dict[int, list[Measurement]] = {1: [], workers: []}
        for r in range(args.repeats):
            order = (1, workers) if r % 2 == 0 else (workers, 1)
            for w in order:
                m = measure(args, w, work, f"w{w}r{r}")
                runs[w].append(m)
                print(
                    f"  repeat {r + 1}, {w} worker{'s' if w > 1 else ''}: command "
                    f"{m.wall:.2f} s, jobs' phase {m.phase:.2f} s, training {m.train:.2f} s, "
                    f"{m.jobs} jobs, {m.members:,} members, tree peak {mib(m.tree_peak)}, "
                    f"load {m.load:.1f}"
                    + (" [did not exit after its summary: killed, timed to it]" if m.hung else ""),
                    flush=True,
                )
        report(args, runs, workers)


if __name__ == "__main__":
    main()
