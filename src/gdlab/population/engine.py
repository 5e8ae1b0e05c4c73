"""The population engine: K members trained as one batched program, by the rule book.

Parameters carry a leading member dimension K; `BatchedLoss` gives every member's loss and
gradient at once, and each step applies the rule book's own functions with per-member
hyperparameters: the update (the rule's function in `gdlab.optim`), the schedule
(`gdlab.schedules.lr_at`), the mini-batch order (`gdlab.batches.BatchSampler`) and, at the plain
trainer's log points, the stop rules (`gdlab.rules.stop_code`). A stopped member is frozen with
its step and status and leaves the working set; the job ends when every member has stopped or
the step budget is spent. Each member's result equals the plain run with the same settings
(tests/test_population.py).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gdlab.batches import BatchSampler, data_shape, uses_mini_batches
from gdlab.curvature import Sharpness, SharpnessSettings, constants_for
from gdlab.errors import GdlabError
from gdlab.events import RunResult
from gdlab.objectives.base import Objective, Params
from gdlab.optim import RULES
from gdlab.population.batching import BatchedLoss, auto_chunk_size, rows_of
from gdlab.population.compiled import Step, compile_choice, wants_compile
from gdlab.population.members import Members, member_base
from gdlab.rules import (
    GO_ON,
    STOP_STATUS,
    TREND_POINTS,
    Status,
    clamp_excess,
    curvature,
    distance_to_minimizer,
    end_code,
    end_reason,
    limit_at,
    precision,
    score,
    stop_code,
    stop_reason,
)
from gdlab.schedules import ScheduleSpec, lr_at
from gdlab.trainer import StopRequest, TrainerSettings


@dataclass
class PopulationResult:
    """How every member ended, as columns (row i is member i); `member(i)` gives a RunResult."""

    status: list[str]
    steps: list[int]
    final_loss: Tensor  # float64 [K]
    grad_norm: Tensor  # float64 [K]
    params: dict[str, Tensor]  # CPU, [K, ...]
    stop_reason: list[str | None]
    distance_to_minimizer: Tensor | None  # float64 [K], None when the minimiser is unknown
    minimum: float | None
    wall_time_s: float
    strategy: str
    chunk_size: int
    steps_run: int  # the step loop's last step: where the job as a whole ended
    rejected: dict[str, str] = field(default_factory=dict)
    excess_loss: list[float | None] = field(default_factory=list)  # float64 f - f*
    score: list[float] = field(default_factory=list)  # gdlab.rules.score, lower is better
    lr_limit: list[float | None] = field(default_factory=list)
    initial_loss: Tensor | None = None  # float64 [K]: the full objective at the start
    #: sharpness.every > 0: each member's first and last measurement (None: not measured)
    sharpness_initial: list[dict[str, Any] | None] = field(default_factory=list)
    sharpness_final: list[dict[str, Any] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.status)

    def member(self, i: int) -> RunResult:
        """Member i's result in a plain run's shape; wall time is the job's share per member."""
        distance = self.distance_to_minimizer
        return RunResult(
            status=self.status[i],
            steps=self.steps[i],
            final_loss=float(self.final_loss[i]),
            grad_norm=float(self.grad_norm[i]),
            params={k: v[i].clone() for k, v in self.params.items()},
            wall_time_s=self.wall_time_s / len(self),
            stop_reason=self.stop_reason[i],
            distance_to_minimizer=None if distance is None else float(distance[i]),
            minimum=self.minimum,
            excess_loss=self.excess_loss[i] if self.excess_loss else None,
            score=self.score[i] if self.score else math.inf,
            lr_limit=self.lr_limit[i] if self.lr_limit else None,
            initial_loss=None if self.initial_loss is None else float(self.initial_loss[i]),
            sharpness=self.member_sharpness(i),
        )

    def member_sharpness(self, i: int) -> dict[str, Any] | None:
        """Member i's sharpness in metrics.json's shape (its first and last measurement)."""
        if not self.sharpness_final or self.sharpness_final[i] is None:
            return None
        initial, final = (
            self.sharpness_initial[i] or self.sharpness_final[i],
            self.sharpness_final[i],
        )
        history = [initial] if initial is final else [initial, final]
        return {
            "every": None,
            "initial": initial,
            "final": final,
            "history": history,
            "seconds": 0.0,
        }

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.status:
            out[s] = out.get(s, 0) + 1
        return out


class PopulationTrainer:
    """Trains every member of `members` on one objective; see the module docstring.

    `shared` holds the other settings' values (e.g. the schedule's), against which each
    member's values are checked as its plain run would check them.
    """

    def __init__(
        self,
        objective: Objective,
        members: Members,
        settings: TrainerSettings,
        schedule: ScheduleSpec,
        device: torch.device,
        dtype: torch.dtype,
        strategy: str = "auto",
        chunk_size: int | None = None,
        interrupt: StopRequest | None = None,
        shared: Mapping[str, Any] | None = None,
        sharpness: SharpnessSettings | None = None,
        name: str = "",
        compile: str | bool = "auto",
    ) -> None:
        if len(members) == 0:
            raise GdlabError("a population needs at least one member")
        schedule_values = {
            "optimizer.schedule.name": schedule.name,
            "optimizer.schedule.step_size": schedule.step_size,
            "optimizer.schedule.gamma": schedule.gamma,
            "optimizer.schedule.min_lr": schedule.min_lr,
        }
        self.shared = {**schedule_values, **(shared or {})}
        members.validate(self.shared)
        self.objective = objective
        self.members = members
        self.settings = settings
        self.schedule = schedule
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size or auto_chunk_size(objective, device)
        self.interrupt = interrupt
        self.batched = BatchedLoss(objective.loss, strategy, self.chunk_size)
        self.mini_batch = uses_mini_batches(objective)
        #: L, the largest Hessian eigenvalue where it is constant (SGD's members' lr limit)
        self.curvature = curvature(objective, self.mini_batch) if members.rule == "sgd" else None
        self.eps = precision(dtype)
        #: hydra.sweeper.compile: auto, true or false (gdlab.population.compiled)
        self.compile = compile_choice(compile)
        self.compiled, self.compile_note = False, ""
        self.program: Step | None = None  # the step run() builds (gdlab.population.compiled)
        #: the members' sharpness measurements (sharpness.every > 0), judged by their rule
        self.sharpness: Sharpness | None = None
        if sharpness is not None and sharpness.every > 0:
            self.sharpness = Sharpness(sharpness, members.rule, {}, self.constants, name)

    @functools.cached_property
    def constants(self) -> list[tuple[float, float] | None]:
        """Each member's `stability_constant` (gdlab.rules), once per distinct setting."""
        return constants_for(self.members.rule, self.members.columns, len(self.members))

    def lr_limits(self) -> list[float | None]:
        """Each member's largest stable lr where the curvature is known (SGD on a quadratic)."""
        if self.curvature is None:
            return [None] * len(self.members)
        return [limit_at(c, self.curvature) for c in self.constants]

    def _initial_params(self) -> tuple[Params, Tensor, list[torch.Generator]]:
        """Each member's start from its own seeded generator, drawn once per distinct seed."""
        seeds = sorted(set(self.members.seed))
        slot_of = {s: i for i, s in enumerate(seeds)}
        generators, starts = [], []
        for s in seeds:
            gen = torch.Generator(device=self.device).manual_seed(int(s))
            start = self.objective.init_params(gen, self.device, self.dtype)
            starts.append({k: v.detach().to(self.device, self.dtype) for k, v in start.items()})
            generators.append(gen)
        slots = torch.tensor([slot_of[s] for s in self.members.seed], device=self.device)
        params = {k: rows_of(torch.stack([s[k] for s in starts]), slots) for k in starts[0]}
        return params, slots, generators

    def run(self) -> PopulationResult:
        count, settings = len(self.members), self.settings
        start_time = time.perf_counter()
        params, slots, generators = self._initial_params()
        hyper = self.members.hyperparameters(self.device, self.shared)
        sampler = None
        if self.mini_batch:
            n, batch_size = data_shape(self.objective)
            sampler = BatchSampler(n, batch_size, generators, self.device)  # type: ignore[arg-type]
        probes = [None] if sampler is None else [_probe_batch(self, count), None]
        self.batched.choose(params, probes)
        compiled = wants_compile(self.compile, count, settings.steps)
        program = Step(self.batched, RULES[self.members.rule][0], point_stats, compiled)
        self.program = program
        #: whether the step ran compiled, and why not where it was asked to
        self.compiled, self.compile_note = program.compiled, program.note
        # a parameter the loss does not use has no gradient: left alone, as in a plain run
        used = [k for k in params if k not in self.batched.unused]
        state: dict[str, Any] = {}  # the rule's buffers (lists aligned with `used`), its step

        final = _Final(count, params, self.device)
        sharp = None if self.sharpness is None else _MemberSharpness(self.sharpness, count)
        if sampler is not None:  # mini-batch losses are noisy: the end verdict uses the full one
            final.initial = self.batched(params, None)[0].double()
        index = torch.arange(count, device=self.device)  # working row -> member
        active = torch.ones(count, dtype=torch.bool, device=self.device)
        running = count
        step = 0
        for step in range(settings.steps + 1):
            last = step == settings.steps
            interrupted = not last and self.interrupt is not None and self.interrupt.requested
            # Training steps see mini-batches; the final point (and an interrupted run's last
            # point) is measured on the full batch, as in the plain trainer.
            full = last or interrupted or sampler is None
            batch = None if full else sampler.next_per_member(slots)  # type: ignore[union-attr]
            observed = last or interrupted or step % settings.log_every == 0
            limits = (settings.tol, settings.divergence_bound) if observed else None
            loss, grads, point = program.grads(params, batch, limits)
            if sharp is not None and not (last or interrupted) and sharp.probe.due(step):
                sharp.measure(self, step, params, state, hyper, index, active, loss, used)
            if interrupted:
                reason = f"stopped by a signal after {step} steps"
                end = (Status.INTERRUPTED, reason)
                final.check(self, step, point, params, index, active, end)
                break
            if observed:
                end = (Status.FINISHED, None) if last else None
                before = active.clone() if sharp is not None else None
                running -= final.check(self, step, point, params, index, active, end)
                if sharp is not None and before is not None:  # the final point of who stopped
                    ended = before & ~active
                    sharp.measure(self, step, params, state, hyper, index, ended, loss, used)
                if running == 0:
                    break
                if running <= active.shape[0] // 2:
                    # Stopped members are frozen in `final`; their rows only cost compute from
                    # here on, so drop them once they are half the working set.
                    keep = active.nonzero().reshape(-1)
                    params = {k: rows_of(v, keep) for k, v in params.items()}
                    grads = {k: rows_of(v, keep) for k, v in grads.items()}
                    state, hyper = state_rows(state, keep), hyper_rows(hyper, keep)
                    slots, index = rows_of(slots, keep), rows_of(index, keep)
                    active = rows_of(active, keep)
                    final.keep_rows(keep)
            if last:
                break
            lr = lr_at(self.schedule, hyper["lr"], step, settings.steps)
            program.update([params[k] for k in used], [grads[k] for k in used], state, hyper, lr)
        wall = time.perf_counter() - start_time
        self.compiled, self.compile_note = program.compiled, program.note  # after any fall-back
        result = final.result(self, wall, step)
        if sharp is not None:
            result.sharpness_initial, result.sharpness_final = sharp.initial, sharp.final
        return result


class _MemberSharpness:
    """Each member's sharpness (gdlab.curvature) at the due steps, and at the point where it
    stops, as its plain run measures it: rows with a finite loss and parameters only, one
    chunk of members at a time (one Hessian-vector product serves the whole chunk)."""

    def __init__(self, probe: Sharpness, count: int) -> None:
        self.probe = probe
        self.initial: list[dict[str, Any] | None] = [None] * count
        self.final: list[dict[str, Any] | None] = [None] * count
        self.measured_at = [-1] * count

    def measure(
        self,
        trainer: PopulationTrainer,
        step: int,
        params: Params,
        state: dict[str, Any],
        hyper: dict[str, Any],
        index: Tensor,
        rows: Tensor,
        loss: Tensor,
        used: list[str],
    ) -> None:
        count = loss.shape[0]
        finite = rows & torch.isfinite(loss.detach().reshape(count))
        for v in params.values():
            finite &= torch.isfinite(v.detach().reshape(count, -1)).all(dim=1)
        picked = finite.nonzero().reshape(-1)
        picked = picked[[self.measured_at[m] != step for m in rows_of(index, picked).tolist()]]
        for chunk in _row_blocks(picked, trainer.chunk_size):
            part = {k: rows_of(v, chunk) for k, v in params.items()}
            part_state, part_hyper = state_rows(state, chunk), hyper_rows(hyper, chunk)
            lr = lr_at(trainer.schedule, part_hyper["lr"], step, trainer.settings.steps)
            members = rows_of(index, chunk).tolist()
            points = self.probe.measure(
                trainer.batched.values, part, step, lr, part_state, used, part_hyper, members
            )
            for member, point in zip(members, points, strict=True):
                values = point.as_dict()
                if self.initial[member] is None:
                    self.initial[member] = values
                self.final[member], self.measured_at[member] = values, step


def state_rows(state: dict[str, Any], rows: Tensor) -> dict[str, Any]:
    """The update rule's state (per-parameter buffer lists, the step count) of `rows`."""
    return {
        k: [None if b is None else rows_of(b, rows) for b in v] if isinstance(v, list) else v
        for k, v in state.items()
    }


def hyper_rows(hyper: dict[str, Any], rows: Tensor) -> dict[str, Any]:
    """The rule's arguments of `rows` (per-member tensors cut, shared numbers kept)."""
    return {k: rows_of(v, rows) if isinstance(v, Tensor) else v for k, v in hyper.items()}


def _probe_batch(trainer: PopulationTrainer, count: int) -> Tensor:
    """Mini-batch indices for the strategy probe, drawn apart from the members' generators."""
    n, batch_size = data_shape(trainer.objective)
    assert n is not None and batch_size is not None
    gen = torch.Generator(device="cpu").manual_seed(1)
    rows = [torch.randperm(n, generator=gen)[:batch_size]]
    probe = torch.stack(rows * min(count, 3))
    return probe.repeat((count + probe.shape[0] - 1) // probe.shape[0], 1)[:count].to(
        trainer.device
    )


class _Final:
    """Collects members as they stop: their step, status, loss, gradient norm and parameters."""

    def __init__(self, count: int, params: Params, device: torch.device) -> None:
        self.status: list[str] = [""] * count
        self.reason: list[str | None] = [None] * count
        self.steps = [0] * count
        self.loss = torch.full((count,), math.nan, dtype=torch.float64, device=device)
        self.grad_norm = torch.full_like(self.loss, math.nan)
        self.params = {k: torch.empty_like(v) for k, v in params.items()}
        self.initial: Tensor | None = None  # float64 [members]: the full objective at step 0
        #: float64 [rows, TREND_POINTS]: the recent losses, a ring (column `_slot` is next)
        self.history: Tensor | None = None
        self.history_steps: list[int] = []  # ... logged at these steps (the same for all rows)
        self._slot = 0

    def check(
        self,
        trainer: PopulationTrainer,
        step: int,
        point: tuple[Tensor, Tensor],
        params: Params,
        index: Tensor,
        active: Tensor,
        end: tuple[Status, str | None] | None,
    ) -> int:
        """Apply the stop rules to the active rows at a log point (`point`: `point_stats`'
        statistics and stop codes); returns how many stopped.

        `end` is how the rest ends when this is the run's last point: ("finished", None) at
        the end of the budget, where the stop rules still have the first word, or
        ("interrupted", reason), which overrides them as in the plain trainer. A stopped
        member's values are recorded here and its row is marked inactive: it is never checked
        again, whatever its (no longer used) row holds later.
        """
        s = trainer.settings
        stats, codes = point
        loss64 = stats[0]  # exact in float64 (converted where judged)
        rule = codes != GO_ON
        interrupted = end is not None and end[0] == Status.INTERRUPTED
        if not interrupted:
            self.remember(step, loss64, trainer.mini_batch)
        # Rows the rule stops get the plain trainer's own verdict and message, one by one;
        # at the end the rest finish (or all are interrupted) without Python per row.
        stopped = (active if interrupted else active & rule).nonzero().reshape(-1)
        forced = end if interrupted else None
        done = self._stopped(s, step, stopped, index, stats, codes, forced)
        if end is not None and not interrupted:
            rest = (active & ~rule).nonzero().reshape(-1)
            done = torch.cat([done, rest])
            self._spent(trainer, step, rest, index, loss64)
        if done.numel() == 0:
            return 0
        done_members = rows_of(index, done)
        self.loss.index_copy_(0, done_members, rows_of(stats[0], done).double())
        self.grad_norm.index_copy_(0, done_members, rows_of(stats[1], done).double())
        for k, v in params.items():
            self.params[k].index_copy_(0, done_members, rows_of(v.detach(), done))
        active.index_fill_(0, done, False)
        return int(done.numel())

    def remember(self, step: int, loss64: Tensor, mini_batch: bool) -> None:
        """Keep the initial loss (by member) and the working rows' last TREND_POINTS
        full-batch losses (by row), for the end verdict."""
        if step == 0 and self.initial is None:
            self.initial = loss64.double()  # at step 0 every member is a working row, in order
        if mini_batch:
            return  # logged losses are batch losses: the end verdict uses the full objective
        # a ring of columns: one column written per log point, never the whole history copied
        if self.history is None:
            self.history = torch.full((loss64.shape[0], TREND_POINTS), math.nan, dtype=loss64.dtype,
                                      device=loss64.device)  # fmt: skip
        self.history[:, self._slot] = loss64
        self._slot = (self._slot + 1) % TREND_POINTS
        self.history_steps = [*self.history_steps[1 - TREND_POINTS :], step]

    def recent(self, rows: Tensor) -> list[Tensor]:
        """The recent losses of `rows`, oldest first: one [rows] column per log point kept."""
        assert self.history is not None
        kept = len(self.history_steps)
        order = [(self._slot - kept + i) % TREND_POINTS for i in range(kept)]
        part = rows_of(self.history, rows)
        return [part[:, c].double() for c in order]

    def keep_rows(self, keep: Tensor) -> None:
        """The working set shrinks to rows `keep`: so does the loss history."""
        if self.history is not None:
            self.history = rows_of(self.history, keep)

    def _spent(
        self, trainer: PopulationTrainer, step: int, rest: Tensor, index: Tensor, loss64: Tensor
    ) -> None:
        """Rows that spent the budget: finished, or diverged by the end verdict."""
        members = rows_of(index, rest)
        for block in _row_blocks(members):
            for member in block.tolist():
                self.status[member], self.steps[member] = Status.FINISHED, step
        if self.initial is None:
            return
        initial = rows_of(self.initial, members)
        if trainer.mini_batch or self.history is None:
            history = [rows_of(loss64, rest).double()]
        else:
            history = self.recent(rest)
        codes = end_code(initial, history, trainer.eps, not trainer.mini_batch, self.history_steps)
        condemned = (codes != GO_ON).nonzero().reshape(-1)
        for block in _row_blocks(condemned):
            block_members = rows_of(members, block).tolist()
            block_codes = rows_of(codes, block).tolist()
            starts = rows_of(initial, block).tolist()
            trails = torch.stack([rows_of(h, block) for h in history], dim=1).tolist()
            for member, code, start, trail in zip(
                block_members, block_codes, starts, trails, strict=True
            ):
                self.status[member] = STOP_STATUS[code]
                self.reason[member] = end_reason(code, start, trail)

    def _stopped(
        self,
        settings: TrainerSettings,
        step: int,
        stopped: Tensor,
        index: Tensor,
        stats: Tensor,
        codes: Tensor,
        forced: tuple[Status, str | None] | None,
    ) -> Tensor:
        """Record the verdict of each row in `stopped` (its stop code's, or `forced`: an
        interrupt overrides the stop rules); returns the rows.

        Rows are read back in blocks, so a million members stopping at once never become a
        million Python objects at a time.
        """
        tol, bound = settings.tol, settings.divergence_bound
        for block in _row_blocks(stopped):
            members = rows_of(index, block).tolist()
            values = stats.index_select(1, block).T.tolist()
            block_codes = rows_of(codes, block).tolist()
            for member, (loss_v, grad_v, param_v), code in zip(
                members, values, block_codes, strict=True
            ):
                if forced is not None:
                    status, reason = forced
                else:
                    status = STOP_STATUS[code]
                    reason = stop_reason(code, step, loss_v, grad_v, param_v, tol, bound)
                self.status[member], self.reason[member] = status, reason
                self.steps[member] = step
        return stopped

    def result(self, trainer: PopulationTrainer, wall: float, step: int) -> PopulationResult:
        objective = trainer.objective
        minimizer = getattr(objective, "minimizer", None)
        minimum = getattr(objective, "minimum", None)
        distance = None
        if minimizer:
            distance = distance_to_minimizer(self.params, minimizer).cpu()
        loss64 = self.float64_losses(trainer)
        distances = None if distance is None else distance.tolist()
        excess, scores = [], []
        for i, status in enumerate(self.status):
            e = clamp_excess(loss64[i], minimum)
            d = None if distances is None else distances[i]
            excess.append(e)
            scores.append(score(status, loss64[i], e, minimum, d, self.steps[i], trainer.eps))
        return PopulationResult(
            status=self.status,
            steps=self.steps,
            final_loss=self.loss.cpu(),
            grad_norm=self.grad_norm.cpu(),
            params={k: v.cpu() for k, v in self.params.items()},
            stop_reason=self.reason,
            distance_to_minimizer=distance,
            minimum=minimum,
            wall_time_s=wall,
            strategy=trainer.batched.strategy,
            chunk_size=trainer.chunk_size,
            steps_run=step,
            rejected=dict(trainer.batched.rejected),
            excess_loss=excess,
            score=scores,
            lr_limit=trainer.lr_limits(),
            initial_loss=None if self.initial is None else self.initial.cpu(),
        )

    def float64_losses(self, trainer: PopulationTrainer) -> list[float | None]:
        """Each member's final loss evaluated in float64 (the excess loss's precision), by the
        strategy the run chose; a loss that can't run in float64 keeps the run's value."""
        from gdlab.problem import float64_twin

        losses = self.loss.cpu().tolist()
        if trainer.dtype == torch.float64:
            return losses
        try:
            twin = float64_twin(trainer.objective)
            batched = BatchedLoss(twin.loss, trainer.batched.strategy, trainer.chunk_size)
            params64 = {k: v.double() for k, v in self.params.items()}
            values = batched(params64, None)[0].tolist()
        except Exception:  # a plugin's loss that insists on its own dtype
            return losses
        # members that stopped on a non-finite loss keep it (their excess is unknown)
        return [v if math.isfinite(own) else own for v, own in zip(values, losses, strict=True)]


def _row_blocks(rows: Tensor, size: int = 1 << 16) -> list[Tensor]:
    return [rows[start : start + size] for start in range(0, rows.numel(), size)]


def point_stats(
    loss: Tensor, grads: Params, params: Params, tol: float, bound: float
) -> tuple[Tensor, Tensor]:
    """At a log point: [loss, gradient norm, largest parameter norm] per member ([3, K], in
    the run's dtype) and each member's stop code (gdlab.rules.stop_code, int8): one fused
    program when the step is compiled."""
    rows = loss.shape[0]
    grad_norm = torch.linalg.vector_norm(_norms(grads, rows), dim=1)
    param_norm = _norms(params, rows).amax(dim=1)
    stats = torch.stack([loss.detach().reshape(rows), grad_norm, param_norm])
    # judged in float64, as the plain trainer judges its Python floats (exact conversions);
    # kept in the run's dtype, half the memory traffic of float64 in a float32 run
    wide = stats.double()
    return stats, stop_code(wide[0], wide[1], wide[2], tol, bound).to(torch.int8)


def _norms(tensors: Params, rows: int) -> Tensor:
    """2-norm of each tensor per member: [members, tensors]."""
    return torch.stack(
        [torch.linalg.vector_norm(t.detach().reshape(rows, -1), dim=1) for t in tensors.values()],
        dim=1,
    )


def from_config(
    cfg: Any,
    columns: Mapping[str, Sequence[Any]] | None = None,
    strategy: str = "auto",
    chunk_size: int | None = None,
    compile: str | bool = "false",
) -> PopulationTrainer:
    """A population over `cfg`: `columns` (member field -> values) vary, the rest is `cfg`'s
    (`compile`: hydra.sweeper.compile's choices; eager unless asked).

    The shared part is built by `gdlab.problem.build_problem`, so it is checked and
    interpreted exactly as for a plain run (objective, data on the device, steps, log points,
    stop rules).
    """
    from gdlab.problem import build_problem

    columns = dict(columns or {})
    count = len(next(iter(columns.values()))) if columns else 1
    problem = build_problem(cfg, members=count)
    rule = problem.values["optimizer.name"]
    members = Members.build(count, member_base(problem.values, rule), rule, **columns)
    return PopulationTrainer(
        problem.objective,
        members,
        problem.loop,
        problem.schedule,
        problem.device,
        problem.dtype,
        strategy=strategy,
        chunk_size=chunk_size,
        shared=problem.values,
        sharpness=problem.sharpness,
        name=problem.name,
        compile=compile,
    )
