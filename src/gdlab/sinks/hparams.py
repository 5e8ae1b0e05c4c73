"""TensorBoard HParams session summaries, built from TensorBoard's own protos.

The same protos `torch.utils.tensorboard.summary.hparams()` builds (tested), without
importing `torch.utils.tensorboard`, which costs tens of milliseconds at every run's start.

No experiment summary is written: with none, TensorBoard builds the HParams table from all
sessions under its logdir (every swept key, value domains, which columns differ, and every
scalar tag, `train_result/...` included, as a metric). One job's experiment summary would
instead stand for all of them.

How TensorBoard finds a session's metrics (tensorboard/plugins/hparams/backend_context.py,
`_compute_metric_names`; list_session_groups.py; metrics.py): a session is a run holding a
session-start summary, at most one per run; each scalar tag of that run, or of a run below it,
is a metric named (tag, group = the sub-run's path, "" for the run itself), and its value is the
tag's last point in run `<session>/<group>`. A sub-run would not keep the final metrics out of
Time Series, which shows every scalar of every selected run, so they stay in the session's own
run under a tag group (`RESULT`) that sorts after the curves (see gdlab.sinks.tensorboard).
"""

from __future__ import annotations

import time
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

# TensorBoard's hparams plugin constants (tensorboard.plugins.hparams.metadata), written out:
# importing that module pulls in tensorflow_stub, fsspec and absl (~30 ms of every run's
# start-up); tests/test_hparams.py checks they still equal TensorBoard's
PLUGIN_NAME = "hparams"
PLUGIN_DATA_VERSION = 0
SESSION_START_INFO_TAG = "_hparams_/session_start_info"
SESSION_END_INFO_TAG = "_hparams_/session_end_info"

#: the tag group of a run's final metrics: `train_result/loss`, `/steps`, `/diverged`,
#: `/distance_to_minimizer`; it sorts after `train`, `train_params` and `train_plots`, so Time
#: Series lists it last, closed
RESULT = "train_result"


def hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    """Wrap HParams plugin data in a summary under the plugin's `tag`."""
    data.version = PLUGIN_DATA_VERSION
    meta = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=data.SerializeToString()
        )
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def session_start_summary(hparams: dict[str, Any]) -> Summary:
    """A run's hyperparameters: numbers (booleans too, as torch writes them) and strings."""
    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in hparams.items():
        if value is None:
            continue
        if isinstance(value, int | float):
            info.hparams[key].number_value = float(value)
        else:
            info.hparams[key].string_value = str(value)
    return hparams_summary(
        SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=info)
    )


def session_end_summary(status: str = "STATUS_SUCCESS") -> Summary:
    """The session's end with `status` (STATUS_SUCCESS, STATUS_FAILURE)."""
    info = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.Status.Value(status), end_time_secs=time.time()
    )
    return hparams_summary(
        SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info)
    )


def final_metrics(status: str, steps: int, loss: float, distance: float | None) -> dict[str, float]:
    """The `train_result/...` scalars of a run's HParams row (a numeric flag for divergence)."""
    final = {
        f"{RESULT}/loss": loss,
        f"{RESULT}/steps": float(steps),
        f"{RESULT}/diverged": 1.0 if status == "diverged" else 0.0,
    }
    if distance is not None:
        final[f"{RESULT}/distance_to_minimizer"] = distance
    return final
