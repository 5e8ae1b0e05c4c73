"""Result files, one writer and one reader each: metrics.json, population.json, failures.

- `metrics.json`: a run's result (the metrics sink writes it when the run ends);
- a failure record: the metrics.json of a job that raised (status `failed` and the error);
- `population.json`: a population job's members, as columns in metrics.json's terms.

Everything that reads results back (the sweep summary, `gdlab-report`) goes through
`read_metrics` and `read_population`. JSON has no NaN or infinity: those become null, and the
status says why. Files are written atomically, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
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


def population_document(
    count: int,
    overrides: list[list[str]],
    lrs: Sequence[Any],
    result: Any,
    trained: list[int],
    problems: dict[int, str],
    info: dict[str, Any] | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """population.json: per-member columns in metrics.json's terms.

    `result` (a PopulationResult, or None when no member trained) holds the members listed
    in `trained`, in that order; `problems` says why the others were refused.
    """
    status = [str(Status.FAILED)] * count
    steps: list[int | None] = [None] * count
    final_loss: list[float | None] = [None] * count
    grad_norm: list[float | None] = [None] * count
    distance: list[float | None] = [None] * count
    excess: list[float | None] = [None] * count
    score: list[float | None] = [None] * count
    limit: list[float | None] = [None] * count
    initial: list[float | None] = [None] * count
    sharpness: dict[str, list[Any]] = {}
    stop_reason: list[str | None] = [None] * count
    error: list[str | None] = [problems.get(i) for i in range(count)]
    params: dict[str, list[Any]] = {}
    wall = per_member = None
    if result is not None:
        wall = result.wall_time_s
        per_member = wall / max(1, count)
        losses = result.final_loss.tolist()
        norms = result.grad_norm.tolist()
        dist = result.distance_to_minimizer
        dist_list = None if dist is None else dist.tolist()
        starts = None if result.initial_loss is None else result.initial_loss.tolist()
        small = {
            k: v.double().reshape(v.shape[0], -1)
            for k, v in result.params.items()
            if v[0].numel() <= SMALL_PARAM_NUMEL
        }
        for k, v in small.items():
            params[k] = [None] * count
            shape = tuple(result.params[k].shape[1:])
            rows = v.tolist()
            for j, i in enumerate(trained):
                values = [json_number(x) for x in rows[j]]
                params[k][i] = values[0] if shape == () else _nest(values, shape)
        for j, i in enumerate(trained):
            status[i] = str(result.status[j])
            steps[i] = result.steps[j]
            final_loss[i] = json_number(losses[j])
            grad_norm[i] = json_number(norms[j])
            distance[i] = None if dist_list is None else json_number(dist_list[j])
            excess[i] = json_number(result.excess_loss[j])
            score[i] = json_number(result.score[j])  # null: +inf, never ranked
            limit[i] = json_number(result.lr_limit[j])
            initial[i] = None if starts is None else json_number(starts[j])
            stop_reason[i] = result.stop_reason[j]
        if any(p is not None for p in result.sharpness_final):
            sharpness = sharpness_columns(count, trained, result)
    return {
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
        "overrides": overrides,
        "lr": [json_number(_float(v)) for v in lrs],
        "status": status,
        "steps": steps,
        "final_loss": final_loss,
        "grad_norm": grad_norm,
        "distance_to_minimizer": distance,
        "excess_loss": excess,
        "score": score,
        "lr_limit": limit,
        "initial_loss": initial,
        "stop_reason": stop_reason,
        "error": error,
        "params": params,
        **sharpness,
    }


#: population.json's sharpness columns (sharpness.every > 0): the members' last measurement,
#: and the first one's lambda_max
SHARPNESS_FIELDS = ("step", "lambda_max", "lambda_min", "lr_limit", "ratio", "preconditioned")


def sharpness_columns(count: int, trained: list[int], result: Any) -> dict[str, list[Any]]:
    """`sharpness_<field>` columns of the final measurements, `sharpness_initial_lambda_max`."""
    columns: dict[str, list[Any]] = {f"sharpness_{k}": [None] * count for k in SHARPNESS_FIELDS}
    columns["sharpness_initial_lambda_max"] = [None] * count
    for j, i in enumerate(trained):
        final, initial = result.sharpness_final[j], result.sharpness_initial[j]
        if final is not None:
            for k in SHARPNESS_FIELDS:
                value = final.get(k)
                columns[f"sharpness_{k}"][i] = (
                    json_number(value) if isinstance(value, float) else value
                )
        if initial is not None:
            columns["sharpness_initial_lambda_max"][i] = json_number(initial["lambda_max"])
    return columns


def write_population(run_dir: Path, document: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / POPULATION_JSON, document, compact=True)


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


def read_population(job_dir: Path) -> dict[str, Any] | None:
    """A population job's population.json; None when `job_dir` has none that is readable
    (a plain job, or a population job that never got to write it)."""
    try:
        data = json.loads((Path(job_dir) / POPULATION_JSON).read_text(encoding="utf-8"))
        if not all(isinstance(data[k], list) for k in POPULATION_COLUMNS):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data
