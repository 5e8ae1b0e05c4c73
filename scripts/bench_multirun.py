"""What gdlab adds per sweep job: a plain multirun of the default experiment against a trivial
Hydra app (a task function that does nothing), both run here, now, with the same launcher.

Each command is timed as a whole process, once with 1 job and once with N jobs, so

    per-job time = (time(N jobs) - time(1 job)) / (N - 1)

is the marginal cost of one more job in a sweep, with Python/torch start-up taken out (the start-up
is reported separately). gdlab runs twice: as shipped (plots on) and with logger.plots=false, so
the cost of drawing the plots is visible too. Also the single-run cost of plots (matplotlib
imported and three figures drawn in a fresh process). Medians of --repeats runs.

    .venv/bin/python scripts/bench_multirun.py [--jobs 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TRIVIAL_APP = textwrap.dedent(
    """
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path=None, config_name=None)
    def app(cfg: DictConfig) -> None:
        pass

    if __name__ == "__main__":
        app()
    """
)


def timed(command: list[str], cwd: Path) -> float:
    """Wall time of one process; a failing command stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=os.environ)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_multirun: {' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def sweep_values(n: int) -> str:
    return ",".join(str(i) for i in range(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs in the N-job sweep (>= 2)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.jobs < 2 or args.repeats < 1:
        sys.exit("bench_multirun: --jobs must be >= 2 and --repeats >= 1")

    with tempfile.TemporaryDirectory(prefix="gdlab-bench-") as tmp:
        work = Path(tmp)
        (work / "trivial_app.py").write_text(TRIVIAL_APP)
        py = sys.executable
        variants = {
            "trivial Hydra app": lambda n: [
                py, "trivial_app.py", "-m", f"+seed={sweep_values(n)}",
                "hydra.sweep.dir=multirun/trivial-${now:%H-%M-%S-%f}",
            ],
            "gdlab (plots on)": lambda n: [
                py, "-m", "gdlab", "-m", f"trainer.seed={sweep_values(n)}",
            ],
            "gdlab (logger.plots=false)": lambda n: [
                py, "-m", "gdlab", "-m", f"trainer.seed={sweep_values(n)}", "logger.plots=false",
            ],
        }  # fmt: skip
        single = {
            "plots on": [py, "-m", "gdlab"],
            "plots off": [py, "-m", "gdlab", "logger.plots=false"],
        }
        one: dict[str, list[float]] = {name: [] for name in variants}
        many: dict[str, list[float]] = {name: [] for name in variants}
        runs: dict[str, list[float]] = {name: [] for name in single}
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits all alike
            for name, command in variants.items():
                one[name].append(timed(command(1), work))
                many[name].append(timed(command(args.jobs), work))
            for name, command in single.items():
                runs[name].append(timed(command, work))

    med = statistics.median
    per_job = {n: (med(many[n]) - med(one[n])) / (args.jobs - 1) for n in variants}
    print(f"bench_multirun: {args.jobs}-job vs 1-job multirun, basic launcher, CPU, "
          f"median of {args.repeats}; default experiment: quadratic, 50 steps")  # fmt: skip
    print(f"{'':28s} {'1 job (s)':>10s} {f'{args.jobs} jobs (s)':>11s} {'per job (s)':>12s}")
    for name in variants:
        print(f"{name:28s} {med(one[name]):10.3f} {med(many[name]):11.3f} {per_job[name]:12.3f}")
    base = per_job["trivial Hydra app"]
    for name in ("gdlab (plots on)", "gdlab (logger.plots=false)"):
        extra = per_job[name] - base
        ratio = per_job[name] / base if base > 0 else float("inf")
        print(f"ratio per job, {name} / trivial Hydra app: {ratio:.2f}x (+{extra * 1000:.0f} ms)")
    on, off = med(runs["plots on"]), med(runs["plots off"])
    print(
        f"single run `gdlab`: {on:.3f} s with plots, {off:.3f} s without: plots add "
        f"{(on - off) * 1000:.0f} ms ({on / off:.2f}x)"
    )


if __name__ == "__main__":
    main()
