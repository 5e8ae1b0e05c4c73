"""TensorBoard event files written straight into the run directory.

One event per log point carries every scalar of that point (loss, gradient norm, lr, small
parameters), built from TensorBoard's own protos and appended to an `EventFile` (batched
writes, C CRC-32C: see event_file.py). That costs a fraction of one `SummaryWriter.add_scalar`
per tag, and avoids importing `torch.utils.tensorboard` at start-up.
"""

from __future__ import annotations

import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from torch import Tensor

from gdlab.events import LogRecord, RunInfo, RunResult
from gdlab.sinks.event_file import EventFile, ScalarEvents
from gdlab.sinks.hparams import final_metrics, session_end_summary, session_start_summary

TEXT_PLUGIN = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))


def param_scalar_tags(name: str, value: Tensor) -> list[tuple[str, float]]:
    """`params/<name>` for a single number, `params/<name>/<i>` for each entry of a vector."""
    flat = value.reshape(-1).tolist()
    if value.dim() == 0:
        return [(f"params/{name}", flat[0])]
    return [(f"params/{name}/{i}", v) for i, v in enumerate(flat)]


def text_summary(tag: str, text: str) -> Summary:
    """A Markdown text summary, shown in TensorBoard's Text tab."""
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[text.encode("utf-8")],
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=TEXT_PLUGIN, tensor=tensor)])


class TensorBoardSink:
    """Writes `train/loss`, `train/grad_norm`, `train/lr`, `params/...`, the config, and the
    run's HParams session (its hyperparameters, then `final/...` metrics when it ends).

    The HParams summaries go into this same event file, so each run directory is exactly one
    session in the HParams dashboard, linked to its own scalars (SummaryWriter.add_hparams
    would write them into a new timestamped sub-run instead).
    """

    def __init__(self, run_dir: Path, flush_secs: float = 10.0) -> None:
        self.run_dir = Path(run_dir)
        self.writer = EventFile(self.run_dir, flush_secs=flush_secs)
        self.scalars = ScalarEvents()
        self.session_open = False

    def add_summary(self, summary: Summary, step: int) -> None:
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def start(self, info: RunInfo) -> None:
        if info.resumed:
            # TensorBoard hides what the interrupted session logged from this step on, so
            # the curve continues without duplicated points.
            self.writer.add_event(
                Event(
                    wall_time=time.time(),
                    step=info.start_step,
                    session_log=SessionLog(status=SessionLog.START),
                )
            )
            if info.start_step > 0:  # the step-0 config and hparams are still there
                self.session_open = bool(info.hparams)
                return
        if info.config_yaml:
            indented = "\n".join("    " + line for line in info.config_yaml.splitlines())
            self.add_summary(text_summary("config", indented), step=0)
        if info.hparams:
            self.add_summary(session_start_summary(info.hparams), step=0)
            self.session_open = True

    def log(self, record: LogRecord) -> None:
        scalars = [
            ("train/loss", record.loss),
            ("train/grad_norm", record.grad_norm),
            ("train/lr", record.lr),
        ]
        for name, value in record.params.items():
            scalars.extend(param_scalar_tags(name, value))
        self.writer.add_serialized(self.scalars.encode(record.step, time.time(), scalars))

    def add_image(self, tag: str, png: bytes, step: int) -> None:
        """A PNG (from the plots sink) as a TensorBoard image."""
        from gdlab.sinks.plots import png_size

        width, height = png_size(png)
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step=step)

    def finish(self, result: RunResult) -> None:
        final = final_metrics(
            result.status, result.steps, result.final_loss, result.distance_to_minimizer
        )
        values = [Summary.Value(tag=tag, simple_value=v) for tag, v in final.items()]
        self.add_summary(Summary(value=values), step=result.steps)
        if result.status != "interrupted":  # an interrupted session continues when resumed
            self.add_summary(session_end_summary("STATUS_SUCCESS"), step=result.steps)
        self.session_open = False
        self.writer.flush()

    def flush(self) -> None:
        """Write buffered events now (the trainer calls it with every checkpoint)."""
        self.writer.flush()

    def close(self) -> None:
        if self.session_open:  # the run raised before it finished
            self.add_summary(session_end_summary("STATUS_FAILURE"), step=0)
            self.session_open = False
        self.writer.close()
