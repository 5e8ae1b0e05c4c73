"""metrics.json: the run's result in one small file that scripts and sweep summaries read."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gdlab.atomic import write_atomic
from gdlab.events import LogRecord, RunInfo, RunResult


def json_number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null (the status says why)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def write_json_atomic(path: Path, data: Any) -> None:
    """metrics.json and friends: pretty JSON, strict (no NaN), written atomically."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def result_to_metrics(info: RunInfo, result: RunResult) -> dict[str, Any]:
    """The metrics.json document for a finished run."""

    def clean(values: Any) -> Any:
        if isinstance(values, list):
            return [clean(v) for v in values]
        return json_number(values)

    return {
        "status": result.status,
        "steps": result.steps,
        "final_loss": json_number(result.final_loss),
        "params": {k: clean(v.double().tolist()) for k, v in result.params.items()},
        "grad_norm": json_number(result.grad_norm),
        "distance_to_minimizer": json_number(result.distance_to_minimizer),
        "minimum": json_number(result.minimum),
        "stop_reason": result.stop_reason,
        "wall_time_s": result.wall_time_s,
        "steps_per_s": json_number(result.steps_per_s),
        "objective": info.objective,
        "device": info.device,
        "dtype": info.dtype,
    }


class MetricsSink:
    """Writes `metrics.json` into the run directory when the run ends."""

    filename = "metrics.json"

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / self.filename
        self.info: RunInfo | None = None

    def start(self, info: RunInfo) -> None:
        self.info = info

    def log(self, record: LogRecord) -> None:
        pass

    def finish(self, result: RunResult) -> None:
        assert self.info is not None, "start() must come before finish()"
        write_json_atomic(self.path, result_to_metrics(self.info, result))

    def close(self) -> None:
        pass
