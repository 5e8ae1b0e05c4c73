"""gdlab from Python and notebooks: run, load and compare runs (`import gdlab`; docs/python.md).

    r = gdlab.run("objective=quadratic", "optimizer.lr=0.1", dir="runs/q")
    r.status, r.metrics, r.params, r.history["train/loss"], r.to_pandas(), r.plot()
    s = gdlab.sweep("optimizer.lr=0.01,0.1,0.5")            # population=True, launcher="joblib"
    s.rows, s.best, s.runs, s.to_pandas(), s.plot()
    gdlab.load(r.dir), gdlab.load_sweep(s.dir)

Same configs, same checks, same files: `run` and `sweep` run the `gdlab` command itself in this
process (`gdlab.cli.main`, the Hydra app with its config search path and plugins), with the
run or sweep directory given explicitly, and read that directory back with `load` and
`load_sweep`, which read only files (metrics.json, population.json, the TensorBoard event
files, the PNG plots, the sweep summary's rows), so they work on any run or sweep on disk.

A good guest in someone else's process: a call never ends the interpreter and leaves the
cwd, Hydra's global state, the logging configuration, signal handlers and torch's thread
count as it found them. A user mistake raises `GdlabError` with the command's one-line
message; Ctrl-C stops the run as on the command line (checkpointed, status `interrupted`)
and raises `KeyboardInterrupt`. A diverged run is a result, not an exception.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdlab.errors import GdlabError

if TYPE_CHECKING:
    import pandas
    import torch
    from matplotlib.figure import Figure
    from omegaconf import DictConfig

    from gdlab.sweeps.jobs import JobRow

__all__ = ["Figures", "Member", "Run", "Sweep", "load", "load_sweep", "run", "sweep"]

PathLike = str | os.PathLike[str]

#: exit codes of an interrupted command: 128 + SIGINT, 128 + SIGTERM
INTERRUPTED = (130, 143)
#: the run plots, in the order `Run.plot` shows them (other PNGs follow, by name)
PLOT_ORDER = ("loss", "landscape", "fit")


# ----------------------------------------------------------------------------- running


def run(*overrides: str, dir: PathLike | None = None, progress: bool | None = None) -> Run:
    """Train one run, exactly as `gdlab OVERRIDES...` would, and return it read back.

    `overrides` are the command line's (`"objective=quadratic"`, `"optimizer.lr=0.1"`,
    `"experiment=exercise_2d"`, `"trainer.resume=DIR"`). `dir`: the run directory, new or
    empty; None: a fresh one under `outputs/` of the current directory, as the command makes.
    `progress`: a progress bar; None: tqdm's bar in a Jupyter notebook, else as the command
    (a bar only on a terminal).

    Raises GdlabError for a user mistake (the command's one-line message) and
    KeyboardInterrupt after Ctrl-C (the run is checkpointed: continue it with
    `gdlab.run(f"trainer.resume={dir}")`).
    """
    args = _overrides(overrides, "gdlab.run")
    args, given = _take(args, "hydra.run.dir", dir, "dir")
    resume = _value(args, "trainer.resume")
    if resume is not None:  # the run continues in its own directory (the command checks it)
        if given is not None and Path(given).absolute() != Path(resume).absolute():
            raise GdlabError(
                f"trainer.resume={resume} continues that run in its own directory; "
                f"leave out dir={given}"
            )
        run_dir = Path(resume)
    else:
        run_dir = Path(given) if given is not None else _fresh_dir(Path("outputs"))
        _check_new(run_dir)
        args.append(f"hydra.run.dir={_quote(run_dir)}")
    if progress is None and _in_notebook():
        progress = True
    if progress is not None and not any(_matches(a, "trainer.progress") for a in args):
        args.append(f"trainer.progress={str(progress).lower()}")
    code = _command(args)
    if code in INTERRUPTED:
        from gdlab.rundir import resume_override

        raise KeyboardInterrupt(
            f"gdlab: run interrupted; it is checkpointed in {run_dir}: continue it with "
            f"gdlab.run({resume_override(run_dir)!r})"
        )
    if code != 0:
        raise RuntimeError(f"gdlab {' '.join(args)} ended with exit code {code}")
    return load(run_dir)


def sweep(
    *overrides: str,
    dir: PathLike | None = None,
    population: bool = False,
    launcher: str | None = None,
) -> Sweep:
    """Run a sweep, exactly as `gdlab -m OVERRIDES...` would, and return it read back.

    `overrides` use the command line's sweep syntax (`"optimizer.lr=0.01,0.1,0.5"`,
    `"optimizer.lr=range(0.01,1.0,0.01)"`, `"objective=quadratic,multivariate"`).
    `population=True`: the population sweeper (`hydra/sweeper=population`), which trains the
    settings that differ only in batchable hyperparameters as one batched job. `launcher`:
    `"joblib"`, `"ray"`, `"submitit_slurm"`... (`hydra/launcher=...`; default: one job after
    another in this process). `dir`: the sweep directory, new or empty; None: a fresh one under
    `outputs/multirun/` of the current directory.

    Failed jobs do not raise: they are rows with status `failed` and their error. Raises
    GdlabError for a user mistake, KeyboardInterrupt after Ctrl-C (the jobs that ran stay
    on disk: `gdlab.load_sweep(dir)` reads them).
    """
    args = _overrides(overrides, "gdlab.sweep")
    args, given = _take(args, "hydra.sweep.dir", dir, "dir")
    sweep_dir = Path(given) if given is not None else _fresh_dir(Path("outputs") / "multirun")
    _check_new(sweep_dir)
    argv = ["-m", *args]
    if population:
        argv.append("hydra/sweeper=population")
    if launcher is not None:
        argv.append(f"hydra/launcher={launcher}")
    argv.append(f"hydra.sweep.dir={_quote(sweep_dir)}")
    code = _command(argv)
    if code in INTERRUPTED:
        raise KeyboardInterrupt(
            f"gdlab: sweep interrupted; gdlab.load_sweep('{sweep_dir}') reads the jobs that ran"
        )
    if code not in (0, 1):  # 1: a job failed, which its row reports
        raise RuntimeError(f"gdlab {' '.join(argv)} ended with exit code {code}")
    return load_sweep(sweep_dir)


def _command(argv: list[str]) -> int:
    """`gdlab ARGV` in this process: its exit code; a user mistake raised as GdlabError."""
    from gdlab import cli

    with _as_guest():
        return cli.main(argv, raise_errors=True)


@contextmanager
def _as_guest() -> Iterator[None]:
    """Put back what a command may change beyond what `cli.main` restores itself: the cwd
    (`hydra.job.chdir=true`) and torch's thread count (limited per job under parallel
    launchers when jobs run in this process)."""
    import torch

    cwd, threads = os.getcwd(), torch.get_num_threads()
    try:
        yield
    finally:
        if os.getcwd() != cwd:
            os.chdir(cwd)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _overrides(overrides: Sequence[str], caller: str) -> list[str]:
    """The overrides as a list, refusing what is not one (flags such as -m belong to the
    command line: gdlab.sweep is the multirun)."""
    args = []
    for text in overrides:
        if not isinstance(text, str):
            raise TypeError(f"{caller} takes overrides as strings such as 'optimizer.lr=0.1'")
        if text.startswith("-"):
            raise GdlabError(
                f"{text}: {caller} takes overrides (key=value) only, not the command line's "
                "flags; for a multirun use gdlab.sweep"
            )
        args.append(text)
    return args


def _matches(text: str, key: str) -> bool:
    return text.split("=", 1)[0].lstrip("+~") == key


def _value(args: Sequence[str], key: str) -> str | None:
    """The value `args` give `key` (quotes removed), or None (also for `key=null`)."""
    for text in args:
        if _matches(text, key):
            from hydra.core.override_parser.overrides_parser import OverridesParser

            try:
                value = OverridesParser.create().parse_override(text).value()
            except Exception:  # the command reports it
                return None
            return None if value is None else str(value)
    return None


def _take(
    args: list[str], key: str, given: PathLike | None, name: str
) -> tuple[list[str], str | None]:
    """`key=VALUE` removed from `args` and returned as the directory, or `given`."""
    value = _value(args, key)
    if value is None:
        return args, None if given is None else os.fspath(given)
    if given is not None:
        raise GdlabError(f"give the directory once: {name}={given} or {key}={value}, not both")
    return [a for a in args if not _matches(a, key)], value


def _fresh_dir(root: Path) -> Path:
    """`root/<date>/<time>-<pid>` as the command names it, with `-2`, `-3`... for calls made
    in the same second (the pid tells processes apart)."""
    now = datetime.now()
    base = root / f"{now:%Y-%m-%d}" / f"{now:%H-%M-%S}-{os.getpid()}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _check_new(path: Path) -> None:
    """A new run or sweep goes into a new or empty directory: a second run in the same one
    would mix its event files (and curves) with the first's."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise GdlabError(
            f"{path} is not empty: give a new or empty directory (dir=None makes a fresh one "
            "under outputs/; gdlab.load reads what is there)"
        )


def _quote(path: Path) -> str:
    """A path as an override value: as it is when Hydra's grammar allows, else quoted."""
    from gdlab.rundir import hydra_quote

    return hydra_quote(path)


def _in_notebook() -> bool:
    """Running in a Jupyter kernel (the check tqdm.auto makes)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:
        return False


# ----------------------------------------------------------------------------- reading back


def load(dir: PathLike) -> Run:
    """The run in `dir`, read back from its files: finished, converged, diverged, or
    interrupted (also one killed before it wrote metrics.json)."""
    path = Path(dir)
    if not path.is_dir():
        raise GdlabError(f"{path}: no such run directory")
    if (path / "multirun.yaml").exists() or (path / "summary.csv").exists():
        raise GdlabError(f"{path} is a sweep directory; read it with gdlab.load_sweep")
    if (path / "population.json").exists():
        raise GdlabError(
            f"{path} is a population job; read its sweep with gdlab.load_sweep "
            "(its members are the sweep's runs)"
        )
    marks = ("metrics.json", ".hydra", "checkpoint.pt")
    if not any((path / m).exists() for m in marks) and not _event_files(path):
        raise GdlabError(
            f"{path} is not a gdlab run directory (no metrics.json, .hydra/, checkpoint.pt "
            "or event files)"
        )
    return Run(path)


def load_sweep(dir: PathLike) -> Sweep:
    """The sweep in `dir`, read back from its jobs' files (also one that was interrupted)."""
    from gdlab.sweeps.jobs import check_sweep_dir

    return Sweep(check_sweep_dir(Path(dir), "read it with gdlab.load"))


def _event_files(path: Path) -> list[Path]:
    """A run's event files in the order they were started: by the time in their name
    (`events.out.tfevents.<seconds>.<host>.<pid>.<n>`), then by when they were last written."""

    def started(file: Path) -> tuple[int, float]:
        seconds = file.name.split(".")[3]
        return (int(seconds) if seconds.isdigit() else 0, file.stat().st_mtime)

    return sorted(path.glob("events.out.tfevents.*"), key=started)


def read_scalars(run_dir: PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of `run_dir` (not its subdirectories): tag -> sorted
    (step, value) points. A later file's point replaces an earlier one's at the same step
    (a resumed run repeats the step it stopped at); a truncated file keeps what was read."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.util import tensor_util

    points: dict[str, dict[int, float]] = {}
    for path in _event_files(Path(run_dir)):
        try:
            for event in LegacyEventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    kind = value.WhichOneof("value")
                    if kind == "simple_value":
                        number = float(value.simple_value)
                    elif kind == "tensor" and value.metadata.plugin_data.plugin_name == "scalars":
                        number = float(tensor_util.make_ndarray(value.tensor).reshape(-1)[0])
                    else:
                        continue
                    points.setdefault(value.tag, {})[int(event.step)] = number
        except Exception:  # a file cut short by a killed run: keep what was read
            continue
    return {tag: sorted(steps.items()) for tag, steps in points.items()}


def _tensor(value: Any, dtype: str | None) -> torch.Tensor:
    """A parameter from JSON (nested lists, null for a value that was not finite)."""
    import torch

    def fill(item: Any) -> Any:
        if isinstance(item, list):
            return [fill(x) for x in item]
        return math.nan if item is None else item

    return torch.tensor(fill(value), dtype=getattr(torch, str(dtype), torch.float32))


class Figures(list):
    """matplotlib Figures, shown one after another when a notebook displays the list."""

    def _ipython_display_(self) -> None:
        from IPython.display import Image, display

        from gdlab.plotting import png_bytes

        for figure in self:
            display(Image(data=png_bytes(figure)))


def _png_figure(path: Path) -> Figure:
    """A PNG the run wrote, as a figure of its own size that shows it pixel for pixel."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    from gdlab.plotting import DPI

    image = imread(path)
    height, width = image.shape[:2]
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    figure.set_label(path.stem)
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(image, interpolation="none")
    ax.set_axis_off()
    return figure


def _png_figures(directory: Path, names: Sequence[str], order: Sequence[str]) -> Figures:
    found = {p.stem: p for p in directory.glob("*.png")}
    wanted = list(names) or [*[n for n in order if n in found], *sorted(set(found) - set(order))]
    missing = [n for n in wanted if n not in found]
    if missing:
        available = ", ".join(sorted(found)) or "none"
        raise GdlabError(f"no plot {', '.join(missing)} in {directory}; plots: {available}")
    return Figures(_png_figure(found[n]) for n in wanted)


class Run:
    """One run directory, read back: its result, final parameters, curves and plots.

    Everything comes from the files the run wrote, read when first asked for: `metrics`
    (metrics.json), `params` (its parameters, or the checkpoint's when the run was killed
    before writing it), `history` (the TensorBoard event files), `plot()` (the PNG plots).
    """

    def __init__(self, dir: PathLike) -> None:
        from gdlab.results import read_metrics

        self.dir = Path(dir).absolute()
        metrics = read_metrics(self.dir)
        #: the dict in metrics.json; empty for a run killed before it wrote one
        self.metrics: dict[str, Any] = metrics if metrics is not None else {}

    @property
    def status(self) -> str:
        """finished, converged, diverged, interrupted or failed (`interrupted` also for a run
        killed before it wrote metrics.json, or one still running)."""
        return str(self.metrics.get("status") or "interrupted")

    @cached_property
    def params(self) -> dict[str, torch.Tensor]:
        """The final parameters (at the interruption for an interrupted run), name -> tensor
        in the run's dtype."""
        saved = self.metrics.get("params")
        if isinstance(saved, dict) and saved:
            return {name: _tensor(v, self.metrics.get("dtype")) for name, v in saved.items()}
        if (self.dir / "checkpoint.pt").is_file():
            from gdlab.checkpoint import load_checkpoint

            try:
                state = load_checkpoint(self.dir)
            except GdlabError:
                return {}
            return {name: t.detach().clone() for name, t in state["params"].items()}
        return {}

    @cached_property
    def history(self) -> dict[str, list[tuple[int, float]]]:
        """Scalar tag -> [(step, value), ...] from the event files: `train/loss`,
        `train/grad_norm`, `train/lr`, `train_params/<name>`..."""
        return read_scalars(self.dir)

    @cached_property
    def overrides(self) -> list[str]:
        """The command line's overrides that made the run (`.hydra/overrides.yaml`)."""
        from gdlab.sweeps.jobs import load_yaml

        try:
            return [str(o) for o in load_yaml(self.dir / ".hydra" / "overrides.yaml") or []]
        except OSError:
            return []

    @cached_property
    def config(self) -> DictConfig | None:
        """The composed config (`.hydra/config.yaml`), e.g. `r.config.optimizer.lr`."""
        from omegaconf import OmegaConf

        path = self.dir / ".hydra" / "config.yaml"
        return OmegaConf.load(path) if path.is_file() else None  # type: ignore[return-value]

    def to_pandas(self) -> pandas.DataFrame:
        """The history as a DataFrame: one row per logged step (the index), one column per tag."""
        import pandas as pd

        columns = {
            tag: pd.Series(dict(points), dtype=float) for tag, points in self.history.items()
        }
        frame = pd.DataFrame(columns).sort_index()
        frame.index.name = "step"
        return frame

    def plot(self, *names: str) -> Figures:
        """The run's plots (`loss`, `landscape`, `fit`: its PNG files) as matplotlib Figures,
        or only those named; shown inline when a notebook displays them. A run without plot
        files (`logger.plots=false`) gets its loss curve drawn from the history."""
        if not names and not any(self.dir.glob("*.png")):
            return Figures([self._loss_figure()]) if self.history.get("train/loss") else Figures()
        return _png_figures(self.dir, names, PLOT_ORDER)

    def _loss_figure(self) -> Figure:
        from gdlab.plotting import new_figure, set_title

        steps, losses = zip(*self.history["train/loss"], strict=True)
        figure = new_figure()
        figure.set_label("loss")
        ax = figure.add_subplot()
        ax.plot(steps, losses)
        if all(v > 0 for v in losses if math.isfinite(v)):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        set_title(ax, f"{self.metrics.get('objective') or 'loss'}: {self.status}")
        return figure

    def __repr__(self) -> str:
        parts = [repr(str(self.dir)), f"status={self.status!r}"]
        for key in ("steps", "final_loss"):
            if self.metrics.get(key) is not None:
                parts.append(f"{key}={self.metrics[key]:.6g}")
        return f"Run({', '.join(parts)})"


class Member:
    """One member of a population job (`hydra/sweeper=population`), read from its
    population.json (and members.parquet): what its own plain run's metrics.json would hold."""

    def __init__(self, job_dir: Path, index: int, data: Any) -> None:
        from gdlab.results import PopulationRecords

        self.dir = job_dir  #: the population job's directory
        self.index = index  #: the member's position in population.json
        if not isinstance(data, PopulationRecords):
            try:  # population.json's document, columns inline
                data = PopulationRecords.from_document(dict(data)) if data else None
            except (KeyError, TypeError, ValueError):
                data = None
        #: the job's records (gdlab.results.PopulationRecords); None where unreadable
        self.records = data

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """The member's columns of population.json (status, steps, final_loss, grad_norm,
        distance_to_minimizer, excess_loss, score, lr, lr_limit, ...) and what the members
        share (objective, problem, device, dtype, minimum)."""
        from gdlab.results import SHARED_FIELDS

        if self.records is None:
            return {k: None for k in SHARED_FIELDS}
        return self.records.member(self.index)

    @property
    def status(self) -> str:
        return str(self.metrics.get("status") or "failed")

    @property
    def overrides(self) -> list[str]:
        """The overrides of the member's own plain job."""
        return [] if self.records is None else self.records.member_overrides(self.index)

    @cached_property
    def params(self) -> dict[str, torch.Tensor]:
        """The final parameters of up to 8 numbers that population.json keeps, name -> tensor."""
        if self.records is None:
            return {}
        dtype = self.records.info.get("dtype")
        saved = self.records.member_params(self.index)
        return {n: _tensor(v, dtype) for n, v in saved.items()}

    def __repr__(self) -> str:
        return (
            f"Member({str(self.dir)!r}, #{self.index}, {' '.join(self.overrides)!r}, {self.status})"
        )


def _parse(value: str | None) -> Any:
    """An override's value as a number or bool where it is one (`0.1` -> 0.1)."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return {"true": True, "false": False, "null": None}.get(value.lower(), value)
    if "." in value or "e" in value or "E" in value:
        return number  # never an int's text: int() would refuse it
    try:
        return int(value)
    except ValueError:
        return number


def _row_columns(table: Any, index: Any = None) -> dict[str, list[Any]]:
    """summary.csv's columns (rank, job, overrides, one per override key, problem, status,
    ..., error, and the sharpness where measured) as lists of Python values, of the rows at
    `index` (default every row) of the sweep's table (gdlab.sweeps.summary.SweepTable)."""
    import numpy as np

    from gdlab.sweeps.summary import (
        CSV_COLUMNS,
        CSV_LEADING,
        SHARPNESS_COLUMNS,
        csv_override_keys,
    )

    chosen = None if index is None else np.asarray(index, dtype=np.int64)
    overrides = table.overrides if chosen is None else table.overrides.take(chosen)
    columns: dict[str, list[Any]] = {
        "rank": table.python_column("rank", chosen),
        "job": table.python_column("job", chosen),
        "overrides": overrides.to_pylist(),
    }
    for column in CSV_COLUMNS[3:CSV_LEADING]:  # optimizer.lr: the lr each row trained with
        columns[column] = table.python_column(column, chosen)
    for key in csv_override_keys(table):
        texts = (table.values[key] if chosen is None else table.values[key][chosen]).tolist()
        parsed = {text: _parse(text) for text in set(texts)}
        columns[key] = [parsed[text] for text in texts]
    for column in CSV_COLUMNS:
        if column == "error":
            errors = table.errors()
            columns[column] = errors if chosen is None else [errors[i] for i in chosen.tolist()]
        elif column not in columns:
            columns[column] = table.python_column(column, chosen)
    if table.has_sharpness():
        for column in SHARPNESS_COLUMNS:
            columns[column] = table.python_column(column.replace(".", "_"), chosen)
    return columns


class Sweep:
    """One sweep directory, read back: its rows as in summary.csv, best first within each
    problem, the runs of its jobs (and its population members), its plots."""

    def __init__(self, dir: PathLike) -> None:
        from gdlab.sweeps.summary import collect_table

        self.dir = Path(dir).absolute()
        self._table = collect_table(self.dir)

    @cached_property
    def _jobs(self) -> Sequence[JobRow]:
        """The rows as JobRows (made when first read)."""
        from gdlab.sweeps.summary import Rows

        return Rows(self._table)

    @cached_property
    def _columns(self) -> dict[str, list[Any]]:
        return _row_columns(self._table)

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        """The summary's rows (summary.csv's columns: rank, job, overrides, one per override
        key, problem, status, steps, final_loss, excess_loss, distance_to_minimizer, score,
        wall_time_s, lr, lr_limit, error, and sharpness.lambda_max, sharpness.lr_limit where
        measured), values as numbers, best first within a problem."""
        from gdlab.sweeps.summary import gc_paused

        names, columns = list(self._columns), self._columns.values()
        with gc_paused():
            return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]

    @property
    def problems(self) -> list[str]:
        """The problems the sweep trained (ranks are per problem), in table order."""
        return self._table.problems()

    @property
    def best(self) -> dict[str, Any] | dict[str, dict[str, Any] | None] | None:
        """The rank-1 row; with several problems, problem -> its rank-1 row. None where no
        run finished or converged."""
        best = {p: self._row(self._table.best(p)) for p in self.problems}
        if len(best) > 1:
            return best
        return next(iter(best.values()), None)

    def _row(self, index: int | None) -> dict[str, Any] | None:
        if index is None:
            return None
        if "rows" in self.__dict__:
            return self.rows[index]
        if "_columns" in self.__dict__:
            return {name: column[index] for name, column in self._columns.items()}
        return {name: column[0] for name, column in _row_columns(self._table, [index]).items()}

    @cached_property
    def runs(self) -> list[Run | Member]:
        """The runs in the order of `rows`: a Run per job, a Member per population member."""
        from gdlab.results import read_population_records
        from gdlab.sweeps.summary import gc_paused

        populations: dict[str, Any] = {}
        runs: list[Run | Member] = []
        with gc_paused():
            for name in self._table.columns["job"].tolist():
                job, _, index = name.partition("#")
                if not index:
                    runs.append(Run(self.dir / job))
                    continue
                if job not in populations:
                    populations[job] = (self.dir / job, read_population_records(self.dir / job))
                job_dir, records = populations[job]
                runs.append(Member(job_dir, int(index), records))
        return runs

    def to_pandas(self) -> pandas.DataFrame:
        """The rows as a DataFrame (summary.csv's columns)."""
        import pandas as pd

        return pd.DataFrame(self._columns)

    def plot(self, *names: str) -> Figures:
        """The sweep's plots (`lr`: final excess loss against lr, with the stability limits;
        its PNG files) as matplotlib Figures, or only those named."""
        if not names and not any(self.dir.glob("*.png")):
            from gdlab.sweeps.lr_plot import lr_figure

            if not self._table.lr_varies():
                return Figures()
            figure = lr_figure(self._jobs)
            figure.set_label("lr")
            return Figures([figure])
        return _png_figures(self.dir, names, ("lr",))

    def __repr__(self) -> str:
        from gdlab.sweeps.summary import headline

        return f"Sweep({str(self.dir)!r}, {headline(self._table)})"
