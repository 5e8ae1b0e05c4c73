"""A population's records at a million members: writing, reading, and the sweep summary.

Builds a realistic PopulationResult of N members (default 1,000,000: the tutorial's
regression over N learning rates crossing 2/L, converged, finished and diverged members,
non-finite losses and parameters where they diverged, a stop reason per member, the small
parameters w [1] and b) and runs the real code on it, in a sweep directory laid out as the
population sweeper lays it out (one job):

  build    gdlab.results.population_records: the columns from the result
  write    gdlab.results.write_population: members.parquet + population.json
  read     gdlab.results.read_population_records, in a fresh process (imports apart)
  pandas   pd.read_parquet(members.parquet), in a fresh process (imports apart)
  summary  gdlab.sweeps.summary.write_summary(plot=False) (what gdlab-report DIR does but
           the plots), in a fresh process: summary.csv (every row), summary.md (the top rows)

and the same for the old format, compact JSON with the columns inline (what population.json
held for every population before; still what it holds up to results.INLINE_MEMBERS members):
build + write, read (json.loads plus the columns), summary. Each figure is printed against the
target (writing and reading the records: <= 2 s each).

    .venv/bin/python scripts/bench_records.py [--members 1000000] [--sharpness] [--no-old]
    .venv/bin/python scripts/bench_records.py --plot     # also write_summary with its plots
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_S = 2.0


def synthetic_result(count: int, sharpness: bool = False, seed: int = 0) -> tuple[Any, list]:
    """(PopulationResult, lrs) of `count` members of the regression over lrs in (0, 1.2]."""
    import numpy as np
    import torch

    from gdlab.population.engine import PopulationResult

    rng = np.random.default_rng(seed)
    lrs = np.linspace(1.2 / count, 1.2, count)
    limit = 0.957  # 2/L of the tutorial's data
    diverged = lrs > limit
    converged = ~diverged & (rng.random(count) < 0.6)
    status = np.where(diverged, "diverged", np.where(converged, "converged", "finished"))
    steps = np.where(diverged, rng.integers(5, 50, count), rng.integers(50, 201, count))
    excess = np.where(diverged, np.nan, 10.0 ** rng.uniform(-12, -1, count))
    final = 0.2474 + excess
    final[diverged & (rng.random(count) < 0.5)] = np.inf
    w = torch.from_numpy(rng.standard_normal((count, 1)))
    w[torch.from_numpy(diverged)] = math.nan
    reasons = np.where(
        diverged,
        "loss is not finite",
        np.where(converged, "gradient norm 9.7e-07 < trainer.tol 1e-06", None),
    )
    result = PopulationResult(
        status=status.tolist(),
        steps=steps.tolist(),
        final_loss=torch.from_numpy(final),
        grad_norm=torch.from_numpy(np.where(diverged, np.inf, rng.random(count) * 1e-5)),
        params={"w": w, "b": torch.from_numpy(rng.standard_normal(count))},
        stop_reason=reasons.tolist(),
        distance_to_minimizer=torch.from_numpy(np.where(diverged, np.nan, np.sqrt(excess))),
        minimum=0.2474,
        wall_time_s=64.0,
        strategy="broadcast",
        chunk_size=65536,
        steps_run=200,
        excess_loss=[None if math.isnan(x) else x for x in excess.tolist()],
        score=np.where(diverged, np.inf, 2 + excess).tolist(),
        lr_limit=[limit] * count,
        initial_loss=torch.full((count,), 14.03, dtype=torch.float64),
    )
    if sharpness:
        points = [
            {"step": 200, "lambda_max": 2.09, "lambda_min": 0.31, "lr_limit": limit,
             "ratio": lr / limit, "preconditioned": None}
            for lr in lrs.tolist()
        ]  # fmt: skip
        result.sharpness_final, result.sharpness_initial = points, points
    return result, lrs.tolist()


def lay_out(sweep_dir: Path) -> Path:
    """One population job's directory, as the population sweeper lays it out."""
    import yaml

    job_dir = sweep_dir / "experiment=linear_regression,+population=0"
    (job_dir / ".hydra").mkdir(parents=True)
    dump = yaml.safe_dump
    overrides = ["experiment=linear_regression", "+population=0"]
    (job_dir / ".hydra" / "overrides.yaml").write_text(dump(overrides))
    choices = {"objective": "linear_regression"}
    hydra = {"hydra": {"job": {"num": 0}, "runtime": {"choices": choices}}}
    (job_dir / ".hydra" / "hydra.yaml").write_text(dump(hydra))
    config = {"optimizer": {"lr": 0.01, "momentum": 0.0}, "objective": {"n_samples": 100}}
    (job_dir / ".hydra" / "config.yaml").write_text(dump(config))
    return job_dir


INFO = {
    "objective": "linear_regression",
    "problem": {"name": "linear_regression", "fields": {"n_samples": 100}, "dtype": "float32"},
    "device": "cpu",
    "dtype": "float32",
}


def child(what: str, path: str) -> None:
    """One measurement in this fresh process; prints {"import": s, "run": s, ...}."""
    started = time.perf_counter()
    if what == "pandas":
        import pandas as pd

        imported = time.perf_counter()
        frame = pd.read_parquet(path)
        out = {"rows": len(frame)}
    elif what == "read":
        import pyarrow.parquet

        from gdlab.results import read_population_records

        imported = time.perf_counter()
        records = read_population_records(Path(path))
        out = {"rows": None if records is None else len(records)}
    elif what == "read-json":
        from gdlab.results import read_population

        imported = time.perf_counter()
        data = read_population(Path(path))
        out = {"rows": None if data is None else len(data["status"])}
    elif what in ("summary", "summary-plot"):
        import pyarrow.parquet  # noqa: F401

        from gdlab.sweeps.summary import write_summary

        imported = time.perf_counter()
        summary = write_summary(Path(path), plot=what == "summary-plot")
        out = {"rows": len(summary.rows)}
        out["csv_mb"] = summary.csv_path.stat().st_size / 1e6
        out["md_kb"] = summary.md_path.stat().st_size / 1e3
    else:
        raise SystemExit(f"unknown measurement {what}")
    done = time.perf_counter()
    print(json.dumps({"import": imported - started, "run": done - imported, **out}))


def measure(what: str, path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", what, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def line(name: str, seconds: float, target: float | None = TARGET_S, note: str = "") -> None:
    verdict = "" if target is None else ("  ok" if seconds <= target else "  OVER")
    against = f" (target <= {target:g} s)" if target is not None else ""
    print(f"  {name:<44} {seconds:7.2f} s{against}{verdict}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--sharpness", action="store_true", help="with sharpness columns")
    parser.add_argument("--no-old", action="store_true", help="skip the old JSON format")
    parser.add_argument("--plot", action="store_true", help="also the summary with its plots")
    parser.add_argument("--child", nargs=2, metavar=("WHAT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from gdlab.results import MEMBERS_PARQUET, population_records, write_population

    count = args.members
    print(f"{count:,} members ({os.cpu_count()} CPUs)")
    result, lrs = synthetic_result(count, args.sharpness)
    overrides = [["experiment=linear_regression", f"optimizer.lr={lr:.8g}"] for lr in lrs]
    arguments = (count, overrides, lrs, result, list(range(count)), {}, INFO, {"curvature": 2.09})
    with tempfile.TemporaryDirectory(prefix="bench_records_") as tmp:
        sweep_dir = Path(tmp) / "new"
        job_dir = lay_out(sweep_dir)
        started = time.perf_counter()
        records = population_records(*arguments)
        built = time.perf_counter()
        write_population(job_dir, records)
        written = time.perf_counter()
        parquet = job_dir / MEMBERS_PARQUET
        size = parquet.stat().st_size / 1e6
        print(f"members.parquet + population.json ({size:.0f} MB):")
        line("build the columns (population_records)", built - started, None)
        line("write (write_population)", written - built, None)
        line("records written: build + write", written - started)
        read = measure("read", job_dir)
        line(
            "read (read_population_records)",
            read["run"],
            note=f"  + {read['import']:.2f} s imports",
        )
        try:
            frame = measure("pandas", parquet)
            line(
                "pd.read_parquet(members.parquet)",
                frame["run"],
                note=f"  + {frame['import']:.2f} s imports",
            )
        except SystemExit as err:
            print(f"  pd.read_parquet: not measured ({str(err).splitlines()[-1]})")
        summary = measure("summary", sweep_dir)
        files = f"csv {summary['csv_mb']:.0f} MB, md {summary['md_kb']:.0f} KB"
        note = f"  + {summary['import']:.2f} s imports; {files}"
        line("summary (write_summary, no plots)", summary["run"], None, note)
        if args.plot:
            plotted = measure("summary-plot", sweep_dir)
            line("summary with its plots", plotted["run"], None)
        del records
        if args.no_old:
            return
        old_dir = Path(tmp) / "old"
        old_job = lay_out(old_dir)
        started = time.perf_counter()
        write_population(old_job, population_records(*arguments), inline=True)
        written = time.perf_counter()
        size = (old_job / "population.json").stat().st_size / 1e6
        print(f"old format: population.json with the columns inline ({size:.0f} MB):")
        line("records written: build + write (compact JSON)", written - started)
        read = measure("read-json", old_job)
        line(
            "read (read_population: json.loads)",
            read["run"],
            note=f"  + {read['import']:.2f} s imports",
        )
        summary = measure("summary", old_dir)
        line("summary from it (write_summary, no plots)", summary["run"], None)


if __name__ == "__main__":
    main()
