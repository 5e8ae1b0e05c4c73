"""Result files, one writer and one reader each: metrics.json, population.json, failures.

- `metrics.json`: a run's result (the metrics sink writes it when the run ends);
- a failure record: the metrics.json of a job that raised (status `failed` and the error);
- `population.json`: a population job's members, as columns in metrics.json's terms: inline
  (JSON lists) up to INLINE_MEMBERS members, in `members.parquet` beside it beyond.

Everything that reads results back (the sweep summary, `gdlab-report`) goes through
`read_metrics` and `read_population_records` (or `read_population`). JSON has no NaN or
infinity: those become null, and the status says why; members.parquet keeps that rule (a
number that is not finite is null). Files are written atomically, so a reader never sees half
of one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdlab.atomic import write_atomic
from gdlab.events import SMALL_PARAM_NUMEL
from gdlab.rules import Status

if TYPE_CHECKING:
    from gdlab.events import RunInfo, RunResult

METRICS_JSON = "metrics.json"
POPULATION_JSON = "population.json"


def json_number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null (the status says why)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def write_json_atomic(path: Path, data: Any, compact: bool = False) -> None:
    """Strict JSON (no NaN), written atomically; `compact` for large files (json's C encoder:
    indentation would take the pure-Python one, seconds per 100,000 members)."""
    if compact:
        text = json.dumps(data, allow_nan=False, separators=(",", ":")) + "\n"
    else:
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


# ------------------------------------------------------------------------------ writers


def metrics_document(info: RunInfo, result: RunResult) -> dict[str, Any]:
    """The metrics.json document for a run that ended (finished, converged, diverged,
    interrupted)."""

    def clean(values: Any) -> Any:
        if isinstance(values, list):
            return [clean(v) for v in values]
        return json_number(values)

    return {
        "status": str(result.status),
        "steps": result.steps,
        "final_loss": json_number(result.final_loss),
        "params": {k: clean(v.double().tolist()) for k, v in result.params.items()},
        "grad_norm": json_number(result.grad_norm),
        "distance_to_minimizer": json_number(result.distance_to_minimizer),
        "minimum": json_number(result.minimum),
        "excess_loss": json_number(result.excess_loss),
        "initial_loss": json_number(result.initial_loss),
        "lr": result.lr,
        "lr_limit": json_number(result.lr_limit),
        "score": json_number(result.score),  # null: +inf, never ranked
        "stop_reason": result.stop_reason,
        "wall_time_s": result.wall_time_s,
        "steps_per_s": json_number(result.steps_per_s),
        **({"sharpness": sharpness_document(result.sharpness)} if result.sharpness else {}),
        "objective": info.objective,
        "problem": info.problem,
        "device": info.device,
        "dtype": info.dtype,
    }


def sharpness_document(sharpness: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's `sharpness` (gdlab.curvature's measurements), numbers made strict JSON:
    `initial` and `final` (each with step, lambda_max, lambda_min, lr_limit, ratio, ...), every
    measurement in `history`, and the seconds they took."""

    def point(values: dict[str, Any]) -> dict[str, Any]:
        return {k: json_number(v) if isinstance(v, float) else v for k, v in values.items()}

    return {
        "every": sharpness["every"],
        "initial": point(sharpness["initial"]),
        "final": point(sharpness["final"]),
        "history": [point(p) for p in sharpness["history"]],
        "seconds": sharpness["seconds"],
    }


def error_line(error: BaseException) -> str:
    """`Type: first line of the message`, what a failed record keeps of an exception."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def failure_document(error: BaseException) -> dict[str, Any]:
    """metrics.json for a job that raised: the keys of a finished run's, null where unknown."""
    return {
        "status": str(Status.FAILED),
        "error": error_line(error),
        "steps": None,
        "final_loss": None,
        "params": {},
        "grad_norm": None,
        "distance_to_minimizer": None,
        "minimum": None,
        "excess_loss": None,
        "initial_loss": None,
        "lr": None,
        "lr_limit": None,
        "score": None,
        "stop_reason": None,
        "wall_time_s": None,
        "steps_per_s": None,
        "objective": None,
        "problem": None,
        "device": None,
        "dtype": None,
    }


def write_metrics(run_dir: Path, document: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / METRICS_JSON, document)


def write_failure(run_dir: Path, error: BaseException) -> None:
    """Record a job that raised, so the sweep summary shows it as `failed` with the error."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(run_dir, failure_document(error))


# ------------------------------------------------------------------------------ populations
#
# A population job's records are columns, one row per member, built and read as arrays
# (numpy and pyarrow, imported when a population is written or read: every run imports this
# module). Up to INLINE_MEMBERS members they are written inline in population.json, as JSON
# lists (the format of every population.json before members.parquet existed); beyond, to
# members.parquet beside a small population.json that holds the job's own fields and names
# the file. `read_population_records` reads both, and older files.

#: populations of up to this many members keep their columns inline in population.json
#: (about 250 bytes a member); larger ones write them to members.parquet
INLINE_MEMBERS = 10_000
MEMBERS_PARQUET = "members.parquet"
#: population.json's key naming the Parquet file of the members' columns
MEMBERS_FILE_KEY = "members_file"
#: the members' columns of numbers (null: unknown or not finite, as in JSON)
FLOAT_COLUMNS = (
    "lr",
    "final_loss",
    "grad_norm",
    "distance_to_minimizer",
    "excess_loss",
    "score",
    "lr_limit",
    "initial_loss",
)
#: the members' columns in population.json's order; then `params`, then `sharpness_*`
MEMBER_COLUMNS = (
    "overrides",
    "lr",
    "status",
    "steps",
    "final_loss",
    "grad_norm",
    "distance_to_minimizer",
    "excess_loss",
    "score",
    "lr_limit",
    "initial_loss",
    "stop_reason",
    "error",
)
#: a small parameter's column in members.parquet: `params.<name>` (a number, or a fixed-size
#: list of the parameter's numbers in row-major order; its shape in `param_shapes`)
PARAMS_PREFIX = "params."
#: the shared fields a member's record repeats (Member.metrics)
SHARED_FIELDS = ("objective", "problem", "device", "dtype", "minimum")


class PopulationRecords:
    """A population job's records: the job's own fields and one row per member.

    `info`: population.json's job-level fields (`members`, `objective`, `problem`, `device`,
    `dtype`, `strategy`, `chunk_size`, `wall_time_s`, `minimum`, `curvature`, `tensorboard`,
    ...). `table`: a pyarrow Table, one row per member: MEMBER_COLUMNS, `params.<name>` for each
    small parameter (shapes in `param_shapes`) and, where sharpness was measured, the
    `sharpness_*` columns. A number that is not finite is null, as JSON's null.
    """

    def __init__(self, info: dict[str, Any], table: Any, param_shapes: dict[str, list[int]]):
        self.info = info
        self.table = table
        self.param_shapes = param_shapes

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def has(self, name: str) -> bool:
        return name in self.table.column_names

    def numbers(self, name: str) -> Any:
        """Column `name` as a float64 numpy array, NaN where null (or no such column)."""
        import numpy as np

        if not self.has(name):
            return np.full(len(self), np.nan)
        column = self.table.column(name)
        if column.null_count == len(column):
            return np.full(len(self), np.nan)
        return np.array(column.to_numpy(zero_copy_only=False), dtype=np.float64)  # writable

    def texts(self, name: str) -> Any:
        """Column `name` as a numpy object array, None where null (or no such column)."""
        import numpy as np

        if not self.has(name):
            return np.full(len(self), None, dtype=object)
        values = self.table.column(name).to_numpy(zero_copy_only=False)
        if values.dtype == object and values.flags.writeable:
            return values
        return values.astype(object)  # a copy, writable

    def overrides(self) -> Any:
        """The members' override lists, a pyarrow ListArray of strings."""
        column = self.table.column("overrides")
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)

    def column(self, name: str) -> list[Any]:
        """Column `name` as population.json's list (None where null)."""
        return self.table.column(name).to_pylist()

    def param_column(self, name: str) -> list[Any]:
        """Parameter `name` of every member as population.json's list: a number, or nested
        lists in the parameter's shape; None for a member that did not train."""
        shape = tuple(self.param_shapes.get(name, ()))
        values = self.table.column(PARAMS_PREFIX + name).to_pylist()
        if len(shape) <= 1:
            return values
        return [None if v is None else _nest(v, shape) for v in values]

    def member(self, i: int) -> dict[str, Any]:
        """Member i's record in metrics.json's terms: its columns (status, steps, final_loss,
        grad_norm, distance_to_minimizer, excess_loss, score, lr, lr_limit, ...) and what the
        members share (objective, problem, device, dtype, minimum)."""
        record = {
            name: self.table.column(name)[i].as_py()
            for name in self.table.column_names
            if name != "overrides" and not name.startswith(PARAMS_PREFIX)
        }
        return {**record, **{k: self.info.get(k) for k in SHARED_FIELDS}}

    def member_overrides(self, i: int) -> list[str]:
        return [str(o) for o in self.table.column("overrides")[i].as_py() or []]

    def member_params(self, i: int) -> dict[str, Any]:
        """Member i's small parameters (name -> number or nested lists); those it lacks left
        out."""
        out = {}
        for name, shape in self.param_shapes.items():
            value = self.table.column(PARAMS_PREFIX + name)[i].as_py()
            if value is not None:
                out[name] = _nest(value, tuple(shape)) if len(shape) > 1 else value
        return out

    def document(self) -> dict[str, Any]:
        """population.json with the members' columns inline (JSON lists, null for what is not
        finite): the format of populations of up to INLINE_MEMBERS members."""
        doc = {k: v for k, v in self.info.items() if k not in (MEMBERS_FILE_KEY, "param_shapes")}
        doc["version"] = 1
        params_done = False
        for name in self.table.column_names:
            if name.startswith(PARAMS_PREFIX):
                continue
            if name not in MEMBER_COLUMNS and not params_done:
                doc["params"], params_done = self._params(), True
            doc[name] = self.column(name)
        if not params_done:
            doc["params"] = self._params()
        return doc

    def _params(self) -> dict[str, list[Any]]:
        return {name: self.param_column(name) for name in self.param_shapes}

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> PopulationRecords:
        """Records from population.json with its columns inline (any version)."""
        import pyarrow as pa

        count = len(data["overrides"])
        info: dict[str, Any] = {}
        columns: dict[str, Any] = {}
        params = data.get("params") or {}
        shapes: dict[str, list[int]] = {}
        for key, value in data.items():
            if key == "params":
                continue
            if not (isinstance(value, list) and len(value) == count):
                info[key] = value
            elif key == "overrides":
                columns[key] = string_lists(value)
            elif key in FLOAT_COLUMNS:
                columns[key] = _float_column(_floats(value))
            elif key == "steps":
                columns[key] = _value_column(value, "int")
            elif key in ("status", "stop_reason", "error"):
                columns[key] = _value_column(value, "str")
            else:
                columns[key] = _value_column(value)
        for name, values in params.items():
            if not (isinstance(values, list) and len(values) == count):
                continue
            shape = next((_shape_of(v) for v in values if v is not None), ())
            shapes[name] = list(shape)
            columns[PARAMS_PREFIX + name] = _param_column(values, shape)
        info.setdefault("members", count)
        return cls(info, pa.table(columns), shapes)


class PopulationDocument(Mapping[str, Any]):
    """population.json as `read_population` gives it for a population whose columns are in
    members.parquet: the job's fields, each column as a list (None where null), `params` as
    name -> list; a column is converted when first asked for."""

    def __init__(self, records: PopulationRecords) -> None:
        self.records = records
        names = [n for n in records.table.column_names if not n.startswith(PARAMS_PREFIX)]
        self._keys = [*records.info, *(n for n in names if n not in records.info), "params"]
        self._cache: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self._cache:
            return self._cache[key]
        records = self.records
        if key == "params":
            value: Any = records._params()
        elif records.has(key):
            value = records.column(key)
        elif key in records.info:
            return records.info[key]
        else:
            raise KeyError(key)
        self._cache[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def population_records(
    count: int,
    overrides: Sequence[Sequence[str]] | Any,
    lrs: Sequence[Any],
    result: Any,
    trained: Sequence[int],
    problems: dict[int, str],
    info: dict[str, Any] | None,
    extra: dict[str, Any],
) -> PopulationRecords:
    """A population job's records: per-member columns in metrics.json's terms.

    `result` (a PopulationResult, or None when no member trained) holds the members listed in
    `trained`, in that order; `problems` says why the others were refused. Built as arrays:
    a million members take about a second.
    """
    import numpy as np
    import pyarrow as pa

    rows = np.asarray(trained, dtype=np.int64)
    status = np.full(count, str(Status.FAILED), dtype=object)
    steps = np.zeros(count, dtype=np.int64)
    ran = np.zeros(count, dtype=bool)
    stop_reason = np.full(count, None, dtype=object)
    error = np.full(count, None, dtype=object)
    for i, why in problems.items():
        error[i] = why

    def floats(values: Any) -> Any:
        column = np.full(count, np.nan)
        if result is not None and values is not None and len(values):
            column[rows] = _floats(values)
        return _float_column(column)

    wall = per_member = None
    sharpness: dict[str, Any] = {}
    params: dict[str, Any] = {}
    shapes: dict[str, list[int]] = {}
    if result is not None:
        wall = result.wall_time_s
        per_member = wall / max(1, count)
        status[rows] = np.asarray(result.status, dtype=object)
        steps[rows] = np.asarray(result.steps, dtype=np.int64)
        ran[rows] = True
        stop_reason[rows] = np.asarray(result.stop_reason, dtype=object)
        for name, tensor in result.params.items():
            if tensor[0].numel() > SMALL_PARAM_NUMEL:
                continue
            shape = tuple(tensor.shape[1:])
            values = np.full((count, tensor[0].numel()), np.nan)
            values[rows] = tensor.detach().double().cpu().reshape(tensor.shape[0], -1).numpy()
            shapes[name] = list(shape)
            params[PARAMS_PREFIX + name] = _matrix_column(values, shape, ran)
        if any(p is not None for p in result.sharpness_final):
            sharpness = sharpness_columns(count, rows, result)
    columns = {
        "overrides": string_lists(overrides),
        "lr": _float_column(_floats(lrs)),
        "status": pa.array(status, type=pa.string()),
        "steps": pa.array(steps, mask=~ran),
        "final_loss": floats(None if result is None else result.final_loss),
        "grad_norm": floats(None if result is None else result.grad_norm),
        "distance_to_minimizer": floats(None if result is None else result.distance_to_minimizer),
        "excess_loss": floats(None if result is None else result.excess_loss),
        "score": floats(None if result is None else result.score),  # null: +inf, never ranked
        "lr_limit": floats(None if result is None else result.lr_limit),
        "initial_loss": floats(None if result is None else result.initial_loss),
        "stop_reason": pa.array(stop_reason, type=pa.string()),
        "error": pa.array(error, type=pa.string()),
        **params,
        **sharpness,
    }
    fields = {
        "kind": "gdlab.population",
        "version": 1,
        "members": count,
        **(info or {"objective": None, "problem": None, "device": None, "dtype": None}),
        "strategy": None if result is None else result.strategy,
        "chunk_size": None if result is None else result.chunk_size,
        "wall_time_s": wall,
        "wall_time_per_member_s": per_member,
        "steps_run": None if result is None else result.steps_run,
        "minimum": None if result is None else json_number(result.minimum),
        **extra,
    }
    return PopulationRecords(fields, pa.table(columns), shapes)


def population_document(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """population.json with the columns inline (`population_records`' arguments)."""
    return population_records(*args, **kwargs).document()


#: population.json's sharpness columns (sharpness.every > 0): the members' last measurement,
#: and the first one's lambda_max
SHARPNESS_FIELDS = ("step", "lambda_max", "lambda_min", "lr_limit", "ratio", "preconditioned")


def sharpness_columns(count: int, trained: Any, result: Any) -> dict[str, Any]:
    """`sharpness_<field>` columns of the final measurements, `sharpness_initial_lambda_max`."""
    import numpy as np

    rows = np.asarray(trained, dtype=np.int64)
    finals = result.sharpness_final
    initials = result.sharpness_initial or [None] * len(finals)
    columns = {}
    for k in SHARPNESS_FIELDS:
        values = [None if p is None else p.get(k) for p in finals]
        columns[f"sharpness_{k}"] = _value_column(_scatter(count, rows, values))
    values = [None if p is None else p["lambda_max"] for p in initials]
    columns["sharpness_initial_lambda_max"] = _value_column(_scatter(count, rows, values))
    return columns


def write_population(
    run_dir: Path, records: PopulationRecords | dict[str, Any], inline: bool | None = None
) -> None:
    """population.json, and members.parquet for more than INLINE_MEMBERS members (`inline`
    forces one format). A dict is population.json's document, written as it is."""
    run_dir = Path(run_dir)
    parquet = run_dir / MEMBERS_PARQUET
    if isinstance(records, dict):
        write_json_atomic(run_dir / POPULATION_JSON, records, compact=True)
        parquet.unlink(missing_ok=True)
        return
    if inline is None:
        inline = len(records) <= INLINE_MEMBERS
    if inline:
        write_json_atomic(run_dir / POPULATION_JSON, records.document(), compact=True)
        parquet.unlink(missing_ok=True)  # a stale one from an earlier write
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = records.table.schema
    texts = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_list(f.type)]

    def write(handle: Any) -> None:  # dictionaries for the text (repeats), not the numbers
        pq.write_table(records.table, handle, compression="zstd", use_dictionary=texts)

    write_atomic(parquet, write)
    info = {k: v for k, v in records.info.items() if k not in (MEMBERS_FILE_KEY, "param_shapes")}
    info.update(
        version=2,
        **{MEMBERS_FILE_KEY: MEMBERS_PARQUET, "param_shapes": records.param_shapes},
    )
    write_json_atomic(run_dir / POPULATION_JSON, info)  # after its columns: never dangling


def string_lists(rows: Any) -> Any:
    """Lists of strings (one per member) as a pyarrow ListArray, built from one flat array."""
    import itertools

    import numpy as np
    import pyarrow as pa

    if isinstance(rows, pa.ChunkedArray):
        return rows.combine_chunks()
    if isinstance(rows, pa.Array):
        return rows
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = list(itertools.chain.from_iterable(rows))
    try:
        values = pa.array(flat, type=pa.string())
    except (pa.ArrowException, TypeError):  # not all strings (a hand-written file)
        values = pa.array([str(v) for v in flat], type=pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _floats(values: Any) -> Any:
    """Numbers (a tensor, array or list; None for unknown) as a float64 numpy array, NaN for
    None."""
    import numpy as np

    if hasattr(values, "detach"):  # a torch tensor
        return values.detach().double().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):  # a value that is no number: unknown, as JSON's reader
        return np.asarray([_float(v) for v in values], dtype=np.float64)


def _float_column(values: Any) -> Any:
    """A float64 pyarrow array, null where not finite (JSON's null)."""
    import numpy as np
    import pyarrow as pa

    finite = np.isfinite(values)
    return pa.array(values, type=pa.float64(), mask=None if finite.all() else ~finite)


def _matrix_column(values: Any, shape: tuple[int, ...], ran: Any) -> Any:
    """A parameter's numbers per member ([count, numel], NaN for a member that did not train):
    a float64 column for a single number, else a fixed-size list column."""
    import numpy as np
    import pyarrow as pa

    if shape == ():
        return _float_column(values[:, 0])
    flat = values.reshape(-1)
    finite = np.isfinite(flat)
    numbers = pa.array(flat, type=pa.float64(), mask=None if finite.all() else ~finite)
    mask = None if ran.all() else pa.array(~ran)
    return pa.FixedSizeListArray.from_arrays(numbers, values.shape[1], mask=mask)


def _param_column(values: list[Any], shape: tuple[int, ...]) -> Any:
    """A parameter column from population.json's list (numbers or nested lists, None)."""
    import numpy as np

    numel = math.prod(shape)
    matrix = np.full((len(values), numel), np.nan)
    ran = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values):
        if value is None:
            continue
        flat = _flatten(value)
        if len(flat) == numel:
            matrix[i] = [math.nan if x is None else x for x in flat]
            ran[i] = True
    return _matrix_column(matrix, shape, ran)


def _scatter(count: int, rows: Any, values: list[Any]) -> list[Any]:
    """`values` of the trained members at their rows of `count`, None elsewhere."""
    out: list[Any] = [None] * count
    for j, i in enumerate(rows.tolist()):
        out[i] = values[j]
    return out


def _value_column(values: list[Any], kind: str | None = None) -> Any:
    """A column from a list of plain values (None for null): integers, numbers (null where
    not finite), flags or text, by what the values are (or `kind`)."""
    import numpy as np
    import pyarrow as pa

    if kind is None:
        kinds = {type(v) for v in values if v is not None}
        if not kinds:
            return pa.nulls(len(values))
        if kinds <= {bool}:
            kind = "bool"
        elif kinds <= {int}:
            kind = "int"
        elif all(issubclass(k, int | float) and k is not bool for k in kinds):
            kind = "float"
        elif all(issubclass(k, str) for k in kinds):
            kind = "str"
    try:
        if kind == "int":
            return pa.array(values, type=pa.int64())
        if kind == "float":
            return _float_column(np.asarray(values, dtype=np.float64))
        if kind == "bool":
            return pa.array(values, type=pa.bool_())
        if kind == "str":
            return pa.array(values, type=pa.string())
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    if kind == "int":  # numbers that are not all integers: numbers
        return _float_column(_floats(values))
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _shape_of(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _flatten(value: Any) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    return [x for item in value for x in _flatten(item)]


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _nest(values: list[Any], shape: tuple[int, ...]) -> list[Any]:
    if len(shape) == 1:
        return values
    size = len(values) // shape[0]
    return [_nest(values[i * size : (i + 1) * size], shape[1:]) for i in range(shape[0])]


# ------------------------------------------------------------------------------ readers


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """A run's metrics.json; None when there is none (the run was interrupted, or is still
    running); a `failed` record naming the problem when the file can't be read."""
    try:
        return json.loads((Path(run_dir) / METRICS_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return {"status": str(Status.FAILED), "error": f"unreadable {METRICS_JSON}: {err}"}


#: the per-member columns every population.json has
POPULATION_COLUMNS = (
    "overrides",
    "status",
    "steps",
    "final_loss",
    "lr",
    "distance_to_minimizer",
    "error",
    "stop_reason",
)


def read_population_records(job_dir: Path) -> PopulationRecords | None:
    """A population job's records (population.json, and members.parquet where it names one);
    None when `job_dir` has none that is readable (a plain job, or a population job that never
    got to write it)."""
    job_dir = Path(job_dir)
    try:
        data = json.loads((job_dir / POPULATION_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    import pyarrow as pa

    try:
        if MEMBERS_FILE_KEY in data:
            import pyarrow.parquet as pq

            table = pq.read_table(job_dir / Path(str(data[MEMBERS_FILE_KEY])).name)
            shapes = {str(k): list(v) for k, v in (data.get("param_shapes") or {}).items()}
            records = PopulationRecords(data, table, shapes)
        else:
            if not all(isinstance(data[k], list) for k in POPULATION_COLUMNS):
                return None
            records = PopulationRecords.from_document(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, pa.ArrowException):
        return None
    if not all(records.has(k) for k in POPULATION_COLUMNS):
        return None
    return records


def read_population(job_dir: Path) -> Mapping[str, Any] | None:
    """A population job's population.json as a mapping of its fields and columns (lists, None
    for null), also where the columns are in members.parquet (then converted when first
    read); None when `job_dir` has none that is readable (a plain job, or a population job
    that never got to write it). `read_population_records` gives the columns as arrays."""
    job_dir = Path(job_dir)
    try:
        data = json.loads((job_dir / POPULATION_JSON).read_text(encoding="utf-8"))
        if MEMBERS_FILE_KEY in data:
            records = read_population_records(job_dir)
            return None if records is None else PopulationDocument(records)
        if not all(isinstance(data[k], list) for k in POPULATION_COLUMNS):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data
