"""`gdlab-report DIR`: rebuild a sweep's summary (and its learning-rate plot) from disk.

It reads the same files the end-of-sweep callback reads (each job's `.hydra/` and
`metrics.json`, a population job's `population.json` and `members.parquet`, and for jobs that
never wrote one the last point in their event files), so it works on any sweep directory at any
time: an old one, one copied from a cluster, one whose jobs were interrupted or are still
running. A population of a million members is read and ranked as columns
(`gdlab.sweeps.summary`): summary.csv gets every row, summary.md and the console the top ones.

A folder that holds several sweeps (outputs/multirun/<date>) gets one report per sweep, each
in its own directory: never one table of rows from different sweeps. Exit codes: 0 when every
report was written; 1 when a file could not be written (a read-only directory, a summary.csv
that is a folder: the table is printed all the same, and one line names what was not
written); 2 for a user mistake (no such directory, a file, a single run's directory).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gdlab.errors import GdlabError
from gdlab.sweeps.jobs import sweep_dirs
from gdlab.sweeps.summary import SweepSummary, print_summary, write_summary

#: a report was printed, but some of its files could not be written
UNWRITTEN = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdlab-report",
        description="Rebuild summary.csv, summary.md and lr.png of a gdlab sweep directory "
        "(of each sweep, for a folder of sweeps such as outputs/multirun/<date>).",
        epilog="exit codes: 0 written; 1 the table was printed but a file could not be "
        "written (named in one line); 2 a user mistake (not a sweep directory).",
    )
    parser.add_argument(
        "sweep_dir",
        type=Path,
        help="a sweep directory, outputs/multirun/<date>/<time>-<pid>, or a folder of sweeps",
    )
    parser.add_argument(
        "--top", type=int, default=10, help="rows of the table to print (default 10)"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw lr.png")
    return parser


def report_sweeps(sweep_dir: Path, top: int = 10, plot: bool = True) -> list[SweepSummary]:
    """Write the summary of `sweep_dir` (of each sweep it holds) and print its top; returns
    the summaries, whose `unwritten` name any file that could not be written."""
    sweeps = sweep_dirs(Path(sweep_dir), "give a sweep directory")
    if len(sweeps) > 1:
        print(f"gdlab-report: {sweep_dir} holds {len(sweeps)} sweeps: a report for each")
    summaries = []
    for i, sweep in enumerate(sweeps):
        if i:
            print()
        summary = write_summary(sweep, plot=plot)
        print_summary(summary, top=top, prog="gdlab-report")
        summaries.append(summary)
    return summaries


def report(sweep_dir: Path, top: int = 10, plot: bool = True) -> int:
    """Write the summary of `sweep_dir` (of each sweep it holds) and print its top; returns
    the number of rows (jobs, and members of population jobs)."""
    return sum(len(s.rows) for s in report_sweeps(sweep_dir, top=top, plot=plot))


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
        summaries = report_sweeps(args.sweep_dir, top=args.top, plot=not args.no_plot)
    except GdlabError as err:
        print(f"gdlab-report: error: {err}", file=sys.stderr)
        return 2
    return UNWRITTEN if any(s.unwritten for s in summaries) else 0


def console_main() -> None:
    """Console-script entry point (`gdlab-report`, `python -m gdlab.report`)."""
    from gdlab.entry import console_streams, exit_quickly

    console_streams()
    exit_quickly(main())


if __name__ == "__main__":
    console_main()
