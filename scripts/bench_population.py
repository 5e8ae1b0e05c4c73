"""Population sweep against a plain multirun: the tutorial's regression over K learning rates.

The workload is `experiment=linear_regression` (100 samples, one feature, 200 steps, float32)
swept over K learning rates in (0, 1.2], as a user would run it, each command timed whole:

  plain       gdlab -m experiment=linear_regression optimizer.lr=<list>
  population  gdlab -m hydra/sweeper=population experiment=linear_regression optimizer.lr=range(..)

A plain multirun of K = 1,000 or 10,000 jobs takes hours, so it is measured at 1 and at
--plain-jobs (20) jobs and extrapolated: plain(K) = t(1 job) + (K - 1) x per job, with
per job = (t(20 jobs) - t(1 job)) / 19, start-up counted once (the t(20)/20 x K scaling is
printed too). Also per setting-step time inside the population job (its training loop's wall
time over K x 200), and the ratios against the targets (>= 30x at K = 1,000, >= 200x at 10,000).
On the CPU both commands run with --threads torch threads (default 1: on a machine whose cores
are shared, two OpenMP threads per process can wait on each other for 100x longer than the
work takes; one thread keeps timings honest and stable; plain jobs are single-threaded anyway).

    .venv/bin/python scripts/bench_population.py [--ks 100 1000 10000] [--plain-jobs 20]
    .venv/bin/python scripts/bench_population.py --device cuda   # K up to 1,000,000 (gpu_check.sh)
    .venv/bin/python scripts/bench_population.py --memory       # peak memory against K

--memory trains populations of the default regression in fresh processes, reports the peak
resident memory against K (training alone, and whole population commands), fits the bytes per
member, and prints the largest K that fits in this machine's memory.

--compile compares the population's training loop compiled (hydra.sweeper.compile=true)
with eager at K = 1,000,000 (--compile-k) for the tutorial regression with SGD, SGD with
momentum 0.9 and Adam, in ns per member-step (one torch thread; the compile itself is timed
apart: a first, warm-up run compiles), against a roofline measured on this machine: the flops
a member-step needs (7 per sample: residual, square, two gradient sums, plus the update) over
the rate of one simple fused kernel (the same residual's squared sum, compiled). Then the
whole command `gdlab -m hydra/sweeper=population experiment=linear_regression` over
1,000,000 lrs, cold (an empty inductor cache) and warm, against 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOAD = ["experiment=linear_regression"]
STEPS = 200
LR_MAX = 1.2


def lr_range(k: int) -> str:
    """`optimizer.lr=range(...)` with exactly k values in (0, LR_MAX]."""
    step = LR_MAX / k
    return f"optimizer.lr=range({step!r},{LR_MAX + step / 2!r},{step!r})"


def lr_list(k: int) -> str:
    return "optimizer.lr=" + ",".join(f"{LR_MAX * (i + 1) / k:.6g}" for i in range(k))


ENV = dict(os.environ)


def timed(command: list[str], cwd: Path, timeout: float) -> float | None:
    """Wall seconds of one command, None if it timed out; a failure stops the benchmark."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV
        )
    except subprocess.TimeoutExpired:
        return None
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_population: {' '.join(command)[:300]} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def gdlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "gdlab", "-m", *args]


def population_stats(sweep_dir: Path) -> tuple[int, float]:
    """Members and the training loop's wall time, summed over the sweep's population jobs."""
    members, wall = 0, 0.0
    for path in sweep_dir.glob("*/population.json"):
        doc = json.loads(path.read_text())
        members += doc["members"]
        wall += doc["wall_time_s"] or 0.0
    return members, wall


def compare(args: argparse.Namespace) -> None:
    device = [f"device={args.device}"]
    extra = list(args.extra)
    with tempfile.TemporaryDirectory(prefix="gdlab-bench-population-") as tmp:
        work = Path(tmp)

        def sweep(name: str) -> str:
            return f"hydra.sweep.dir={work / name}"

        threads = ENV.get("OMP_NUM_THREADS", "torch's default")
        print(
            f"workload: {' '.join(WORKLOAD)} ({STEPS} steps) on {args.device}, K lrs in "
            f"(0, {LR_MAX}], torch threads per process: {threads}"
        )
        t1 = timed(gdlab(*WORKLOAD, lr_list(1), *device, *extra, sweep("plain1")), work, 600)
        n = args.plain_jobs
        tn = timed(gdlab(*WORKLOAD, lr_list(n), *device, *extra, sweep("plainN")), work, 3600)
        assert t1 is not None and tn is not None
        per_job = (tn - t1) / (n - 1)
        print(
            f"plain multirun: 1 job {t1:.2f} s, {n} jobs {tn:.2f} s -> {per_job * 1e3:.0f} ms "
            f"per extra job (t({n})/{n} = {tn / n * 1e3:.0f} ms per job)"
        )
        print()
        header = (
            f"{'K':>9} {'plain (extrap.)':>16} {'population':>11} {'ratio':>8} "
            f"{'ratio t(N)/N':>12} {'in-job':>9} {'per setting-step':>17}"
        )
        print(header)
        print("-" * len(header))
        ratios = {}
        for k in args.ks:
            name = f"pop{k}"
            command = gdlab("hydra/sweeper=population", *WORKLOAD, lr_range(k), *device, *extra)
            elapsed = timed([*command, sweep(name)], work, args.timeout)
            plain = t1 + per_job * (k - 1)
            if elapsed is None:
                # The command's outputs (a summary row per member) took too long; time the
                # training alone, in a fresh process, so the in-job figure is still there.
                out = subprocess.run(
                    [sys.executable, __file__, "--_measure", str(k), "--memory-steps",
                     str(STEPS), "--device", args.device, *extra],
                    capture_output=True, text=True, env=ENV, timeout=args.timeout,
                )  # fmt: skip
                wall = json.loads(out.stdout.strip().splitlines()[-1])["wall"]
                print(
                    f"{k:>9} {plain:>15.0f}s {'timed out':>11} {'':>8} {'':>12} "
                    f"{wall:>8.3f}s {wall / (k * STEPS) * 1e9:>14.1f} ns (training alone)"
                )
                continue
            members, wall = population_stats(work / name)
            if members != k:
                sys.exit(f"bench_population: expected {k} members, the sweep had {members}")
            ratios[k] = plain / elapsed
            per_step = wall / (k * STEPS)
            print(
                f"{k:>9} {plain:>15.1f}s {elapsed:>10.2f}s {plain / elapsed:>7.0f}x "
                f"{tn / n * k / elapsed:>11.0f}x {wall:>8.3f}s {per_step * 1e9:>14.1f} ns"
            )
        print()
        for k, target in ((1000, 30), (10000, 200)):
            if k in ratios:
                verdict = "met" if ratios[k] >= target else "NOT met"
                print(f"target at K = {k}: >= {target}x; measured {ratios[k]:.0f}x: {verdict}")


# --- memory -----------------------------------------------------------------------------------


def measure_training(k: int, steps: int, device: str, extra: list[str]) -> dict:
    """In this process: peak RSS of training k members of the default regression."""
    from hydra import compose, initialize_config_dir

    from gdlab.config import config_dir
    from gdlab.population import from_config

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "config",
            [
                *WORKLOAD,
                f"trainer.steps={steps}",
                f"device={device}",
                "trainer.progress=false",
                *extra,
            ],
        )
    trainer = from_config(cfg, {"lr": [LR_MAX * (i + 1) / k for i in range(k)]})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = trainer.run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "k": k,
        "before": before,
        "peak": peak,
        "wall": result.wall_time_s,
        "chunk": result.chunk_size,
    }


def child_peak(command: list[str], cwd: Path) -> int:
    """Peak RSS (bytes) of a command run as the only child of a fresh helper process."""
    helper = (
        "import resource, subprocess, sys; "
        "rc = subprocess.run(sys.argv[1:], capture_output=True).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 if rc == 0 else -1)"
    )
    out = subprocess.run(
        [sys.executable, "-c", helper, *command],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def mem_total() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def memory(args: argparse.Namespace) -> None:
    total = mem_total()
    print(
        f"machine memory: {total / 2**30:.1f} GiB; workload: default regression (100 samples, "
        f"1 feature, float32), {args.memory_steps} steps, on {args.device}"
    )
    print()
    print(f"{'K':>10} {'training peak RSS':>18} {'over start':>11} {'bytes/member':>13}")
    points = []

    def train(k: int, *extra: str, steps: int = args.memory_steps) -> dict:
        command = [
            sys.executable,
            __file__,
            "--_measure",
            str(k),
            "--memory-steps",
            str(steps),
            "--device",
            args.device,
            *extra,
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=ENV)
        return json.loads(out.stdout.strip().splitlines()[-1])

    for k in args.memory_ks:
        m = train(k)
        points.append(m)
        growth = m["peak"] - m["before"]
        print(
            f"{k:>10} {m['peak'] / 2**20:>15.0f} MiB {growth / 2**20:>7.0f} MiB {growth / k:>13.0f}"
        )
    # The same K with 100 times the data (2 steps: the peak comes with the first one): the
    # per-member temporaries are chunked, so the peak must not grow with the data.
    k = args.memory_ks[0]
    for n in (100, 10_000):
        m = train(k, f"objective.n_samples={n}", steps=2)
        growth = m["peak"] - m["before"]
        print(
            f"{k:>10} {m['peak'] / 2**20:>15.0f} MiB {growth / 2**20:>7.0f} MiB "
            f"{growth / k:>13.0f}   objective.n_samples={n} (members per chunk {m['chunk']})"
        )
    (a, b) = points[-2], points[-1]
    slope = (b["peak"] - a["peak"]) / (b["k"] - a["k"])
    base = b["peak"] - slope * b["k"]
    print(
        f"\ntraining: {slope:.0f} bytes per member (fit of the two largest K), "
        f"{base / 2**20:.0f} MiB fixed"
    )
    print(
        f"largest K for training alone in {total / 2**30:.1f} GiB: "
        f"about {(total - base) / slope / 1e6:.0f} million"
    )

    print(f"\n{'K':>10} {'population command peak RSS':>28}")
    cmd_points = []
    with tempfile.TemporaryDirectory(prefix="gdlab-bench-memory-") as tmp:
        for k in args.command_ks:
            command = gdlab(
                "hydra/sweeper=population",
                *WORKLOAD,
                lr_range(k),
                f"device={args.device}",
                f"trainer.steps={args.memory_steps}",
                f"hydra.sweep.dir={Path(tmp) / str(k)}",
            )
            peak = child_peak(command, Path(tmp))
            cmd_points.append((k, peak))
            print(f"{k:>10} {peak / 2**20:>24.0f} MiB")
    (k1, p1), (k2, p2) = cmd_points[-2], cmd_points[-1]
    slope = (p2 - p1) / (k2 - k1)
    base = p2 - slope * k2
    print(
        f"\nwhole command (training, population.json, summary, TensorBoard, lr plot): "
        f"{slope:.0f} bytes per member, {base / 2**20:.0f} MiB fixed; largest K in "
        f"{total / 2**30:.1f} GiB: about {(total - base) / slope / 1e6:.1f} million"
    )


# --- compiled against eager -------------------------------------------------------------------

RULE_CASES = {
    "sgd": [],
    "sgd, momentum 0.9": ["optimizer.momentum=0.9"],
    "adam": ["optimizer=adam"],
}
#: flops of one member-step of the tutorial regression per sample: w*x + b - y (3), its
#: square's mean (2), and the gradient sums r*x and r (2)
FLOPS_PER_SAMPLE = 7


def training_ns(
    k: int, steps: int, overrides: list[str], compile_choice: str, device: str = "cpu"
) -> tuple[float, float]:
    """(ns per member-step of a warm run, seconds of the first run): in this process."""
    import torch
    from hydra import compose, initialize_config_dir

    from gdlab.config import config_dir
    from gdlab.population import from_config

    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", [*WORKLOAD, f"trainer.steps={steps}", "trainer.progress=false",
                                 "trainer.tol=0", f"device={device}", *overrides])  # fmt: skip
    lrs = {"lr": [1e-3 + 0.5 * i / k for i in range(k)]}
    first = time.perf_counter()
    from_config(cfg, {"lr": lrs["lr"][:1000]}, compile=compile_choice).run()  # compiles
    first = time.perf_counter() - first
    trainer = from_config(cfg, lrs, compile=compile_choice)
    result = trainer.run()
    assert trainer.compiled == (compile_choice == "true"), trainer.compile_note
    return result.wall_time_s / (k * steps) * 1e9, first


def roofline_ns(k: int, device: str = "cpu") -> tuple[float, float]:
    """(ns per member-step at this machine's fused-kernel rate, that rate in GFLOP/s)."""
    import torch

    from gdlab.objectives.linear_regression import LinearRegression

    torch.set_num_threads(1)
    objective = LinearRegression()
    objective.setup(torch.device(device), torch.float32)
    x, y = objective.X[:, 0], objective.y
    w, b = torch.randn(k, device=device), torch.randn(k, device=device)

    @torch.compile(dynamic=False)
    def kernel(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        r = w[:, None] * x + b[:, None] - y
        return (r * r).sum(dim=1)

    kernel(w, b)
    repeats = 20
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        kernel(w, b)
    sync()
    seconds = (time.perf_counter() - start) / repeats
    rate = 5 * k * x.numel() / seconds  # 5 flops per element: *, +, -, square, sum
    return FLOPS_PER_SAMPLE * x.numel() / rate * 1e9, rate / 1e9


def compiled_against_eager(args: argparse.Namespace) -> None:
    k, steps = args.compile_k, STEPS
    print(f"population training loop, tutorial regression, K = {k:,}, {steps} steps, 1 thread")
    floor, rate = roofline_ns(k, args.device)
    print(f"roofline: {FLOPS_PER_SAMPLE * 100} flops per member-step at {rate:.1f} GFLOP/s "
          f"(one fused kernel) = {floor:.1f} ns per member-step")  # fmt: skip
    for name, overrides in RULE_CASES.items():
        compiled, first = training_ns(k, steps, overrides, "true", args.device)
        eager, _ = training_ns(args.eager_k, steps, overrides, "false", args.device)
        print(f"{name:<18} compiled {compiled:6.1f} ns ({compiled / floor:4.1f}x roofline, "
              f"target <= 50)   eager {eager:7.1f} ns (K = {args.eager_k:,}; "
              f"{eager / floor:5.1f}x roofline)   compiled/eager {compiled / eager:.3f}   "
              f"first run with its compile {first:.1f} s")  # fmt: skip
    if args.no_command:
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **ENV,
            "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor"),
            "OMP_NUM_THREADS": "1",
        }
        for label in ("cold", "warm"):
            command = gdlab("hydra/sweeper=population", *WORKLOAD, lr_range(k),
                            "hydra.sweeper.compile=true", "logger.tensorboard=false",
                            "hydra.sweep.dir=" + str(Path(tmp) / label))  # fmt: skip
            start = time.perf_counter()
            proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"bench_population: the command failed:\n{proc.stderr[-2000:]}")
            print(f"whole command, {k:,} lrs x {steps} steps, {label} cache: {wall:.1f} s "
                  f"(target <= 15 s warm)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--ks",
        type=int,
        nargs="+",
        default=None,
        help="population sizes (default 100 1000 10000; on cuda also 100000 and 1000000)",
    )
    parser.add_argument("--plain-jobs", type=int, default=20)
    parser.add_argument(
        "--timeout", type=float, default=None,
        help="seconds per population command (default 600; 150 on cuda, to fit gpu_check.sh)",
    )  # fmt: skip
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per process (default: 1 on cpu, torch's on cuda)",
    )
    parser.add_argument("--memory", action="store_true", help="peak memory against K instead")
    parser.add_argument("--memory-ks", type=int, nargs="+", default=[100_000, 1_000_000, 4_000_000])
    parser.add_argument("--command-ks", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--memory-steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="compiled against eager instead")
    parser.add_argument("--compile-k", type=int, default=1_000_000)
    parser.add_argument("--eager-k", type=int, default=100_000, help="eager is slow: fewer")
    parser.add_argument("--no-command", action="store_true", help="--compile: the loop only")
    parser.add_argument("--_measure", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="more overrides for both commands")
    args = parser.parse_args()
    if args.compile:
        compiled_against_eager(args)
        return
    if args._measure is not None:
        result = measure_training(args._measure, args.memory_steps, args.device, args.extra)
        print(json.dumps(result))
        return
    if args.plain_jobs < 2:
        sys.exit("bench_population: --plain-jobs must be >= 2")
    if args.timeout is None:
        args.timeout = 150.0 if args.device == "cuda" else 600.0
    if args.ks is None:
        args.ks = [100, 1000, 10000]
        if args.device == "cuda":
            args.ks += [100_000, 1_000_000]
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    if threads is not None:
        ENV["OMP_NUM_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    memory(args) if args.memory else compare(args)


if __name__ == "__main__":
    main()
