"""TensorBoard for a population job: curves for three members, an HParams row per member.

- `Best/`, `Median/`, `Worst/`: the full scalar curves (`train/loss`, `train/grad_norm`,
  `train/lr`, `train_params/...`) of those three members, replayed through the plain trainer
  and gdlab's TensorBoard sink; their results equal the members' (checked), and no per-member
  history is kept in memory during the batched run. They are the first three runs listed:
  TensorBoard's run list sorts names by character code (capitals before lower case, so
  `Worst` before `members`), and they are written first (a run's start time is its first
  event's).
- `members/<n>/`: one small event file per member holding its HParams session (its
  hyperparameters, the `train_result/...` metrics a plain run writes, the session end), so the
  HParams dashboard shows one row per member, as it shows one per job of a plain multirun.
  TensorBoard keeps one session per run (tensorboard/plugins/hparams: a session is a run with a
  session-start summary; `group_name` would merge sessions into one averaged row), so each row
  needs a run of its own; these hold no curve, only the last Time Series group.
  `hparams_members` caps how many (the best, median and worst always among them).

TensorBoard selects every run on a first visit only when there are at most 500 (2.21,
webapp runs_types.ts MAX_NUM_RUNS_TO_ENABLE_BY_DEFAULT); above that the reader ticks the three
curves at the top of the run list.

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
#: the run directory of each replayed curve, by representative
CURVE_RUNS = {"best": "Best", "median": "Median", "worst": "Worst"}


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
    """The three curves, then the member sessions; returns {best/median/worst: member index}.

    `hparams[j]`, `member_index[j]` (the member's number in the job) and `member_settings[j]`
    (its batchable field -> value) describe the population's j-th trained member.
    """
    losses = result.final_loss.tolist()
    distances = None if result.distance_to_minimizer is None else result.distance_to_minimizer
    distance_list = None if distances is None else distances.tolist()
    picks = representatives(result)
    for which, j in picks.items():  # first: listed first by start time too
        replay_curve(run_dir / CURVE_RUNS[which], job_cfg, member_settings[j], result, j)
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
    return {which: member_index[j] for which, j in picks.items()}


def replay(job_cfg: Any, updates: dict[str, Any], make_sinks: Any) -> Any:
    """A member's run (`job_cfg` with `updates`, config key -> value) through the plain
    trainer, logged only by the sinks `make_sinks()` returns once the run is built (no console,
    no HParams: the member's row is its own session); returns the RunResult. The sweep's race
    (gdlab.sweeps.race) replays the members it draws through this too."""
    from omegaconf import OmegaConf

    from gdlab.experiment import build

    cfg = copy.deepcopy(job_cfg)
    for key, value in updates.items():
        OmegaConf.update(cfg, key, value)
    experiment = build(cfg)
    experiment.info.hparams = {}  # the HParams row is the member's session, not this run
    sinks = list(make_sinks())
    experiment.trainer.sinks = sinks
    try:
        for sink in sinks:
            sink.start(experiment.info)
        return experiment.trainer.run()
    finally:
        for sink in sinks:
            sink.close()


def replay_curve(
    log_dir: Path, job_cfg: Any, settings: dict[str, Any], result: Any, j: int
) -> None:
    """The member's run through the plain trainer, logged by gdlab's TensorBoard sink."""
    from gdlab.sinks.tensorboard import TensorBoardSink

    def sinks() -> list[Any]:
        log_dir.mkdir(parents=True, exist_ok=True)
        return [TensorBoardSink(log_dir)]

    updates = {MEMBER_KEYS[name]: value for name, value in settings.items()}
    replayed = replay(job_cfg, updates, sinks)
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
