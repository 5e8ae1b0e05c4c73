"""The sweep summary: every job read back from disk, ranked, written as summary.csv and .md.

A multirun (`gdlab -m ...`) writes one complete run directory per job under the sweep
directory. `write_summary` reads every job's `.hydra/` and `metrics.json` (a population job's
population.json and members.parquet) back from disk and writes `summary.csv` and `summary.md`
beside them, best job first (and lr.png when the learning rate varies). Reading from disk (not
from Hydra's in-memory job returns) is what lets `gdlab-report DIR` rebuild the same table
later, for any sweep, also one whose jobs were interrupted, and makes it work the same for the
basic, joblib and submitit launchers.

The rows are held as columns (`SweepTable`): a population job of a million members is read as
arrays, ranked with one sort (`rank_order`: `gdlab.rules.rank_key`'s order, vectorised) and
written as summary.csv column by column; a JobRow is made only for the rows someone asks for
(`Rows`). summary.csv has every row; summary.md and the console show the top rows, the counts
by status (the headline) and, beyond MD_ROWS rows, point to summary.csv for the rest.
"""

from __future__ import annotations

import csv
import errno
import functools
import gc
import io
import itertools
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gdlab.results import read_metrics, read_population_records, string_lists
from gdlab.rules import EPS, UNRANKED_ORDER, clamp_excess, score
from gdlab.sweeps.jobs import (
    FAILED,
    RANKED,
    JobRow,
    find_job_dirs,
    job_num,
    load_yaml,
    split_override,
)
from gdlab.sweeps.lr_plot import LR_PLOT, draw_lr_plot
from gdlab.sweeps.naming import tidy_numbers

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
#: summary.md lists every row of a sweep of up to this many rows; of a larger one the top
#: MD_ROWS, the counts by status, and where the rest is (summary.csv)
MD_ROWS = 100


# --------------------------------------------------------------------------- the table

#: JobRow's number fields, held as float64 columns (NaN for None)
NUMBER_FIELDS = (
    "num",
    "steps",
    "final_loss",
    "minimum",
    "distance_to_minimizer",
    "wall_time_s",
    "lr",
    "rank",
    "excess_loss",
    "lr_limit",
    "momentum",
    "score",
    "sharpness_lambda_max",
    "sharpness_lr_limit",
)
#: those of them that are whole numbers
INTEGER_FIELDS = ("num", "steps", "rank")
#: JobRow's text fields, held as object arrays
TEXT_FIELDS = ("job", "status", "error", "note", "problem", "dtype")
#: summary.csv's (and gdlab.api's rows') name of the learning rate each row trained with
#: (JobRow.lr): the config key, so the table has one lr column whether or not it was swept
LR_COLUMN = "optimizer.lr"
#: columns of summary.csv named otherwise than the JobRow field they hold
COLUMN_FIELDS = {LR_COLUMN: "lr"}


class SweepTable:
    """A sweep's rows as columns: row i of every column is one job, or one member of a
    population job.

    `columns`: JobRow's fields (NUMBER_FIELDS as float64 arrays, NaN for None; TEXT_FIELDS as
    object arrays); `overrides`: each row's override list (a pyarrow ListArray of strings);
    `values`: override key -> each row's value text (an object array, None where the row has
    no such override), keys in the order they first appear.
    """

    def __init__(self, columns: dict[str, Any], overrides: Any, values: dict[str, Any]):
        self.columns = columns
        self.overrides = overrides
        self.values = values

    def __len__(self) -> int:
        return len(self.columns["job"])

    @classmethod
    def from_rows(cls, rows: Sequence[JobRow]) -> SweepTable:
        import numpy as np

        columns = {}
        for name in NUMBER_FIELDS:
            values = (_float_or_nan(getattr(r, name)) for r in rows)
            columns[name] = np.fromiter(values, dtype=np.float64, count=len(rows))
        for name in TEXT_FIELDS:
            columns[name] = _objects([getattr(r, name) for r in rows])
        keys = list(dict.fromkeys(k for r in rows for k in r.values))
        values = {k: _objects([r.values.get(k) for r in rows]) for k in keys}
        overrides = string_lists([[str(o) for o in r.overrides] for r in rows])
        return cls(columns, overrides, values)

    @classmethod
    def concat(cls, parts: Sequence[SweepTable]) -> SweepTable:
        """The parts' rows one after another."""
        import numpy as np
        import pyarrow as pa

        if not parts:
            return cls.from_rows([])
        if len(parts) == 1:
            return parts[0]
        columns = {k: np.concatenate([p.columns[k] for p in parts]) for k in parts[0].columns}
        keys = list(dict.fromkeys(k for p in parts for k in p.values))
        values = {
            k: np.concatenate([p.values.get(k, np.full(len(p), None, dtype=object)) for p in parts])
            for k in keys
        }
        overrides = pa.concat_arrays([p.overrides for p in parts])
        return cls(columns, overrides, values)

    def take(self, index: Any) -> SweepTable:
        """The rows at `index` (an integer array), in that order."""
        import numpy as np
        import pyarrow as pa

        index = np.asarray(index, dtype=np.int64)
        return SweepTable(
            {k: v[index] for k, v in self.columns.items()},
            self.overrides.take(pa.array(index)),
            {k: v[index] for k, v in self.values.items()},
        )

    # ------------------------------------------------------------------ rows as objects

    def python_column(self, name: str, index: Any = None) -> list[Any]:
        """Column `name` (a JobRow field) at `index` (default every row) as Python values:
        None for NaN, ints for INTEGER_FIELDS."""
        import numpy as np

        name = COLUMN_FIELDS.get(name, name)
        values = self.columns[name] if index is None else self.columns[name][index]
        if name not in NUMBER_FIELDS:
            return values.tolist()
        unknown = np.isnan(values)
        if unknown.all():
            return [None] * len(values)
        if name in INTEGER_FIELDS:
            if not unknown.any():
                return values.astype(np.int64).tolist()
            return [None if v != v else int(v) for v in values.tolist()]
        if not unknown.any():
            return values.tolist()
        return [None if v != v else v for v in values.tolist()]

    def value_dicts(self, index: Any = None) -> list[dict[str, str]]:
        """Each row's override key -> value text (JobRow.values) at `index`."""
        import numpy as np

        count = len(self) if index is None else len(index)
        keys = list(self.values)
        if not keys:
            return [{} for _ in range(count)]
        chosen = None if index is None else np.asarray(index)
        columns = [(v if chosen is None else v[chosen]).tolist() for v in self.values.values()]
        if all(None not in c for c in columns):
            return [dict(zip(keys, vs, strict=True)) for vs in zip(*columns, strict=True)]
        return [
            {k: v for k, v in zip(keys, vs, strict=True) if v is not None}
            for vs in zip(*columns, strict=True)
        ]

    def rows(self, index: Any = None) -> list[JobRow]:
        """The rows at `index` (default every row) as JobRows."""
        import numpy as np

        if index is not None:
            index = np.asarray(index, dtype=np.int64)
            if not len(index):
                return []
        with gc_paused():  # millions of new lists and dicts: no collection in between
            return self._rows(index)

    def _rows(self, index: Any) -> list[JobRow]:
        import pyarrow as pa

        lists: dict[str, list[Any]] = {
            name: self.python_column(name, index) for name in (*NUMBER_FIELDS, *TEXT_FIELDS)
        }
        overrides = self.overrides if index is None else self.overrides.take(pa.array(index))
        lists["overrides"] = overrides.to_pylist()
        lists["values"] = self.value_dicts(index)
        names = [f.name for f in fields(JobRow)]
        if names == [n for n in names if n in lists]:
            return list(itertools.starmap(JobRow, zip(*(lists[n] for n in names), strict=True)))
        known = [n for n in names if n in lists]  # JobRow grew a field: its default
        return [
            JobRow(**dict(zip(known, vs, strict=True)))
            for vs in zip(*(lists[n] for n in known), strict=True)
        ]

    def row(self, i: int) -> JobRow:
        return self.rows([i])[0]

    # ------------------------------------------------------------------ what the table says

    def distinct(self, key: str) -> set[Any]:
        """The distinct value texts of override `key` (None: a row without it)."""
        cache = self.__dict__.setdefault("_distinct", {})
        if key not in cache:
            cache[key] = set(self.values[key].tolist())
        return cache[key]

    def override_keys(self) -> list[str]:
        """The override keys, those whose value varies across rows first (jobs.override_keys)."""
        distinct = {k: self.distinct(k) - {None} for k in self.values}
        varying = sorted(k for k, v in distinct.items() if len(v) > 1)
        fixed = sorted(k for k, v in distinct.items() if len(v) <= 1)
        return varying + fixed

    def varying_keys(self) -> list[str]:
        """The override keys whose value differs between rows (a key some rows lack counts)."""
        return sorted(k for k in self.values if len(self.distinct(k)) > 1)

    def has_sharpness(self) -> bool:
        import numpy as np

        return bool((~np.isnan(self.columns["sharpness_lambda_max"])).any())

    def has_excess(self) -> bool:
        import numpy as np

        return bool((~np.isnan(self.columns["excess_loss"])).any())

    def lr_varies(self) -> bool:
        """More than one learning rate: lr.png is worth drawing (lr_plot.lr_varies)."""
        import numpy as np

        lrs = self.columns["lr"][~np.isnan(self.columns["lr"])]
        return bool(lrs.size) and bool(lrs.min() != lrs.max())

    def problems(self) -> list[str]:
        """The problems, in table order."""
        return list(dict.fromkeys(self.columns["problem"].tolist()))

    def counts(self) -> dict[str, int]:
        """Rows by status."""
        from collections import Counter

        return dict(Counter(self.columns["status"].tolist()))

    def ranked(self) -> Any:
        """Whether each row's status is ranked (finished, converged)."""
        return _is_any(self.columns["status"], RANKED)

    def best(self, problem: str) -> int | None:
        """The index of the problem's rank-1 row; None when none of its rows is ranked."""
        import numpy as np

        for i in np.flatnonzero(self.columns["rank"] == 1).tolist():
            if self.columns["problem"][i] == problem:
                return i
        return None

    def errors(self) -> list[str | None]:
        """Each row's error and note, as summary.csv's `error` column (None: neither)."""
        errors, notes = self.columns["error"].tolist(), self.columns["note"].tolist()
        if all(n is None for n in notes):
            return [e or None for e in errors]
        return [
            "; ".join(x for x in (e, n) if x) or None for e, n in zip(errors, notes, strict=True)
        ]


class Rows(Sequence[JobRow]):
    """A SweepTable's rows as JobRows, made when asked for: `len`, an index and a slice cost
    what they return; iterating makes every row once (and keeps them)."""

    def __init__(self, table: SweepTable, index: Any = None) -> None:
        self.table = table
        self.index = index  # None: every row
        self._all: list[JobRow] | None = None

    def __len__(self) -> int:
        return len(self.table) if self.index is None else len(self.index)

    def _positions(self, key: Any) -> Any:
        import numpy as np

        positions = np.arange(len(self))[key]
        return positions if self.index is None else np.asarray(self.index)[positions]

    def __getitem__(self, key: Any) -> Any:
        if self._all is not None:
            return self._all[key]
        if isinstance(key, slice):
            return self.table.rows(self._positions(key))
        if not -len(self) <= key < len(self):
            raise IndexError(key)
        return self.table.rows(self._positions(key).reshape(1))[0]

    def __iter__(self) -> Iterator[JobRow]:
        if self._all is None:
            self._all = self.table.rows(self.index)
        return iter(self._all)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def as_table(self) -> SweepTable:
        return self.table if self.index is None else self.table.take(self.index)

    def override_keys(self) -> list[str]:
        return self.as_table().override_keys()

    def varying_keys(self) -> list[str]:
        return self.as_table().varying_keys()


def as_table(rows: SweepTable | Sequence[JobRow]) -> SweepTable:
    """`rows` as a SweepTable (JobRows are copied into columns)."""
    if isinstance(rows, SweepTable):
        return rows
    if isinstance(rows, Rows):
        return rows.as_table()
    return SweepTable.from_rows(rows)


def _float_or_nan(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _objects(values: list[Any]) -> Any:
    import numpy as np

    return np.fromiter(values, dtype=object, count=len(values))


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (it would walk every new row again and again)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _is_any(values: Any, choices: Sequence[str]) -> Any:
    """Whether each entry of an object array of text is one of `choices`."""
    import numpy as np

    out = np.zeros(len(values), dtype=bool)
    for choice in choices:
        out |= values == str(choice)
    return out


def _factorize(values: Any) -> tuple[Any, list[Any]]:
    """(codes, distinct): each entry's index into the distinct values, in order of first
    appearance."""
    import numpy as np

    items = values.tolist()
    if len(set(items)) <= 1:
        return np.zeros(len(items), dtype=np.int64), items[:1]
    distinct: dict[Any, int] = {}
    codes = np.fromiter(
        (distinct.setdefault(v, len(distinct)) for v in items),
        dtype=np.int64,
        count=len(values),
    )
    return codes, list(distinct)


def _blank(values: Any) -> Any:
    """Whether each entry of an object array of text is None or empty."""
    import numpy as np

    return np.equal(values, None) | np.equal(values, "")


# --------------------------------------------------------------------------- reading jobs back


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def load_job(job_dir: Path, sweep_dir: Path) -> JobRow:
    """Read one job back: its overrides and config from `.hydra/`, its result from metrics.json.

    A job without metrics.json was interrupted (or is still running); its steps and loss then
    come from the last point in its event files, when it logged any.
    """
    job_dir, sweep_dir = Path(job_dir), Path(sweep_dir)
    name = job_dir.relative_to(sweep_dir).as_posix() if job_dir != sweep_dir else "."
    try:
        overrides = [str(o) for o in load_yaml(job_dir / ".hydra" / "overrides.yaml") or []]
    except (OSError, yaml.YAMLError):
        overrides = []
    row = JobRow(job=name, num=job_num(job_dir), overrides=overrides, status="interrupted")
    row.values = dict(split_override(o) for o in overrides)
    try:
        config = load_yaml(job_dir / ".hydra" / "config.yaml") or {}
        row.lr = _number((config.get("optimizer") or {}).get("lr"))
        row.momentum = _number((config.get("optimizer") or {}).get("momentum"))
        fields = dict(config.get("objective") or {})
        fields.pop("_target_", None)
        dtype = (config.get("device") or {}).get("dtype")
        row.problem = problem_key(
            {"name": objective_choice(job_dir), "fields": fields, "dtype": dtype}
        )
    except (OSError, AttributeError, yaml.YAMLError):
        pass
    if row.lr is None:  # no readable config: the lr its command line gave, if any
        row.lr = _number(row.values.get(LR_COLUMN))
    metrics = read_metrics(job_dir)  # None: no metrics.json; unreadable: a failed record
    if metrics is not None:
        row.status = str(metrics.get("status") or "failed")
        row.steps = metrics.get("steps")
        row.final_loss = _number(metrics.get("final_loss"))
        row.minimum = _number(metrics.get("minimum"))
        row.distance_to_minimizer = _number(metrics.get("distance_to_minimizer"))
        row.wall_time_s = _number(metrics.get("wall_time_s"))
        row.lr_limit = _number(metrics.get("lr_limit"))
        row.dtype = metrics.get("dtype")
        final = (metrics.get("sharpness") or {}).get("final") or {}
        row.sharpness_lambda_max = _number(final.get("lambda_max"))
        row.sharpness_lr_limit = _number(final.get("lr_limit"))
        row.error = metrics.get("error") or (
            metrics.get("stop_reason") if row.status not in RANKED else None
        )
        if row.status == "diverged" and row.final_loss is None:
            row.final_loss = math.inf  # JSON has no infinity; a diverged loss is not finite
        if isinstance(metrics.get("problem"), dict):
            row.problem = problem_key(metrics["problem"])
        _judge(row, metrics)
    if row.status not in RANKED and row.steps is None:
        last = last_logged_point(job_dir)
        if last is not None:
            row.steps, row.final_loss = last
            row.note = "last logged point"
    return row


def last_logged_point(job_dir: Path) -> tuple[int, float] | None:
    """The step and loss of the last `train/loss` point in a job's event files, if any."""
    files = sorted(Path(job_dir).glob("events.out.tfevents.*"))
    if not files:
        return None
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    last: tuple[int, float] | None = None
    for path in files:
        try:
            for event in LegacyEventFileLoader(str(path)).Load():  # raw: simple_value kept
                for value in event.summary.value:
                    if value.tag == "train/loss" and (last is None or event.step >= last[0]):
                        last = (int(event.step), float(value.simple_value))
        except Exception:  # a truncated file from a killed job: keep what was read
            continue
    return last


def population_table(job_dir: Path, sweep_dir: Path) -> SweepTable | None:
    """A population job's members (hydra/sweeper=population), one row each, as its own plain
    job would appear; None when `job_dir` has no readable population.json (a plain job, or a
    population job that never got to write it: `load_job` then reports it)."""
    import numpy as np
    import pyarrow as pa

    job_dir, sweep_dir = Path(job_dir), Path(sweep_dir)
    records = read_population_records(job_dir)
    if records is None:
        return None
    count, info = len(records), records.info
    name = job_dir.relative_to(sweep_dir).as_posix() if job_dir != sweep_dir else "."
    num = job_num(job_dir)
    problem = info.get("problem")
    status = records.texts("status")
    status[_blank(status)] = "failed"
    ranked = _is_any(status, RANKED)
    final_loss = records.numbers("final_loss")
    final_loss[(status == "diverged") & np.isnan(final_loss)] = math.inf  # JSON has no inf
    error, reason = records.texts("error"), records.texts("stop_reason")
    reason[ranked] = None
    error = np.where(_blank(error), reason, error)
    overrides = records.overrides().cast(pa.list_(pa.string()))
    values = override_values(overrides)

    def constant(value: Any) -> Any:
        return np.full(count, np.nan if value is None else value, dtype=np.float64)

    def text(value: Any) -> Any:
        return np.full(count, value, dtype=object)

    columns = {
        "job": _objects([f"{name}#{i}" for i in range(count)]),
        "num": constant(num),
        "status": status,
        "steps": records.numbers("steps"),
        "final_loss": final_loss,
        "minimum": constant(_number(info.get("minimum"))),
        "distance_to_minimizer": records.numbers("distance_to_minimizer"),
        "wall_time_s": constant(_number(info.get("wall_time_per_member_s"))),
        "lr": records.numbers("lr"),
        "rank": constant(None),
        "lr_limit": records.numbers("lr_limit"),
        "momentum": _numbers_of(values.get("optimizer.momentum"), count),
        "sharpness_lambda_max": records.numbers("sharpness_lambda_max"),
        "sharpness_lr_limit": records.numbers("sharpness_lr_limit"),
        "error": error,
        "note": text(None),
        "problem": text(problem_key(problem) if isinstance(problem, dict) else ""),
        "dtype": text(info.get("dtype")),
    }
    if records.has("score"):  # as each member's run recorded it (null: +inf, never ranked)
        columns["excess_loss"] = records.numbers("excess_loss")
        columns["score"] = records.numbers("score")
        columns["score"][np.isnan(columns["score"])] = math.inf
    else:  # records from before gdlab kept a score: judged here by the same rules
        _judge_columns(columns)
    unknown = np.isnan(columns["momentum"])
    if unknown.any():
        columns["momentum"][unknown] = _float_or_nan(_momentum_of(job_dir))
    return SweepTable(columns, overrides, values)


def load_population(job_dir: Path, sweep_dir: Path) -> list[JobRow] | None:
    """A population job's members as JobRows (see `population_table`)."""
    table = population_table(job_dir, sweep_dir)
    return None if table is None else table.rows()


def override_values(overrides: Any) -> dict[str, Any]:
    """Override key -> each row's value text (None where the row lacks the key), from a
    ListArray of override lists: `split_override` on every override at once."""
    import numpy as np
    import pyarrow.compute as pc

    count = len(overrides)
    flat = overrides.flatten()
    if not len(flat):
        return {}
    values = _rectangular_values(overrides, flat)
    if values is not None:
        return values
    parents = pc.list_parent_indices(overrides).to_numpy()
    parts = pc.extract_regex(flat, pattern=r"(?s)^(?P<key>[^=]*)(?:=(?P<value>.*))?$")
    keys = parts.field("key").dictionary_encode()
    codes = keys.indices.to_numpy()
    texts = parts.field("value").to_numpy(zero_copy_only=False)
    values = {}
    for code, key in enumerate(keys.dictionary.to_pylist()):
        chosen = codes == code
        column = np.full(count, None, dtype=object)
        column[parents[chosen]] = texts[chosen]
        values[key] = column
    return values


def _rectangular_values(overrides: Any, flat: Any) -> dict[str, Any] | None:
    """`override_values` where every row has the same keys in the same places (a population's
    members): each place's texts cut after `key=` at once; None where the rows differ."""
    import numpy as np
    import pyarrow.compute as pc

    count = len(overrides)
    lengths = pc.list_value_length(overrides).to_numpy(zero_copy_only=False)
    width = int(lengths[0])
    if not width or (lengths != width).any():
        return None
    first = overrides[0].as_py()
    keys = [split_override(text)[0] for text in first]
    if len(set(keys)) != width or not all("=" in text for text in first):
        return None
    values = {}
    for place, key in enumerate(keys):
        texts = flat.take(np.arange(place, count * width, width))
        if not pc.all(pc.starts_with(texts, key + "=")).as_py():
            return None
        cut = pc.utf8_slice_codeunits(texts, start=len(key) + 1)
        values[key] = cut.to_numpy(zero_copy_only=False).astype(object, copy=False)
    return values


def _numbers_of(texts: Any, count: int) -> Any:
    """Override value texts as numbers (NaN where absent or not a number), each distinct
    text converted once."""
    import numpy as np

    if texts is None:
        return np.full(count, np.nan)
    distinct = {t: _float_or_nan(_number(t)) for t in set(texts.tolist())}
    return np.fromiter((distinct[t] for t in texts.tolist()), dtype=np.float64, count=count)


def _judge_columns(columns: dict[str, Any]) -> None:
    """Excess loss and score of rows from records that kept no score (see `_judge`)."""
    import numpy as np

    excess, scores = [], []
    for status, loss, minimum, distance, steps, dtype in zip(
        columns["status"].tolist(),
        *(_nones(columns[k]) for k in ("final_loss", "minimum", "distance_to_minimizer")),
        [None if s != s else int(s) for s in columns["steps"].tolist()],
        columns["dtype"].tolist(),
        strict=True,
    ):
        row_excess = clamp_excess(loss, minimum)
        eps = EPS.get(str(dtype), EPS["float32"])
        excess.append(row_excess)
        scores.append(score(status, loss, row_excess, minimum, distance, steps, eps))
    columns["excess_loss"] = np.asarray(excess, dtype=np.float64)
    columns["score"] = np.asarray(scores, dtype=np.float64)


def _nones(values: Any) -> list[float | None]:
    return [None if v != v else v for v in values.tolist()]


def objective_choice(job_dir: Path) -> str | None:
    """The objective option a job's command chose (`.hydra/hydra.yaml`), as its run records
    it in metrics.json's `problem`: so a job that failed groups with its problem."""
    try:
        hydra_yaml = load_yaml(job_dir / ".hydra" / "hydra.yaml") or {}
        return str(hydra_yaml["hydra"]["runtime"]["choices"]["objective"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def _momentum_of(job_dir: Path) -> float | None:
    """optimizer.momentum of a job's config (the members' shared value)."""
    try:
        config = load_yaml(job_dir / ".hydra" / "config.yaml") or {}
        return _number((config.get("optimizer") or {}).get("momentum"))
    except (OSError, AttributeError, yaml.YAMLError):
        return None


def _judge(row: JobRow, record: dict[str, Any]) -> None:
    """The row's excess loss and score, as its run recorded them. Records from before gdlab
    kept a score (no `score` key) are judged here by the same rules, from what they hold."""
    if "score" in record:
        row.excess_loss = _number(record.get("excess_loss"))
        row.score = _number(record.get("score"))
        if row.score is None:
            row.score = math.inf  # JSON has no infinity: null is a run never ranked
        return
    row.excess_loss = clamp_excess(row.final_loss, row.minimum)
    eps = EPS.get(str(row.dtype), EPS["float32"])
    row.score = score(
        row.status,
        row.final_loss,
        row.excess_loss,
        row.minimum,
        row.distance_to_minimizer,
        row.steps,
        eps,
    )


def problem_key(problem: dict[str, Any]) -> str:
    """A problem as a comparable text: its objective's name and every field (JSON)."""
    return json.dumps(problem, sort_keys=True, default=str)


def problem_labels(keys: Sequence[str]) -> dict[str, str]:
    """Each problem key's short label: the objective's name, plus the fields (and dtype)
    that tell problems of the same name apart (`quadratic a=2`)."""
    decoded: dict[str, dict[str, Any]] = {}
    for key in keys:
        try:
            problem = json.loads(key) if key else {}
        except ValueError:
            problem = {}
        fields = dict(problem.get("fields") or {})
        if problem.get("dtype"):
            fields["dtype"] = problem["dtype"]
        name = str(problem.get("name") or fields.get("_target_", "?")).rsplit(".", 1)[-1]
        decoded[key] = {"name": name, "fields": fields}
    siblings: dict[str, list[dict[str, Any]]] = {}
    for problem in decoded.values():
        siblings.setdefault(problem["name"], []).append(problem["fields"])
    labels = {}
    for key, problem in decoded.items():
        fields, others = problem["fields"], siblings[problem["name"]]
        varying = sorted(
            k for k in fields if len({json.dumps(f.get(k), default=str) for f in others}) > 1
        )
        labels[key] = " ".join([problem["name"], *(f"{k}={fields[k]}" for k in varying)])
    return labels


def label_problems(table: SweepTable) -> None:
    """Replace each row's problem key by its short label (`problem_labels`)."""
    column = table.columns["problem"]
    labels = problem_labels(list(dict.fromkeys(column.tolist())))
    if len(labels) == 1:
        column[:] = next(iter(labels.values()))
    else:
        table.columns["problem"] = _objects([labels[k] for k in column.tolist()])


def collect_table(sweep_dir: Path) -> SweepTable:
    """Every job of a sweep, read back and ranked, as columns; a population job gives a row
    per member."""
    sweep_dir = Path(sweep_dir)
    parts: list[SweepTable] = []
    plain: list[JobRow] = []
    for job_dir in find_job_dirs(sweep_dir):
        members = population_table(job_dir, sweep_dir)
        if members is None:
            plain.append(load_job(job_dir, sweep_dir))
            continue
        if plain:
            parts.append(SweepTable.from_rows(plain))
            plain = []
        parts.append(members)
    if plain or not parts:
        parts.append(SweepTable.from_rows(plain))
    table = SweepTable.concat(parts)
    label_problems(table)
    return rank_table(table)


def collect_jobs(sweep_dir: Path) -> list[JobRow]:
    """Every job of a sweep, read back and ranked; a population job gives a row per member."""
    return collect_table(sweep_dir).rows()


# --------------------------------------------------------------------------- ranking


def rank_order(table: SweepTable) -> tuple[Any, Any]:
    """(order, rank): the rows' order, best first, and each row's rank (NaN: unranked), by
    `gdlab.rules.rank_key` over every row at once.

    Within each problem: ranked statuses by score, then fewer steps, then job order (the
    job's number, then the row's place); then diverged, interrupted and failed rows, unranked,
    in job order. Problems are never ranked against each other: each has its own rank 1, and
    they are listed with those that have a ranked row first, each in order of its first job.
    """
    import numpy as np

    count = len(table)
    status, num = table.columns["status"], table.columns["num"]
    place = np.arange(count)
    ranked = _is_any(status, RANKED)
    group = np.ones(count)  # rank_key: 0 ranked, then 1 + the status's UNRANKED_ORDER place
    for k, unranked in enumerate(UNRANKED_ORDER):
        group[status == str(unranked)] = 1 + k
    group[ranked] = 0
    run_score, steps = table.columns["score"], table.columns["steps"]
    value = np.where(ranked & ~np.isnan(run_score), run_score, np.inf)
    steps = np.where(ranked & ~np.isnan(steps), steps, np.inf)
    job_order = np.where(np.isnan(num), float(1 << 30), num)
    # the problem's place: those with a ranked row first, then by their first job
    codes, labels = _factorize(table.columns["problem"])
    first = np.full(len(labels), np.inf)
    np.minimum.at(first, codes, np.where(np.isnan(num), count + place, num))
    has_ranked = np.zeros(len(labels), dtype=bool)
    has_ranked[codes[ranked]] = True
    order = np.lexsort((place, job_order, steps, value, group, first[codes], ~has_ranked[codes]))
    rank = np.full(count, np.nan)
    ranked_codes = codes[order][ranked[order]]
    by_problem = np.argsort(ranked_codes, kind="stable")
    starts = np.searchsorted(ranked_codes[by_problem], ranked_codes[by_problem])
    positions = np.empty(len(by_problem), dtype=np.float64)
    positions[by_problem] = np.arange(len(by_problem)) - starts + 1
    rank[order[ranked[order]]] = positions
    return order, rank


def rank_table(table: SweepTable) -> SweepTable:
    """The table in rank order, its `rank` column set (see `rank_order`)."""
    order, rank = rank_order(table)
    table.columns["rank"] = rank
    return table.take(order)


def rank_jobs(rows: Sequence[JobRow]) -> list[JobRow]:
    """The rows best first, each row's `rank` set (see `rank_order`)."""
    order, rank = rank_order(SweepTable.from_rows(rows))
    for row, position in zip(rows, rank.tolist(), strict=True):
        row.rank = None if position != position else int(position)
    return [rows[i] for i in order.tolist()]


def problems_of(rows: SweepTable | Sequence[JobRow]) -> list[str]:
    """The sweep's problems, in table order."""
    return as_table(rows).problems()


# --------------------------------------------------------------------------- tables


def _fmt(value: float | int | None, spec: str = ".6g") -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value) if spec == "r" else format(value, spec)  # "r": every digit, for CSV


#: summary.csv's columns: these, with one column per override key after the first
#: CSV_LEADING (optimizer.lr, the learning rate the job used, is always one of them: from its
#: config where the command line did not set it, so summary.csv has one lr column)
CSV_COLUMNS = (
    "rank",
    "job",
    "overrides",
    LR_COLUMN,
    "problem",
    "status",
    "steps",
    "final_loss",
    "excess_loss",
    "distance_to_minimizer",
    "score",
    "wall_time_s",
    "lr_limit",
    "error",
)
CSV_LEADING = 4


#: columns of sweeps that measured sharpness (sharpness.every > 0), after CSV_COLUMNS
SHARPNESS_COLUMNS = ("sharpness.lambda_max", "sharpness.lr_limit")


def has_sharpness(rows: SweepTable | Sequence[JobRow]) -> bool:
    if isinstance(rows, SweepTable | Rows):
        return as_table(rows).has_sharpness()
    return any(r.sharpness_lambda_max is not None for r in rows)


def summary_csv(rows: SweepTable | Sequence[JobRow]) -> str:
    """summary.csv: one row per job, best first; one extra column per override key (and the
    final sharpness where it was measured)."""
    return b"".join(csv_chunks(as_table(rows))).decode("utf-8")


def csv_override_keys(table: SweepTable) -> list[str]:
    """The override keys that get a column of their own in summary.csv: every one but
    optimizer.lr, which has its column (LR_COLUMN) whether it was swept or not."""
    return [k for k in table.override_keys() if k != LR_COLUMN]


#: wall times (seconds) in summary.csv, and in summary.md and on the console: significant
#: digits, so a population member's share of its job (often microseconds) is not 0.000
WALL_TIME_FORMAT = ".4g"
WALL_TIME_TABLE_FORMAT = ".3g"


#: rows of summary.csv formatted at once (bounds memory, and keeps each chunk under 2 GiB)
CSV_CHUNK_ROWS = 250_000


def csv_chunks(table: SweepTable) -> Iterator[bytes]:
    """summary.csv as UTF-8 chunks: the header, then CSV_CHUNK_ROWS rows at a time, each
    column formatted at once (pyarrow): a million rows take about a second. The cells are the
    csv module's: numbers with every digit (`repr`), text quoted where it must be."""
    keys = csv_override_keys(table)
    sharp = table.has_sharpness()
    header = io.StringIO()
    extra = list(SHARPNESS_COLUMNS) if sharp else []
    csv.writer(header, lineterminator="\n").writerow(
        [*CSV_COLUMNS[:CSV_LEADING], *keys, *CSV_COLUMNS[CSV_LEADING:], *extra]
    )
    yield header.getvalue().encode("utf-8")
    if not len(table):
        return
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = table.columns
    errors = _objects(table.errors())
    numbers = ["final_loss", "excess_loss", "distance_to_minimizer", "score"]
    for start in range(0, len(table), CSV_CHUNK_ROWS):
        part = slice(start, start + CSV_CHUNK_ROWS)
        cells = [
            _integer_strings(columns["rank"][part]),
            _text_strings(columns["job"][part]),
            _text_strings(pc.binary_join(table.overrides[part], " ")),
            _number_strings(columns["lr"][part]),
            *(_text_strings(table.values[k][part]) for k in keys),
            _text_strings(columns["problem"][part]),
            _text_strings(columns["status"][part]),
            _integer_strings(columns["steps"][part]),
            *(_number_strings(columns[k][part]) for k in numbers),
            _number_strings(columns["wall_time_s"][part], WALL_TIME_FORMAT),
            _number_strings(columns["lr_limit"][part]),
            _text_strings(errors[part]),
        ]
        if sharp:
            cells += [_number_strings(columns[k][part]) for k in SHARP_FIELDS]
        lines = pc.binary_join_element_wise(*cells, ",")
        lines = pc.binary_join_element_wise(lines, pa.scalar("\n"), "")
        yield _string_bytes(lines)


#: JobRow's fields of SHARPNESS_COLUMNS
SHARP_FIELDS = ("sharpness_lambda_max", "sharpness_lr_limit")


def _string_bytes(strings: Any) -> bytes:
    """Every string of a pyarrow string array, one after another, as bytes."""
    import numpy as np

    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)
    offsets = offsets[strings.offset : strings.offset + len(strings) + 1]
    return strings.buffers()[2][int(offsets[0]) : int(offsets[-1])].to_pybytes()


def _integer_strings(values: Any) -> Any:
    """Whole numbers (a float array, NaN for None) as CSV cells ("" for None)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    unknown = np.isnan(values)
    whole = np.where(unknown, 0, values).astype(np.int64)
    cells = pc.cast(pa.array(whole, mask=unknown if unknown.any() else None), pa.string())
    return pc.fill_null(cells, "")


def _number_strings(values: Any, spec: str = "r") -> Any:
    """Numbers (NaN for None) as CSV cells, as `_fmt(value, spec)` writes them ("" for
    None). For "r" (every digit: `repr`), pyarrow's shortest round-trip digits laid out as
    Python lays them out (positional from 1e-4 to 1e16, with at least one decimal; else
    d.ddde±XX), `repr` itself where the two layouts differ; other specs format each distinct
    value once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    unknown = np.isnan(values)
    if spec != "r" or unknown.all():
        out = np.full(len(values), "", dtype=object)
        present = ~unknown
        if present.any():
            distinct, inverse = np.unique(values[present].view(np.int64), return_inverse=True)
            texts = [_fmt(v, spec) for v in distinct.view(np.float64).tolist()]
            out[present] = _objects(texts)[inverse.reshape(-1)]
        return pa.array(out, type=pa.string())
    cells = pc.cast(pa.array(values, mask=unknown if unknown.any() else None), pa.string())
    finite = np.isfinite(values)
    size = np.abs(np.where(finite, values, 0.0))
    python_sci = finite & (size != 0) & ((size < 1e-4) | (size >= 1e16))
    arrow_sci = np.asarray(pc.fill_null(pc.match_substring(cells, "e"), False))
    point = np.asarray(pc.fill_null(pc.match_substring(cells, "."), False))
    add_point = finite & ~python_sci & ~arrow_sci & ~point
    if add_point.any():
        cells = pc.if_else(add_point, pc.binary_join_element_wise(cells, ".0", ""), cells)
    if (python_sci & arrow_sci).any():  # e-7 -> e-07
        cells = pc.replace_substring_regex(cells, r"e([+-])(\d)$", r"e\10\2")
    differ = finite & (python_sci != arrow_sci)
    if differ.any():
        texts = pa.array([repr(v) for v in values[differ].tolist()], type=pa.string())
        cells = pc.replace_with_mask(cells, pa.array(differ), texts)
    return pc.fill_null(cells, "")


def _text_strings(values: Any) -> Any:
    """Text (None for nothing) as CSV cells, quoted where and as the csv module quotes them
    (a cell with a comma, a quote or a line break: in quotes, its quotes doubled)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        try:
            values = pa.array(values, type=pa.string())
        except (pa.ArrowException, TypeError):
            values = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    special = np.asarray(pc.fill_null(pc.match_substring_regex(values, _quoted_chars()), False))
    if special.any():
        chosen = pa.array(special)
        quoted = pc.replace_substring(values.filter(chosen), '"', '""')
        quoted = pc.binary_join_element_wise(pa.scalar('"'), quoted, pa.scalar('"'), "")
        values = pc.replace_with_mask(values, chosen, quoted)
    return pc.fill_null(values, "")


@functools.cache
def _quoted_chars() -> str:
    """A regular expression of the characters for which the csv module (QUOTE_MINIMAL,
    lines ending in \\n) quotes a cell: asked of the csv module itself."""
    chosen = []
    for char in ',"\n\r\t ;':
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([f"a{char}b", ""])
        if buffer.getvalue().startswith('"'):
            chosen.append({"\n": r"\n", "\r": r"\r", "\t": r"\t"}.get(char, "\\" + char))
    return "[" + "".join(chosen) + "]"


def markdown_table(
    rows: SweepTable | Sequence[JobRow], limit: int | None = None, more_in: str = SUMMARY_MD
) -> str:
    """The summary as a Markdown table (the first `limit` rows, and a last line saying how
    many more `more_in` has), for summary.md and the console."""
    import numpy as np

    table = as_table(rows)
    keys = table.varying_keys() or table.override_keys()
    show_excess = table.has_excess()
    show_problem = len(table.problems()) > 1
    header = ["problem"] if show_problem else []
    header += ["rank", *keys, "status", "steps", "final loss"]
    header += ["excess loss"] if show_excess else []
    show_sharpness = table.has_sharpness()
    header += ["λ_max", "lr limit"] if show_sharpness else []
    header += ["distance to min", wall_time_header(table)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    count = len(table) if limit is None else min(limit, len(table))
    for row in table.rows(np.arange(count)) if count else []:
        status = row.status + (" *" if row.note else "")
        cells = [row.problem] if show_problem else []
        values = row.values
        if LR_COLUMN in keys and LR_COLUMN not in values and row.lr is not None:
            values = {**values, LR_COLUMN: _fmt(row.lr, "g")}  # the lr used, where not swept
        cells += [str(row.rank or "-"), *(tidy_numbers(values.get(k, "")) for k in keys)]
        cells.append(status)
        cells += [_fmt(row.steps, "d"), _fmt(row.final_loss)]
        cells += [_fmt(row.excess_loss, ".3g")] if show_excess else []
        if show_sharpness:
            cells += [_fmt(row.sharpness_lambda_max, ".4g"), _fmt(row.sharpness_lr_limit, ".4g")]
        cells.append(_fmt(row.distance_to_minimizer, ".3g"))
        cells.append(_fmt(row.wall_time_s, WALL_TIME_TABLE_FORMAT))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if limit is not None and len(table) > limit:
        where = f" in {more_in}" if more_in else ""
        more = f"| … {len(table) - limit} more{where} |"
        lines.append(more + " |" * (len(header) - 1))
    return "\n".join(lines)


def has_members(table: SweepTable) -> bool:
    """Whether some rows are members of a population job (job `NAME#i`)."""
    return any("#" in str(job) for job in table.columns["job"].tolist())


def wall_time_header(table: SweepTable) -> str:
    """The wall-time column's header. A plain job's is its training loop's, in seconds; a
    population member's is its share of its job's: the job's training time divided by its
    members ("per member"; a plain job is a member of one)."""
    if has_members(table):
        return "wall time (s, per member)"
    return "wall time (s)"


def counts(rows: SweepTable | Sequence[JobRow]) -> dict[str, int]:
    """Rows by status."""
    return as_table(rows).counts()


def headline(rows: SweepTable | Sequence[JobRow]) -> str:
    """`N runs: 3 converged, 1 diverged; best: optimizer.lr=0.5 (excess loss 0)`, with the
    best of each problem where the sweep holds several.

    A row is a job of a plain multirun or a member of a population job: "runs" covers both.
    """
    table = as_table(rows)
    tally = ", ".join(f"{n} {status}" for status, n in sorted(table.counts().items()))
    text = f"{len(table)} run{'s' if len(table) != 1 else ''}: {tally or 'none'}"
    problems = table.problems()
    keys = [k for k in table.varying_keys() if not k.startswith("objective")]
    parts = []
    for problem in problems:
        index = table.best(problem)
        label = f"best of {problem}" if len(problems) > 1 else "best"
        if index is None:
            parts.append(f"{label}: none ranked (no run finished or converged)")
            continue
        best = table.row(index)
        setting = " ".join(
            f"{k}={tidy_numbers(best.values[k])}" for k in keys if k in best.values
        ) or " ".join(best.overrides)
        if best.excess_loss is not None:
            result = f"excess loss {_fmt(best.excess_loss, '.3g')}"
        else:
            result = f"loss {_fmt(best.final_loss)}"
        parts.append(f"{label}: {setting or best.job} ({result})")
    return "; ".join([text, *parts])


def summary_markdown(sweep_dir: Path, rows: SweepTable | Sequence[JobRow]) -> str:
    """summary.md: the headline (counts by status, the best), how rows are ranked, the table
    (every row up to MD_ROWS, else the top MD_ROWS and a pointer to summary.csv), and why
    jobs did not finish."""
    import numpy as np

    table = as_table(rows)
    whole = len(table) <= MD_ROWS
    lines = [
        f"# Sweep {Path(sweep_dir).name}",
        "",
        headline(table),
        "",
        "Ranked within each problem (never across problems) by score: runs at the minimum to "
        "their dtype's precision first, nearest to the minimiser first; then runs that "
        "converged elsewhere, by excess loss; then the rest, by excess loss (f - f* in "
        "float64; the final loss where f* is unknown); ties to fewer steps. Diverged, "
        "interrupted and failed jobs are listed after, never ranked. "
        "`*`: steps and loss of the last logged point (the job did not finish).",
        "",
    ]
    if not whole:
        lines += [
            f"The top {MD_ROWS} of {len(table)} rows; summary.csv has every row.",
            "",
            "| status | runs |",
            "|---|---|",
            *(f"| {status} | {n} |" for status, n in sorted(table.counts().items())),
            "",
        ]
    lines += [markdown_table(table, None if whole else MD_ROWS, SUMMARY_CSV), ""]
    error = table.columns["error"]
    failing = np.flatnonzero(~_blank(error) & ~table.ranked())
    if failing.size:
        lines += ["## Why jobs did not finish", ""]
        lines += _failure_lines(table, failing)
        lines.append("")
    return "\n".join(lines)


def _failure_lines(table: SweepTable, failing: Any) -> list[str]:
    """A line per job that did not finish and says why; beyond MD_ROWS of them, a line per
    distinct status and reason (at most MD_ROWS), with the count."""
    jobs, status = table.columns["job"], table.columns["status"]
    error = table.columns["error"]
    if failing.size <= MD_ROWS:
        return [f"- `{jobs[i]}` ({status[i]}): {error[i]}" for i in failing.tolist()]
    groups: dict[tuple[str, str], list[int]] = {}
    for i in failing.tolist():
        groups.setdefault((status[i], error[i]), []).append(i)
    lines = []
    for (state, why), members in itertools.islice(groups.items(), MD_ROWS):
        more = f" and {len(members) - 1} more" if len(members) > 1 else ""
        lines.append(f"- `{jobs[members[0]]}`{more} ({state}): {why}")
    if len(groups) > MD_ROWS:
        rest = sum(len(m) for m in itertools.islice(groups.values(), MD_ROWS, None))
        lines.append(f"- … {rest} more, for {len(groups) - MD_ROWS} other reasons: summary.csv")
    return lines


# --------------------------------------------------------------------------- the files


def _write_text_atomic(path: Path, text: str) -> None:
    _write_chunks_atomic(path, [text.encode("utf-8")])


def _write_chunks_atomic(path: Path, chunks: Iterator[bytes] | Sequence[bytes]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class SweepSummary:
    """What `write_summary` produced: the rows (JobRows made when asked for), the files, and
    the rows as columns (`table`)."""

    sweep_dir: Path
    rows: Sequence[JobRow]
    csv_path: Path
    md_path: Path
    plot_path: Path | None = None
    #: the race's paths.png, paths.gif, losses.png and TensorBoard run (gdlab.sweeps.race)
    race_paths: list[Path] = field(default_factory=list)
    #: edge_of_stability.png, where the jobs measured their sharpness (gdlab.sweeps.edge_plot)
    edge_path: Path | None = None
    #: stability_map.png, where the sweep is a grid over two keys (gdlab.sweeps.stability_map)
    stability_path: Path | None = None
    table: SweepTable | None = None
    #: (file, reason) of each file that could not be written (a read-only directory, a
    #: summary.csv that is a folder, a full disk): the table is still printed
    unwritten: list[tuple[str, str]] = field(default_factory=list)

    def written(self) -> list[Path]:
        """The files written, in the order the summary lists them."""
        paths = [self.csv_path, self.md_path, self.plot_path, *self.race_paths]
        paths += [self.edge_path, self.stability_path]
        missing = {name for name, _ in self.unwritten}
        return [p for p in paths if p is not None and p.name not in missing]

    def unwritten_line(self) -> str | None:
        """One line naming what could not be written in the sweep directory, and why."""
        if not self.unwritten:
            return None
        reasons: dict[str, list[str]] = {}
        for name, reason in self.unwritten:
            reasons.setdefault(reason, []).append(name)
        why = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in reasons.items())
        return f"could not write in {self.sweep_dir}: {why}"

    @property
    def failed(self) -> Sequence[JobRow]:
        """The rows that failed or were interrupted."""
        import numpy as np

        table = self.table if self.table is not None else as_table(self.rows)
        return Rows(table, np.flatnonzero(_is_any(table.columns["status"], FAILED)))


def write_summary(sweep_dir: Path, plot: bool = True) -> SweepSummary:
    """Read every job of the sweep back and write summary.csv, summary.md (and lr.png, the
    race's pictures when the runs share one landscape of one or two numbers, and
    edge_of_stability.png when they measured their sharpness, stability_map.png over a grid
    of two swept keys)."""
    sweep_dir = Path(sweep_dir)
    table = collect_table(sweep_dir)
    csv_path, md_path = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD
    rows = Rows(table)
    summary = SweepSummary(sweep_dir, rows, csv_path, md_path, table=table)
    # A file that cannot be written is named in `unwritten`, never a traceback: the table
    # is read from the jobs and is printed all the same.
    writable = _attempt(
        summary, csv_path, lambda: _write_chunks_atomic(csv_path, csv_chunks(table))
    )
    md = summary_markdown(sweep_dir, table)
    writable = _attempt(summary, md_path, lambda: _write_text_atomic(md_path, md)) and writable
    if plot and not writable:  # the directory takes no files: pictures would fail as well
        summary.unwritten.append(("plots", "not drawn"))
        plot = False
    if plot and table.lr_varies():  # matplotlib is imported only here, to draw it
        lr_path = sweep_dir / LR_PLOT
        if _attempt(summary, lr_path, lambda: draw_lr_plot(rows, lr_path)):
            summary.plot_path = lr_path
    if plot:  # a race only where the ranked runs share one problem of one or two numbers
        from gdlab.sweeps.race import draw_race  # torch and matplotlib only to draw

        summary.race_paths = draw_race(sweep_dir, rows)
    if plot and table.has_sharpness():
        from gdlab.sweeps.edge_plot import draw_edge_of_stability

        summary.edge_path = draw_edge_of_stability(sweep_dir, rows)
    if plot and len(table) >= 16 and len(table.problems()) == 1:
        summary.stability_path = draw_stability_map_of(sweep_dir, table)
    return summary


#: errors after which a directory takes no more files (the others, such as a summary.csv that
#: is a folder, concern one file)
_DIRECTORY_ERRORS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOENT}
)


def _attempt(summary: SweepSummary, path: Path, write: Any) -> bool:
    """Call `write()`; where it fails, name `path` and the reason in `summary.unwritten`.
    False when the directory itself takes no more files (read-only, full, gone)."""
    from gdlab.errors import GdlabError

    try:
        write()
    except OSError as err:
        summary.unwritten.append((path.name, err.strerror or type(err).__name__))
        return err.errno not in _DIRECTORY_ERRORS
    except GdlabError as err:  # a write gdlab explains itself (a full disk, say)
        summary.unwritten.append((path.name, str(err)))
        return False
    return True


def draw_stability_map_of(sweep_dir: Path, table: SweepTable) -> Path | None:
    """stability_map.png where the sweep is a grid over two swept keys (from the columns: a
    million members draw in seconds); None otherwise."""
    from gdlab.sweeps.stability_map import draw_stability_map_columns

    first_job = str(table.columns["job"][0]).split("#", 1)[0]
    return draw_stability_map_columns(
        sweep_dir,
        table.values,
        table.columns["status"],
        table.columns["excess_loss"],
        lr_limit=table.columns["lr_limit"],
        final_loss=table.columns["final_loss"],
        job_dir=Path(sweep_dir) / first_job,
        problem=table.problems()[0],
    )


def print_summary(
    summary: SweepSummary, top: int = 10, stream: Any = None, prog: str = "gdlab"
) -> None:
    """The top of the table and where the rest is, on the console; what could not be
    written, in one line on stderr."""
    stream = stream or sys.stdout
    table = summary.table if summary.table is not None else as_table(summary.rows)
    print(f"gdlab: sweep {summary.sweep_dir}: {headline(table)}", file=stream)
    if len(table) and top > 0:
        more_in = SUMMARY_MD if len(table) <= MD_ROWS else SUMMARY_CSV
        if more_in in {name for name, _ in summary.unwritten}:
            more_in = ""  # not written: point nowhere
        print(markdown_table(table, limit=top, more_in=more_in), file=stream)
    written = summary.written()
    if written:
        print("gdlab: wrote " + ", ".join(str(p) for p in written), file=stream)
    stream.flush()
    line = summary.unwritten_line()
    if line is not None:
        print(f"{prog}: {line}", file=sys.stderr, flush=True)
