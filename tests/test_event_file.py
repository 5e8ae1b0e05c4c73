"""The hand-built scalar events are exactly TensorBoard's protobuf bytes, and readable by it."""

from __future__ import annotations

import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_crc

from gdlab.sinks.event_file import EventFile, ScalarEvents, masked_crc32c

CASES = [
    (0, [("train/loss", 14.0)]),
    (127, [("train/loss", 1.5), ("train/grad_norm", 6.0), ("train/lr", 0.1)]),
    (128, [("params/x", -2.75), ("params/v/0", 1e-30), ("params/v/1", 3e38)]),
    (2**40 + 3, [("a/very/long/tag/" + "x" * 200, 0.0), ("nan", math.nan)]),
    (5, [("inf", math.inf), ("too-big", 1e300), ("too-small", -1e300), ("ünïcode", 1.0)]),
]


@pytest.mark.parametrize(("step", "scalars"), CASES)
def test_encoding_equals_protobuf(step, scalars) -> None:
    wall_time = 1795681372.123456
    ours = ScalarEvents().encode(step, wall_time, scalars)
    values = [Summary.Value(tag=t, simple_value=v) for t, v in scalars]  # 1e300 -> inf
    reference = Event(wall_time=wall_time, step=step, summary=Summary(value=values))
    assert ours == reference.SerializeToString()


def test_masked_crc_equals_tensorboards() -> None:
    for data in (b"", b"a", bytes(range(256)) * 3):
        assert masked_crc32c(data) == reference_crc(data)


def test_file_reads_back_with_tensorboard(tmp_path) -> None:
    writer = EventFile(tmp_path, flush_secs=1000)
    encoder = ScalarEvents()
    for step in range(300):
        writer.add_serialized(encoder.encode(step, 1.0 + step, [("train/loss", step / 2)]))
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(300))
    assert [e.value for e in loss] == [s / 2 for s in range(300)]


def test_hparams_session_start_equals_torchs() -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams as torch_hparams

    from gdlab.sinks.hparams import session_start_summary

    hparams = {"objective": "quadratic", "optimizer.lr": 0.1, "trainer.steps": 50, "flag": True}
    parsed = []
    for summary in (session_start_summary(hparams), torch_hparams(hparams, {})[1]):
        (value,) = summary.value
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        data.session_start_info.start_time_secs = 0
        parsed.append((value.tag, value.metadata.plugin_data.plugin_name, data))
    assert parsed[0] == parsed[1]
