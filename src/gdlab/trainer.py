"""The step loop: the manual SGD the autograd tutorial teaches, and nothing that hides it.

Each step, for parameters that are leaf tensors with `requires_grad=True`:

    loss = objective.loss(params)        # forward: autograd records the graph
    loss.backward()                      # backward: fills p.grad for every parameter
    with torch.no_grad():                # the update itself must not be recorded
        p -= lr * p.grad                 # (SGD, momentum, Nesterov or decay: see optim.py)
    p.grad.zero_()                       # gradients accumulate unless zeroed

At log points (every `log_every` steps, and always at the end) the trainer reads the loss,
gradient norm and parameters back to the host once, hands them to the sinks, and applies the
stop rules: converged when the gradient norm falls below `tol`, diverged when the loss or a
parameter is not finite or a parameter's norm exceeds `divergence_bound`. Between log points
nothing is read back, so a CUDA run never waits on the host.

Every `checkpoint_every` steps, at the end, and when an interrupt is requested, the trainer
hands its state (step, parameters, the update rule's buffers, mini-batch RNG) to a checkpoint
callback; `load_state_dict` puts it back so the continued run is the uninterrupted one, bit for bit.
The final checkpoint of a run that ended is written after the sinks' final files (metrics.json
first): a run counts as ended only once its record is whole.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from gdlab.batches import BatchSampler
from gdlab.curvature import Sharpness, SharpnessPoint
from gdlab.events import SMALL_PARAM_NUMEL, LogRecord, RunResult, Sink
from gdlab.objectives.base import Params
from gdlab.optim import UpdateRule
from gdlab.rules import (
    EPS,
    GO_ON,
    STOP_STATUS,
    TREND_POINTS,
    Status,
    clamp_excess,
    distance_to_minimizer,
    end_code,
    end_reason,
    precision,
    score,
    verdict,
)
from gdlab.schedules import Schedule


@dataclass(frozen=True)
class TrainerSettings:
    steps: int
    log_every: int = 1
    tol: float = 0.0
    divergence_bound: float = 1e8
    set_to_none: bool = False
    checkpoint_every: int | None = None


class StopRequest(Protocol):
    """Anything with a `requested` attribute that becomes truthy when the run should stop."""

    requested: Any


def row_chunks(n_samples: int, chunk_rows: int) -> list[slice]:
    """Consecutive row ranges covering the data set, `chunk_rows` rows each (the last fewer)."""
    return [
        slice(start, min(start + chunk_rows, n_samples))
        for start in range(0, n_samples, chunk_rows)
    ]


def backward_in_chunks(
    loss_fn: Callable[..., Tensor], chunks: list[slice], n_samples: int
) -> Callable[[Params], Tensor]:
    """The full-batch loss and gradient, accumulated over row chunks.

    The tutorial's gradient accumulation put to work: each chunk's loss, weighted by its share
    of the rows, is backpropagated at once, so its rows are read from memory once and used by
    forward and backward while still in cache. The gradients add up to the full-batch ones
    (the loss is a mean over rows), up to the order of floating-point additions.
    """
    weighted = [(rows, (rows.stop - rows.start) / n_samples) for rows in chunks]

    def loss_and_grad(params: Params) -> Tensor:
        total: Tensor | None = None
        for rows, weight in weighted:
            part = loss_fn(params, rows) * weight
            part.backward()
            total = part.detach() if total is None else total + part.detach()
        assert total is not None
        return total

    return loss_and_grad


def default_log_every(steps: int, points: int = 1000) -> int:
    """Every step for short runs, about `points` points per curve for long ones."""
    return max(1, math.ceil(steps / points))


class Trainer:
    """Runs manual SGD on `params` (leaf tensors) for an objective's `loss`.

    `loss_fn(params)` is the full-batch loss; with a `sampler`, training steps call
    `loss_fn(params, indices)` on mini-batches while the final point uses the full batch.
    With `chunks` (row slices), full-batch gradients are accumulated chunk by chunk.
    """

    def __init__(
        self,
        loss_fn: Callable[..., Tensor],
        params: Params,
        rule: UpdateRule,
        schedule: Schedule,
        settings: TrainerSettings,
        sinks: Sequence[Sink] = (),
        minimizer: Params | None = None,
        minimum: float | None = None,
        sampler: BatchSampler | None = None,
        checkpoint: Callable[[dict[str, Any]], None] | None = None,
        interrupt: StopRequest | None = None,
        chunks: list[slice] | None = None,
        n_samples: int | None = None,
        loss64: Callable[[Params], float] | None = None,
        lr_limit: float | None = None,
        sharpness: Sharpness | None = None,
    ) -> None:
        for name, p in params.items():
            if not (p.is_leaf and p.requires_grad):
                raise ValueError(f"parameter {name!r} must be a leaf tensor with requires_grad")
        self.loss_fn = loss_fn
        #: full-batch gradients accumulated over row chunks (trainer.chunk_rows), or None
        self.chunked: Callable[[Params], Tensor] | None = None
        if chunks and len(chunks) > 1 and n_samples:
            self.chunked = backward_in_chunks(loss_fn, chunks, n_samples)
        self.params = params
        self._tensors = list(params.values())
        self._small = [(k, p) for k, p in params.items() if p.numel() <= SMALL_PARAM_NUMEL]
        self._on_cpu = all(p.device.type == "cpu" for p in self._tensors)
        self.rule = rule
        self.schedule = schedule
        self.settings = settings
        self.sinks = list(sinks)
        self.minimizer = minimizer
        self.minimum = minimum
        self.sampler = sampler
        self.checkpoint = checkpoint
        self.interrupt = interrupt
        self.start_step = 0
        self.elapsed_before = 0.0  # seconds spent in earlier sessions of a resumed run
        #: the final loss in float64, for the excess loss (None: the run's own final loss)
        self.loss64 = loss64
        self.lr_limit = lr_limit
        self.eps = precision(self._tensors[0].dtype) if self._tensors else precision("float64")
        #: the full objective at the start, and the last log points' losses: the end verdict
        self.initial_loss: float | None = None
        self.history: list[float] = []
        self.history_steps: list[int] = []
        #: measures the Hessian's extremes at its due steps (sharpness.every), or None
        self.sharpness = sharpness
        self.sharpness_points: list[SharpnessPoint] = []
        self.sharpness_seconds = 0.0

    def run(self) -> RunResult:
        params, settings, tensors = self.params, self.settings, self._tensors
        loss_fn, sampler, chunked = self.loss_fn, self.sampler, self.chunked
        schedule, update, interrupt = self.schedule, self.rule.step, self.interrupt
        log_every, set_to_none = settings.log_every, settings.set_to_none
        checkpoint_every = settings.checkpoint_every if self.checkpoint else None

        start = time.perf_counter()
        if self.start_step == 0 and sampler is not None:
            # mini-batch losses are noisy: the end verdict compares the full objective
            with torch.no_grad():
                self.initial_loss = float(loss_fn(params))
        stop: tuple[Status, str] | None = None
        record: LogRecord | None = None
        step = self.start_step
        for step in range(self.start_step, settings.steps):
            if interrupt is not None and interrupt.requested:
                stop = (Status.INTERRUPTED, f"stopped by a signal after {step} steps")
                break
            if chunked is not None:  # the same gradient, accumulated chunk by chunk
                loss = chunked(params)
            else:
                # forward: autograd records the graph (a mini-batch, or the whole data set)
                loss = loss_fn(params) if sampler is None else loss_fn(params, sampler.next())
                # backward: fills p.grad for every parameter the loss uses
                loss.backward()
            lr = schedule(step)
            if self.sharpness is not None and self.sharpness.due(step) and self._finite_params():
                self._measure_sharpness(step)  # reads the parameters only: the run is unchanged
            if step % log_every == 0:
                # host sync: read loss, gradient norm and parameters back, apply the stop rules
                record = self._observe(step, loss, lr)
                stop = self._verdict(record)
                if stop is not None:  # stop before updating: report the parameters checked
                    break
            # the update itself must not be recorded by autograd
            with torch.no_grad():
                update(tensors, lr)
            # gradients accumulate unless zeroed
            if set_to_none:
                for p in tensors:
                    p.grad = None
            else:
                for p in tensors:
                    if p.grad is not None:  # None for a parameter the loss doesn't use
                        p.grad.zero_()
            if checkpoint_every and (step + 1) % checkpoint_every == 0:
                self._save(step + 1, Status.RUNNING, start)
        else:
            step = settings.steps
            # Evaluate the final parameters too, so every curve ends at the last point.
            record = self._final_point(step, log=True)
            stop = self._verdict(record) or self._end_verdict(record)
        if stop is not None and stop[0] == Status.INTERRUPTED:
            # Not a log point of the uninterrupted run: measure it without logging it.
            record = self._final_point(step, log=False)
        elif self.sharpness is not None and self.sharpness.settings.every > 0:
            measured = self.sharpness_points and self.sharpness_points[-1].step == step
            if not measured and math.isfinite(record.loss) and self._finite_params():
                self._measure_sharpness(step)  # the final point
        assert record is not None
        for p in tensors:
            p.grad = None

        status, reason = stop if stop is not None else (Status.FINISHED, None)
        wall = self.elapsed_before + time.perf_counter() - start
        final_state = None
        if self.checkpoint:
            final_state = self._checkpoint_state(step, status, start)
            if status == Status.INTERRUPTED:  # resumable: keep it whatever happens next
                self._write_checkpoint(final_state)
                final_state = None
        distance = None
        if self.minimizer:
            batched = {k: v.detach().unsqueeze(0) for k, v in params.items()}  # K = 1
            distance = float(distance_to_minimizer(batched, self.minimizer)[0])
        loss64 = record.loss  # a float64 run's own loss is already float64
        if self.loss64 is not None and math.isfinite(record.loss) and self.eps > EPS["float64"]:
            with torch.no_grad():
                loss64 = self.loss64(params)
        excess = clamp_excess(loss64, self.minimum)
        result = RunResult(
            status=status,
            steps=step,
            final_loss=record.loss,
            grad_norm=record.grad_norm,
            params={k: v.detach().cpu().clone() for k, v in params.items()},
            wall_time_s=wall,
            stop_reason=reason,
            distance_to_minimizer=distance,
            minimum=self.minimum,
            excess_loss=excess,
            score=score(status, loss64, excess, self.minimum, distance, step, self.eps),
            lr_limit=self.lr_limit,
            initial_loss=self.initial_loss,
            lr=self.schedule(0),
            sharpness=self._sharpness_summary(),
        )
        for sink in self.sinks:
            sink.finish(result)
        if final_state is not None:
            # Only once metrics.json and the other files are whole does the checkpoint say the
            # run ended; a failure before leaves the last periodic one to resume from.
            self._write_checkpoint(final_state)
        return result

    def _measure_sharpness(self, step: int) -> None:
        """The Hessian's extremes at the parameters of `step` (gdlab.curvature), to the
        sinks that take them; the full objective, whatever the batches."""
        assert self.sharpness is not None
        began = time.perf_counter()
        batched = {k: v.detach().unsqueeze(0) for k, v in self.params.items()}  # K = 1
        loss_fn = self.loss_fn

        def losses(leaves: dict[str, Tensor]) -> Tensor:
            return loss_fn({k: v[0] for k, v in leaves.items()}).reshape(1)

        state = {
            k: [None if b is None else b.unsqueeze(0) for b in v] if isinstance(v, list) else v
            for k, v in self.rule.state.items()
        }
        (point,) = self.sharpness.measure(losses, batched, step, self.schedule(step), state)
        self.sharpness_points.append(point)
        self.sharpness_seconds += time.perf_counter() - began
        for sink in self.sinks:
            log_sharpness = getattr(sink, "log_sharpness", None)
            if log_sharpness is not None:
                log_sharpness(point)

    def _sharpness_summary(self) -> dict[str, Any] | None:
        """metrics.json's `sharpness`: the first and last measurements, and all of them."""
        if self.sharpness is None or not self.sharpness_points:
            return None
        points = [p.as_dict() for p in self.sharpness_points]
        return {
            "every": self.sharpness.settings.every,
            "initial": points[0],
            "final": points[-1],
            "history": points,
            "seconds": self.sharpness_seconds,
        }

    def _finite_params(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self._tensors)

    def _final_point(self, step: int, log: bool) -> LogRecord:
        """Loss and gradient of the full batch at the current parameters."""
        if self.chunked is not None:
            loss = self.chunked(self.params)
        else:
            loss = self.loss_fn(self.params)
            loss.backward()
        return self._observe(step, loss, self.schedule(step), log=log)

    def _observe(self, step: int, loss: Tensor, lr: float, log: bool = True) -> LogRecord:
        """Read loss, gradient norm and small parameters back to the host: one sync."""
        tensors = self._tensors
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in tensors]
            norms = torch._foreach_norm(grads + tensors)
            grad_norm = torch.linalg.vector_norm(torch.stack(norms[: len(tensors)]))
            param_norm = torch.stack(norms[len(tensors) :]).max()
            if self._on_cpu:  # reading a CPU tensor is no sync: three items beat a stack
                loss_value, grad_value, param_value = (
                    loss.item(),
                    grad_norm.item(),
                    param_norm.item(),
                )
                small = {name: p.clone() for name, p in self._small}
            else:
                loss_value, grad_value, param_value = torch.stack(
                    [loss.detach().reshape(()), grad_norm, param_norm]
                ).tolist()
                small = {name: p.to("cpu", copy=True) for name, p in self._small}
        self._param_norm = param_value
        if log and self.sampler is None:  # full-batch losses only: the trend of the end verdict
            if step == 0:
                self.initial_loss = loss_value
            self.history = [*self.history[1 - TREND_POINTS :], loss_value]
            self.history_steps = [*self.history_steps[1 - TREND_POINTS :], step]
        record = LogRecord(step, loss_value, grad_value, lr, small)
        if log:
            for sink in self.sinks:
                sink.log(record)
        return record

    def _end_verdict(self, final: LogRecord) -> tuple[Status, str] | None:
        """A run that spent its budget ends worse than it started, or on a rising trend:
        diverged (gdlab.rules.end_code). `final` is the full objective at the end."""
        if self.initial_loss is None:
            return None
        history = self.history
        if self.sampler is not None:  # judged on the full objective only
            history = [final.loss]
        code = end_code(
            self.initial_loss, history, self.eps, self.sampler is None, self.history_steps
        )
        if code == GO_ON:
            return None
        return STOP_STATUS[code], end_reason(code, self.initial_loss, history)

    def _verdict(self, record: LogRecord) -> tuple[Status, str] | None:
        """The stop rules (gdlab.rules) at a logged point; None means go on."""
        s = self.settings
        return verdict(
            record.step, record.loss, record.grad_norm, self._param_norm, s.tol, s.divergence_bound
        )

    def _save(self, step: int, status: Status, session_start: float) -> None:
        self._write_checkpoint(self._checkpoint_state(step, status, session_start))

    def _checkpoint_state(self, step: int, status: Status, session_start: float) -> dict[str, Any]:
        state = self.state_dict(step, status)
        state["elapsed_s"] = self.elapsed_before + time.perf_counter() - session_start
        return state

    def _write_checkpoint(self, state: dict[str, Any]) -> None:
        assert self.checkpoint is not None
        for sink in self.sinks:  # what was logged up to here survives a crash with the checkpoint
            flush = getattr(sink, "flush", None)
            if flush is not None:
                flush()
        self.checkpoint(state)

    def state_dict(self, step: int, status: Status) -> dict[str, Any]:
        """What a checkpoint holds: enough to continue exactly where the run stands."""
        return {
            "step": step,
            "status": str(status),
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "optimizer_state": self.rule.state_dict(),
            "sampler": None if self.sampler is None else self.sampler.state_dict(),
            "initial_loss": self.initial_loss,
            "history": list(self.history),
            "history_steps": list(self.history_steps),
            "sharpness": [p.as_dict() for p in self.sharpness_points],
            "sharpness_seconds": self.sharpness_seconds,
            "sharpness_state": None if self.sharpness is None else self.sharpness.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: same parameters, buffers, RNG and step."""
        with torch.no_grad():
            for name, p in self.params.items():
                if name not in state["params"] or state["params"][name].shape != p.shape:
                    raise ValueError(f"checkpoint has no parameter {name!r} of shape {p.shape}")
                p.copy_(state["params"][name])
        device = next(iter(self.params.values())).device
        # a checkpoint from before the other update rules holds SGD's `momentum_buffers`
        rule_state = state.get("optimizer_state") or {
            "momentum_buffers": state.get("momentum_buffers")
        }
        self.rule.load_state_dict(_to_device(rule_state, device))
        if self.sampler is not None and state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])
        self.start_step = int(state["step"])
        self.initial_loss = state.get("initial_loss")
        self.history = list(state.get("history") or [])
        self.history_steps = list(state.get("history_steps") or [])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.sharpness_points = [SharpnessPoint(**p) for p in state.get("sharpness") or []]
        self.sharpness_seconds = float(state.get("sharpness_seconds", 0.0))
        if self.sharpness is not None and state.get("sharpness_state"):
            self.sharpness.load_state_dict(_to_device(state["sharpness_state"], device))


def _to_device(state: Any, device: torch.device) -> Any:
    """A checkpoint's nested state with its tensors moved to the run's device."""
    if isinstance(state, Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [_to_device(v, device) for v in state]
    return state
