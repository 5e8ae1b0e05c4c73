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
hands its state (step, parameters, momentum buffers, mini-batch RNG) to a checkpoint callback;
`load_state_dict` puts it back so the continued run is the uninterrupted one, bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from gdlab.events import SMALL_PARAM_NUMEL, LogRecord, RunResult, Sink
from gdlab.objectives.base import Params
from gdlab.optim import UpdateRule
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


class BatchSampler:
    """Sample indices for mini-batches: a fresh random permutation each epoch, on the device."""

    def __init__(
        self, n_samples: int, batch_size: int, generator: torch.Generator, device: torch.device
    ) -> None:
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.generator = generator
        self.device = device
        self._order: Tensor | None = None
        self._position = n_samples

    def next(self) -> Tensor:
        if self._position + self.batch_size > self.n_samples:
            self._order = torch.randperm(
                self.n_samples, generator=self.generator, device=self.device
            )
            self._position = 0
        start = self._position
        self._position += self.batch_size
        return self._order[start : self._position]  # type: ignore[index]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": None if self._order is None else self._order.cpu(),
            "position": self._position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        order = state["order"]
        self._order = None if order is None else order.to(self.device)
        self._position = int(state["position"])


def row_chunks(n_samples: int, chunk_rows: int) -> list[slice]:
    """Consecutive row ranges covering the data set, `chunk_rows` rows each (the last fewer)."""
    return [
        slice(start, min(start + chunk_rows, n_samples))
        for start in range(0, n_samples, chunk_rows)
    ]


def backward_full(loss_fn: Callable[[Params], Tensor]) -> Callable[[Params], Tensor]:
    """loss = loss_fn(params); loss.backward(): the tutorial's step, as one call."""

    def loss_and_grad(params: Params) -> Tensor:
        loss = loss_fn(params)
        loss.backward()
        return loss

    return loss_and_grad


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
    ) -> None:
        for name, p in params.items():
            if not (p.is_leaf and p.requires_grad):
                raise ValueError(f"parameter {name!r} must be a leaf tensor with requires_grad")
        if chunks and len(chunks) > 1 and n_samples:
            self.full_loss_and_grad = backward_in_chunks(loss_fn, chunks, n_samples)
        else:
            self.full_loss_and_grad = backward_full(loss_fn)
        if sampler is None:
            self.loss_and_grad = self.full_loss_and_grad
        else:
            self.loss_and_grad = backward_full(lambda p: loss_fn(p, sampler.next()))
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

    def run(self) -> RunResult:
        params, settings, tensors = self.params, self.settings, self._tensors
        loss_and_grad, schedule, update, interrupt = (
            self.loss_and_grad,
            self.schedule,
            self.rule.step,
            self.interrupt,
        )
        log_every, set_to_none = settings.log_every, settings.set_to_none
        checkpoint_every = settings.checkpoint_every if self.checkpoint else None

        start = time.perf_counter()
        verdict: tuple[str, str] | None = None
        record: LogRecord | None = None
        step = self.start_step
        for step in range(self.start_step, settings.steps):
            if interrupt is not None and interrupt.requested:
                verdict = ("interrupted", f"stopped by a signal after {step} steps")
                break
            loss = loss_and_grad(params)  # loss = loss_fn(params); loss.backward()
            lr = schedule(step)
            if step % log_every == 0:
                record = self._observe(step, loss, lr)
                verdict = self._verdict(record)
                if verdict is not None:  # stop before updating: report the parameters checked
                    break
            with torch.no_grad():
                update(tensors, lr)
            if set_to_none:
                for p in tensors:
                    p.grad = None
            else:
                for p in tensors:
                    if p.grad is not None:  # None for a parameter the loss doesn't use
                        p.grad.zero_()
            if checkpoint_every and (step + 1) % checkpoint_every == 0:
                self._save(step + 1, "running", start)
        else:
            step = settings.steps
            # Evaluate the final parameters too, so every curve ends at the last point.
            record = self._final_point(step, log=True)
            verdict = self._verdict(record)
        if verdict is not None and verdict[0] == "interrupted":
            # Not a log point of the uninterrupted run: measure it without logging it.
            record = self._final_point(step, log=False)
        assert record is not None
        for p in tensors:
            p.grad = None

        status, reason = verdict if verdict is not None else ("finished", None)
        wall = self.elapsed_before + time.perf_counter() - start
        if self.checkpoint:
            self._save(step, status, start)
        result = RunResult(
            status=status,
            steps=step,
            final_loss=record.loss,
            grad_norm=record.grad_norm,
            params={k: v.detach().cpu().clone() for k, v in params.items()},
            wall_time_s=wall,
            stop_reason=reason,
            distance_to_minimizer=self._distance_to_minimizer(),
            minimum=self.minimum,
        )
        for sink in self.sinks:
            sink.finish(result)
        return result

    def _final_point(self, step: int, log: bool) -> LogRecord:
        """Loss and gradient of the full batch at the current parameters."""
        loss = self.full_loss_and_grad(self.params)
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
        record = LogRecord(step, loss_value, grad_value, lr, small)
        if log:
            for sink in self.sinks:
                sink.log(record)
        return record

    def _verdict(self, record: LogRecord) -> tuple[str, str] | None:
        """Apply the stop rules to a logged point; None means go on."""
        if not math.isfinite(record.loss):
            return "diverged", f"loss is {record.loss} at step {record.step}"
        if not math.isfinite(self._param_norm):
            return "diverged", f"a parameter is not finite at step {record.step}"
        if self._param_norm > self.settings.divergence_bound:
            return "diverged", (
                f"parameter norm {self._param_norm:.3g} exceeds trainer.divergence_bound="
                f"{self.settings.divergence_bound:g} at step {record.step}"
            )
        if not math.isfinite(record.grad_norm):
            return "diverged", f"gradient norm is {record.grad_norm} at step {record.step}"
        if record.grad_norm < self.settings.tol:
            return "converged", (
                f"gradient norm {record.grad_norm:.3g} < trainer.tol={self.settings.tol:g}"
            )
        return None

    def _distance_to_minimizer(self) -> float | None:
        if not self.minimizer:
            return None
        with torch.no_grad():
            total = sum(
                float(((self.params[k] - v.to(self.params[k])) ** 2).sum())
                for k, v in self.minimizer.items()
            )
        return math.sqrt(total)

    def _save(self, step: int, status: str, session_start: float) -> None:
        assert self.checkpoint is not None
        state = self.state_dict(step, status)
        state["elapsed_s"] = self.elapsed_before + time.perf_counter() - session_start
        for sink in self.sinks:  # what was logged up to here survives a crash with the checkpoint
            flush = getattr(sink, "flush", None)
            if flush is not None:
                flush()
        self.checkpoint(state)

    def state_dict(self, step: int, status: str) -> dict[str, Any]:
        """What a checkpoint holds: enough to continue exactly where the run stands."""
        return {
            "step": step,
            "status": status,
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "momentum_buffers": self.rule.state_dict()["momentum_buffers"],
            "sampler": None if self.sampler is None else self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: same parameters, buffers, RNG and step."""
        with torch.no_grad():
            for name, p in self.params.items():
                if name not in state["params"] or state["params"][name].shape != p.shape:
                    raise ValueError(f"checkpoint has no parameter {name!r} of shape {p.shape}")
                p.copy_(state["params"][name])
        device = next(iter(self.params.values())).device
        buffers = [None if b is None else b.to(device) for b in state["momentum_buffers"]]
        self.rule.load_state_dict({"momentum_buffers": buffers})
        if self.sampler is not None and state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])
        self.start_step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
