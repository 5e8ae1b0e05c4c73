"""Start-up cost: wall time of `gdlab trainer.steps=1` against `python -c "import torch"`.

Both are whole commands run as subprocesses of this script, interleaved, with the median of
the repeats compared (these machines are noisy). A run with plots off is shown too: plots
are drawn once at the end of every run, and importing matplotlib alone takes a few tenths.
The CPU time each command used (user + system, from the operating system) is shown beside
its wall time: it moves less than the wall time when other work shares the machine.

    python scripts/bench_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.3


def timed(command: list[str]) -> tuple[float, float | None]:
    """(wall seconds, CPU seconds or None where the platform does not report them)."""
    start = time.perf_counter()
    if not hasattr(os, "wait4"):
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start, None
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    base_name = "python -c 'import torch'"
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            base_name: [sys.executable, "-c", "import torch"],
            "gdlab trainer.steps=1": [sys.executable, "-m", "gdlab", "trainer.steps=1"],
            "gdlab trainer.steps=1 logger.plots=false": [
                sys.executable,
                "-m",
                "gdlab",
                "trainer.steps=1",
                "logger.plots=false",
            ],
        }
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for name, command in commands.items():  # warm the file cache
            timed([*command, f"hydra.run.dir={Path(tmp) / 'warm'}"] if "gdlab" in name else command)
        for i in range(args.repeats):
            for name, command in commands.items():
                run_dir = Path(tmp) / f"{i}-{len(walls[name])}-{name.count('=')}"
                extra = [f"hydra.run.dir={run_dir}"] if "gdlab" in name else []
                wall, cpu = timed([*command, *extra])
                walls[name].append(wall)
                if cpu is not None:
                    cpus[name].append(cpu)
    base = statistics.median(walls[base_name])
    base_cpu = statistics.median(cpus[base_name]) if cpus[base_name] else None
    print(f"median of {args.repeats} runs each: wall time (and CPU time)")
    for name, values in walls.items():
        median = statistics.median(values)
        line = f"{name:<44} {median:6.3f} s  {median / base:5.2f}x"
        if base_cpu:
            cpu = statistics.median(cpus[name])
            line += f"   (cpu {cpu:6.3f} s  {cpu / base_cpu:5.2f}x)"
        print(line)
    ratio = statistics.median(walls["gdlab trainer.steps=1"]) / base
    verdict = "met" if ratio <= TARGET else "missed"
    print(f"start-up ratio {ratio:.2f} (target <= {TARGET}): {verdict}")


if __name__ == "__main__":
    main()
