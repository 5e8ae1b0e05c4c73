"""`gdlab-report DIR`: rebuild a sweep's summary (and its learning-rate plot) from disk.

It reads the same files the end-of-sweep callback reads (each job's `.hydra/` and
`metrics.json`, a population job's `population.json` and `members.parquet`, and for jobs that
never wrote one the last point in their event files), so it works on any sweep directory at any
time: an old one, one copied from a cluster, one whose jobs were interrupted or are still
running. A population of a million members is read and ranked as columns
(`gdlab.sweeps.summary`): summary.csv gets every row, summary.md and the console the top ones.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gdlab.errors import GdlabError
from gdlab.sweeps.jobs import check_sweep_dir
from gdlab.sweeps.summary import print_summary, write_summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdlab-report",
        description="Rebuild summary.csv, summary.md and lr.png of a gdlab sweep directory.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory: outputs/multirun/...")
    parser.add_argument(
        "--top", type=int, default=10, help="rows of the table to print (default 10)"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw lr.png")
    return parser


def report(sweep_dir: Path, top: int = 10, plot: bool = True) -> int:
    """Write the summary of `sweep_dir` and print its top; returns the number of jobs."""
    sweep_dir = check_sweep_dir(Path(sweep_dir), "give a sweep directory")
    summary = write_summary(sweep_dir, plot=plot)
    print_summary(summary, top=top)
    return len(summary.rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gdlab-report` in this process and return its exit code (`argv`: default
    sys.argv[1:]); a user mistake is one line on stderr and exit code 2."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error argparse has printed
        return stop.code if isinstance(stop.code, int) else 2
    if args.top < 0:
        print(f"gdlab-report: error: --top={args.top} must be >= 0", file=sys.stderr)
        return 2
    try:
        report(args.sweep_dir, top=args.top, plot=not args.no_plot)
    except GdlabError as err:
        print(f"gdlab-report: error: {err}", file=sys.stderr)
        return 2
    return 0


def console_main() -> None:
    """Console-script entry point (`gdlab-report`, `python -m gdlab.report`)."""
    from gdlab.entry import exit_quickly

    exit_quickly(main())


if __name__ == "__main__":
    console_main()
