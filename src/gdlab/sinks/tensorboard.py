"""TensorBoard event files written straight into the run directory.

One event per log point carries every scalar of that point (loss, gradient norm, lr, small
parameters), built from TensorBoard's own protos and queued to its background file writer.
That costs a fraction of one `SummaryWriter.add_scalar` per tag, and avoids importing
`torch.utils.tensorboard` at start-up.
"""

from __future__ import annotations

import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from torch import Tensor

from gdlab.events import LogRecord, RunInfo, RunResult

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
    """Writes `train/loss`, `train/grad_norm`, `train/lr`, `params/...` and the config."""

    def __init__(self, run_dir: Path, flush_secs: int = 30) -> None:
        self.run_dir = Path(run_dir)
        self.writer = EventFileWriter(str(self.run_dir), max_queue_size=1000, flush_secs=flush_secs)

    def add_summary(self, summary: Summary, step: int) -> None:
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def start(self, info: RunInfo) -> None:
        if info.start_step > 0:
            # A resumed run: TensorBoard hides what the interrupted session logged from this
            # step on, so the curve continues without duplicated points.
            self.writer.add_event(
                Event(
                    wall_time=time.time(),
                    step=info.start_step,
                    session_log=SessionLog(status=SessionLog.START),
                )
            )
            return
        if info.config_yaml:
            indented = "\n".join("    " + line for line in info.config_yaml.splitlines())
            self.add_summary(text_summary("config", indented), step=0)

    def log(self, record: LogRecord) -> None:
        values = [
            Summary.Value(tag="train/loss", simple_value=record.loss),
            Summary.Value(tag="train/grad_norm", simple_value=record.grad_norm),
            Summary.Value(tag="train/lr", simple_value=record.lr),
        ]
        for name, value in record.params.items():
            values.extend(
                Summary.Value(tag=tag, simple_value=v) for tag, v in param_scalar_tags(name, value)
            )
        self.add_summary(Summary(value=values), step=record.step)

    def finish(self, result: RunResult) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
