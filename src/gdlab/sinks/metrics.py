"""metrics.json: the run's result in one small file that scripts and sweep summaries read."""

from __future__ import annotations

from pathlib import Path

from gdlab.events import LogRecord, RunInfo, RunResult
from gdlab.results import METRICS_JSON, metrics_document, write_metrics


class MetricsSink:
    """Writes `metrics.json` (gdlab.results) into the run directory when the run ends."""

    filename = METRICS_JSON

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.filename
        self.info: RunInfo | None = None

    def start(self, info: RunInfo) -> None:
        self.info = info

    def log(self, record: LogRecord) -> None:
        pass

    def finish(self, result: RunResult) -> None:
        assert self.info is not None, "start() must come before finish()"
        write_metrics(self.run_dir, metrics_document(self.info, result))

    def close(self) -> None:
        pass
