"""TensorBoard for a population job: an HParams row per member, curves for three of them.

- `members/<i>/`: one small event file per member holding its HParams session (its
  hyperparameters, the `final/...` metrics a plain run writes, the session end), so the
  HParams dashboard shows one row per member, as it shows one per job of a plain multirun.
  `hparams_members` caps how many (the best, median and worst always among them).
- `curves/best`, `curves/median`, `curves/worst`: the full scalar curves (`train/loss`,
  `train/grad_norm`, `train/lr`, `params/...`) of those three members, replayed through the
  plain trainer and gdlab's TensorBoard sink; their results equal the members' (checked), and
  no per-member history is kept in memory during the batched run.

Events go through gdlab's `EventFile`, synchronously (thousands of tiny files: no writer
threads, and no `torch.utils.tensorboard` import).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

from gdlab.rules import rank_key
from gdlab.settings import MEMBER_KEYS
from gdlab.sinks.event_file import EventFile
from gdlab.sinks.hparams import final_metrics, session_end_summary, session_start_summary

log = logging.getLogger("gdlab")
MEMBERS_DIR = "members"
CURVES_DIR = "curves"


def write_events(log_dir: Path, events: Sequence[Event]) -> Path:
    """A complete event file (file version first) in `log_dir`, written in one go."""
    log_dir.mkdir(parents=True, exist_ok=True)
    writer = EventFile(log_dir, flush_secs=math.inf)
    for event in events:
        writer.add_event(event)
    writer.close()
    return writer.path


def member_session(
    log_dir: Path,
    hparams: dict[str, Any],
    status: str,
    steps: int,
    loss: float,
    distance: float | None,
) -> Path:
    """One member's HParams row: its hyperparameters and final metrics, nothing else."""
    now = time.time()
    metrics = final_metrics(status, steps, loss, distance)
    values = [Summary.Value(tag=tag, simple_value=v) for tag, v in metrics.items()]
    events = [
        Event(wall_time=now, step=0, summary=session_start_summary(hparams)),
        Event(wall_time=now, step=steps, summary=Summary(value=values)),
    ]
    if status != "interrupted":
        events.append(Event(wall_time=now, step=steps, summary=session_end_summary()))
    return write_events(log_dir, events)


def representatives(result: Any) -> dict[str, int]:
    """Best, median and worst member (positions in the result), ranked as the sweep summary
    ranks (`gdlab.rules.rank_key` on each member's score)."""
    scores = result.score or [math.inf] * len(result.status)

    def key(j: int) -> tuple[Any, ...]:
        return rank_key(result.status[j], scores[j], result.steps[j], j)

    order = sorted(range(len(result.status)), key=key)
    if not order:
        return {}
    return {"best": order[0], "median": order[len(order) // 2], "worst": order[-1]}


def spread(count: int, limit: int | None, keep: Sequence[int]) -> list[int]:
    """At most `limit` of `count` positions, evenly spaced, always including `keep`."""
    if limit is None or limit >= count:
        return list(range(count))
    chosen = set(keep)
    room = max(0, limit - len(chosen))
    if room:
        step = count / room
        chosen.update(min(count - 1, int(i * step)) for i in range(room))
    return sorted(chosen)[: max(limit, len(keep))]


def write_tensorboard(
    run_dir: Path,
    job_cfg: Any,
    hparams: list[dict[str, Any]],
    result: Any,
    member_index: list[int],
    member_settings: list[dict[str, Any]],
    limit: int | None,
) -> dict[str, int]:
    """Member sessions and the three curves; returns {best/median/worst: member index}.

    `hparams[j]`, `member_index[j]` (the member's number in the job) and `member_settings[j]`
    (its batchable field -> value) describe the population's j-th trained member.
    """
    losses = result.final_loss.tolist()
    distances = None if result.distance_to_minimizer is None else result.distance_to_minimizer
    distance_list = None if distances is None else distances.tolist()
    picks = representatives(result)
    width = max(5, len(str(max(member_index, default=0))))
    for j in spread(len(losses), limit, list(picks.values())):
        member_session(
            run_dir / MEMBERS_DIR / f"{member_index[j]:0{width}d}",
            hparams[j],
            result.status[j],
            result.steps[j],
            losses[j],
            None if distance_list is None else distance_list[j],
        )
    for which, j in picks.items():
        replay_curve(run_dir / CURVES_DIR / which, job_cfg, member_settings[j], result, j)
    return {which: member_index[j] for which, j in picks.items()}


def replay_curve(
    log_dir: Path, job_cfg: Any, settings: dict[str, Any], result: Any, j: int
) -> None:
    """The member's run through the plain trainer, logged by gdlab's TensorBoard sink."""
    from omegaconf import OmegaConf

    from gdlab.experiment import build
    from gdlab.sinks.tensorboard import TensorBoardSink

    cfg = copy.deepcopy(job_cfg)
    for name, value in settings.items():
        OmegaConf.update(cfg, MEMBER_KEYS[name], value)
    experiment = build(cfg)
    experiment.info.hparams = {}  # the HParams row is the member's session, not this run
    log_dir.mkdir(parents=True, exist_ok=True)
    sink = TensorBoardSink(log_dir)
    experiment.trainer.sinks = [sink]
    try:
        sink.start(experiment.info)
        replayed = experiment.trainer.run()
    finally:
        sink.close()
    expected = float(result.final_loss[j])
    same = replayed.status == result.status[j] and replayed.steps == result.steps[j]
    if same and math.isfinite(expected):
        same = math.isclose(replayed.final_loss, expected, rel_tol=1e-4, abs_tol=1e-12)
    if not same:
        log.warning(
            "gdlab: the replayed curve in %s ended %s after %d steps (loss %.6g); the member "
            "ended %s after %d steps (loss %.6g)",
            log_dir,
            replayed.status,
            replayed.steps,
            replayed.final_loss,
            result.status[j],
            result.steps[j],
            expected,
        )
