"""Parallel sweeps on this machine: the README's 38-job sweep with and without joblib.

The sweep (19 learning rates x 2 momenta of the default experiment, plots on, as a user runs
it) is timed as whole `gdlab -m` commands, interleaved, --repeats times each:

  basic         gdlab -m 'optimizer.lr=range(0.05,1.0,0.05)' optimizer.momentum=0,0.9
  joblib        ... hydra/launcher=joblib hydra.launcher.n_jobs=N   (gdlab's launcher)
  hydra-joblib  ... the same with Hydra's own JoblibLauncher class (hydra.launcher._target_)

and the medians compared: speed-up = basic / joblib (target >= 1.3 with N = 2 on 2 cores),
and what gdlab's launcher gains over Hydra's (workers that start while the sweep is checked,
and jobs that get the configs composed for that check). All three must write the same
summary rows, which the script checks (everything but the wall-time column).

    .venv/bin/python scripts/bench_parallel.py [--repeats 3] [--n-jobs 2]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.3
SWEEP = ["-m", "optimizer.lr=range(0.05,1.0,0.05)", "optimizer.momentum=0,0.9"]
HYDRA_JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def launchers(n_jobs: int) -> dict[str, list[str]]:
    """The overrides of each timed command, by name."""
    joblib = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"]
    return {
        "basic": [],
        "joblib": joblib,
        "hydra-joblib": [*joblib, f"hydra.launcher._target_={HYDRA_JOBLIB}"],
    }


def timed_sweep(overrides: list[str], sweep_dir: Path) -> float:
    """Wall seconds of one whole `gdlab -m` command writing into `sweep_dir`."""
    gdlab = Path(sys.executable).with_name("gdlab")
    command = [str(gdlab), *SWEEP, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    """summary.csv's rows without the columns that differ between two runs of one sweep."""
    with open(sweep_dir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if "wall" not in k} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    commands = launchers(args.n_jobs)
    times: dict[str, list[float]] = {name: [] for name in commands}
    rows: dict[str, list[dict[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="gdlab-bench-parallel-") as tmp:
        for repeat in range(args.repeats):
            for name, overrides in commands.items():
                sweep_dir = Path(tmp) / f"{name}-{repeat}"
                seconds = timed_sweep(overrides, sweep_dir)
                times[name].append(seconds)
                rows.setdefault(name, summary_rows(sweep_dir))
                print(f"  {name:13s} run {repeat + 1}: {seconds:6.2f} s", flush=True)
    same = all(r == rows["basic"] for r in rows.values())
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n38-job sweep, medians of {args.repeats} (n_jobs={args.n_jobs}):")
    for name, seconds in median.items():
        print(f"  {name:13s} {seconds:6.2f} s")
    speedup = median["basic"] / median["joblib"]
    print(f"joblib speed-up over basic: {speedup:.2f}x (target >= {TARGET})")
    print(f"Hydra's joblib launcher:    {median['basic'] / median['hydra-joblib']:.2f}x")
    print(f"same summary rows: {'yes' if same else 'NO'}")
    print("PASS" if speedup >= TARGET and same else "MISS")


if __name__ == "__main__":
    main()
