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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def default_log_every(steps: int, points: int = 1000) -> int:
    """Every step for short runs, about `points` points per curve for long ones."""
    return max(1, math.ceil(steps / points))


class Trainer:
    """Runs manual SGD on `params` (leaf tensors) for an objective's `loss`."""

    def __init__(
        self,
        loss_fn: Callable[[Params], Tensor],
        params: Params,
        rule: UpdateRule,
        schedule: Schedule,
        settings: TrainerSettings,
        sinks: Sequence[Sink] = (),
        minimizer: Params | None = None,
        minimum: float | None = None,
    ) -> None:
        for name, p in params.items():
            if not (p.is_leaf and p.requires_grad):
                raise ValueError(f"parameter {name!r} must be a leaf tensor with requires_grad")
        self.loss_fn = loss_fn
        self.params = params
        self.rule = rule
        self.schedule = schedule
        self.settings = settings
        self.sinks = list(sinks)
        self.minimizer = minimizer
        self.minimum = minimum

    def run(self) -> RunResult:
        params, settings = self.params, self.settings
        tensors = list(params.values())
        loss_fn, schedule, rule = self.loss_fn, self.schedule, self.rule
        log_every, set_to_none = settings.log_every, settings.set_to_none

        start = time.perf_counter()
        verdict: tuple[str, str] | None = None
        record: LogRecord | None = None
        step = 0
        for step in range(settings.steps):
            loss = loss_fn(params)
            loss.backward()
            lr = schedule(step)
            if step % log_every == 0:
                record = self._observe(step, loss, lr)
                verdict = self._verdict(record)
                if verdict is not None:  # stop before updating: report the parameters checked
                    break
            with torch.no_grad():
                rule.step(tensors, lr)
            for p in tensors:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()  # type: ignore[union-attr]
        else:
            step = settings.steps
            # Evaluate the final parameters too, so every curve ends at the last point.
            loss = loss_fn(params)
            loss.backward()
            record = self._observe(step, loss, schedule(step))
            verdict = self._verdict(record)
        assert record is not None
        for p in tensors:
            p.grad = None
        wall = time.perf_counter() - start

        status, reason = verdict if verdict is not None else ("finished", None)
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

    def _observe(self, step: int, loss: Tensor, lr: float) -> LogRecord:
        """Read loss, gradient norm and small parameters back to the host: one sync."""
        with torch.no_grad():
            grads = [
                p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params.values()
            ]
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            param_norm = torch.stack(torch._foreach_norm(list(self.params.values()))).max()
            loss_value, grad_value, param_value = torch.stack(
                [loss.detach().reshape(()), grad_norm, param_norm]
            ).tolist()
            small = {
                name: p.detach().cpu().clone()
                for name, p in self.params.items()
                if p.numel() <= SMALL_PARAM_NUMEL
            }
        self._param_norm = param_value
        record = LogRecord(step, loss_value, grad_value, lr, small)
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
