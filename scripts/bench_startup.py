"""Start-up cost: wall time of `gdlab trainer.steps=1` against `python -c "import torch"`.

Both are whole commands run as subprocesses of this script, interleaved, with the median of
the repeats compared (these machines are noisy). A run with plots off is shown too: plots
are drawn once at the end of every run, and importing matplotlib alone takes a few tenths.

    python scripts/bench_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.3


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "gdlab trainer.steps=1": [sys.executable, "-m", "gdlab", "trainer.steps=1"],
            "gdlab trainer.steps=1 logger.plots=false": [
                sys.executable,
                "-m",
                "gdlab",
                "trainer.steps=1",
                "logger.plots=false",
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for name, command in commands.items():  # warm the file cache
            wall([*command, f"hydra.run.dir={Path(tmp) / 'warm'}"] if "gdlab" in name else command)
        for i in range(args.repeats):
            for name, command in commands.items():
                run_dir = Path(tmp) / f"{i}-{len(times[name])}-{name.count('=')}"
                extra = [f"hydra.run.dir={run_dir}"] if "gdlab" in name else []
                times[name].append(wall([*command, *extra]))
    base = statistics.median(times["python -c 'import torch'"])
    print(f"median of {args.repeats} runs each")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<44} {median:6.3f} s  {median / base:5.2f}x")
    ratio = statistics.median(times["gdlab trainer.steps=1"]) / base
    verdict = "met" if ratio <= TARGET else "missed"
    print(f"start-up ratio {ratio:.2f} (target <= {TARGET}): {verdict}")


if __name__ == "__main__":
    main()
