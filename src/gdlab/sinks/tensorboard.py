"""TensorBoard event files written straight into the run directory.

One event per log point carries every scalar of that point (loss, gradient norm, lr, small
parameters), built from TensorBoard's own protos and appended to an `EventFile` (batched
writes, C CRC-32C: see event_file.py). That costs a fraction of one `SummaryWriter.add_scalar`
per tag, and avoids importing `torch.utils.tensorboard` at start-up.

The tag names decide what TensorBoard shows first. Time Series (TensorBoard 2.21, webapp
metrics/utils.ts `groupCardIdWithMetdata`, `compareTagNames`; metrics reducers) groups every
tag of every run, images included, by the text before its first `/`, orders the groups by
their tags' names (`/` and digits before any other character), and on a first visit opens only
the first two groups. Hence:

    train/loss, train/grad_norm, train/lr    TRAIN   first, open: the curves
    train_params/<name>[/<i>]                PARAMS  second, open: the parameters' paths
    train_plots/<name> (images)              PLOTS   closed: one card per run and plot
    train_result/loss, steps, diverged, ...  RESULT  last, closed: the HParams row's metrics
                                                     (in gdlab.sinks.hparams)
    sharpness/lambda_max, lambda_min,        SHARPNESS  only with sharpness.every > 0, each at
      lr_limit, ratio (, preconditioned)                its own step; sorted first, so open:
                                                        what such a run is for

`train/loss` keeps its name (gdlab.sweeps.summary reads it back for killed jobs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from torch import Tensor

from gdlab.events import LogRecord, RunInfo, RunResult
from gdlab.sinks.event_file import EventFile, ScalarEvents
from gdlab.sinks.hparams import final_metrics, session_end_summary, session_start_summary

if TYPE_CHECKING:
    from gdlab.curvature import SharpnessPoint

TRAIN = "train"
PARAMS = "train_params"
PLOTS = "train_plots"
SHARPNESS = "sharpness"

TEXT_PLUGIN = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))


def param_scalar_tags(name: str, value: Tensor) -> list[tuple[str, float]]:
    """`train_params/<name>` for a single number, `train_params/<name>/<i>` for each entry of a
    vector."""
    flat = value.reshape(-1).tolist()
    if value.dim() == 0:
        return [(f"{PARAMS}/{name}", flat[0])]
    return [(f"{PARAMS}/{name}/{i}", v) for i, v in enumerate(flat)]


def image_tag(tag: str) -> str:
    """The plots sink's `plots/<name>` is filed as `train_plots/<name>`, after the curves;
    any other tag (a sweep's `race/...`) is kept."""
    group, _, name = tag.partition("/")
    return f"{PLOTS}/{name}" if group == "plots" and name else tag


def text_summary(tag: str, text: str) -> Summary:
    """A Markdown text summary, shown in TensorBoard's Text tab."""
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[text.encode("utf-8")],
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=TEXT_PLUGIN, tensor=tensor)])


class TensorBoardSink:
    """Writes `train/loss`, `train/grad_norm`, `train/lr`, `train_params/...`, the config, and
    the run's HParams session (its hyperparameters, then `train_result/...` metrics when it
    ends).

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
            (f"{TRAIN}/loss", record.loss),
            (f"{TRAIN}/grad_norm", record.grad_norm),
            (f"{TRAIN}/lr", record.lr),
        ]
        for name, value in record.params.items():
            scalars.extend(param_scalar_tags(name, value))
        self.writer.add_serialized(self.scalars.encode(record.step, time.time(), scalars))

    def log_sharpness(self, point: SharpnessPoint) -> None:
        """`sharpness/lambda_max`, `lambda_min`, `lr_limit`, `ratio` (and `preconditioned`
        for an adaptive rule) at the measurement's own step."""
        values = {
            "lambda_max": point.lambda_max,
            "lambda_min": point.lambda_min,
            "lr_limit": point.lr_limit,
            "ratio": point.ratio,
            "preconditioned": point.preconditioned,
        }
        scalars = [(f"{SHARPNESS}/{k}", v) for k, v in values.items() if v is not None]
        self.writer.add_serialized(self.scalars.encode(point.step, time.time(), scalars))

    def add_image(self, tag: str, png: bytes, step: int) -> None:
        """A PNG as a TensorBoard image (a run's plots as `train_plots/<name>`)."""
        from gdlab.sinks.plots import png_size

        width, height = png_size(png)
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        value = Summary.Value(tag=image_tag(tag), image=image)
        self.add_summary(Summary(value=[value]), step=step)

    def finish(self, result: RunResult) -> None:
        final = final_metrics(
            result.status, result.steps, result.final_loss, result.distance_to_minimizer
        )
        values = [Summary.Value(tag=tag, simple_value=v) for tag, v in final.items()]
        self.add_summary(Summary(value=values), step=result.steps)
        # an interrupted session continues when resumed; a run without hparams has none
        if self.session_open and result.status != "interrupted":
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
