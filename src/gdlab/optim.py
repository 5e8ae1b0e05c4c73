"""Update rules as plain functions over tensors, plus a small object that holds their state.

The split follows `torch/optim/sgd.py`: `sgd_update` is the functional core (weight decay,
heavy-ball momentum, Nesterov, the same formulas and order as `torch.optim.SGD`), and
`UpdateRule` checks its settings at the door and keeps the momentum buffers between steps.
Everything here runs under `torch.no_grad()` in the trainer and never leaves the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gdlab.errors import GdlabError


@dataclass(frozen=True)
class SGDSettings:
    """Hyperparameters of one SGD variant; `clip_norm` None means no gradient clipping."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise GdlabError(f"optimizer.lr={self.lr!r} must be a finite number > 0")
        if not (0.0 <= self.momentum < 1.0):
            raise GdlabError(f"optimizer.momentum={self.momentum!r} must be in [0, 1)")
        if not (0.0 <= self.dampening <= 1.0):
            raise GdlabError(f"optimizer.dampening={self.dampening!r} must be in [0, 1]")
        if self.nesterov and (self.momentum <= 0.0 or self.dampening != 0.0):
            raise GdlabError(
                "optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0"
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0.0):
            raise GdlabError(f"optimizer.weight_decay={self.weight_decay!r} must be >= 0")
        if self.clip_norm is not None and not (
            math.isfinite(self.clip_norm) and self.clip_norm > 0
        ):
            raise GdlabError(f"optimizer.clip_norm={self.clip_norm!r} must be null or > 0")


def clip_grad_norm(grads: list[Tensor], max_norm: float) -> None:
    """Scale gradients in place so their total 2-norm is at most `max_norm`.

    Same rule as `torch.nn.utils.clip_grad_norm_`, computed on the device without a host sync.
    """
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, scale)


def sgd_update(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
) -> None:
    """One SGD step in place; fills `momentum_buffers` on the first step with momentum."""
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        if weight_decay != 0.0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0.0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = torch.clone(grad).detach()
                momentum_buffers[i] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1.0 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        param.add_(grad, alpha=-lr)


class UpdateRule:
    """SGD with its state: call `step(params, lr)` after `backward()`, under `no_grad`.

    Parameters whose `.grad` is None are skipped, as `torch.optim.SGD` does.
    """

    def __init__(self, settings: SGDSettings) -> None:
        self.settings = settings
        self.momentum_buffers: list[Tensor | None] = []
        plain = settings.momentum == 0.0 and settings.weight_decay == 0.0
        # The tutorial's p -= lr * p.grad as one fused call per parameter: the common case
        # gets no Python beyond it (this runs every step).
        self.step = self._plain_step if plain and settings.clip_norm is None else self._step

    @staticmethod
    def _plain_step(params: list[Tensor], lr: float) -> None:
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)

    def _step(self, params: list[Tensor], lr: float) -> None:
        s = self.settings
        if not self.momentum_buffers:
            self.momentum_buffers = [None] * len(params)
        active = [i for i, p in enumerate(params) if p.grad is not None]
        grads = [params[i].grad for i in active]
        if s.clip_norm is not None:
            clip_grad_norm(grads, s.clip_norm)  # type: ignore[arg-type]
        buffers = [self.momentum_buffers[i] for i in active]
        sgd_update(
            [params[i] for i in active],
            grads,  # type: ignore[arg-type]
            buffers,
            lr=lr,
            momentum=s.momentum,
            dampening=s.dampening,
            nesterov=s.nesterov,
            weight_decay=s.weight_decay,
        )
        for i, buf in zip(active, buffers, strict=True):
            self.momentum_buffers[i] = buf

    def state_dict(self) -> dict[str, list[Tensor | None]]:
        return {"momentum_buffers": list(self.momentum_buffers)}

    def load_state_dict(self, state: dict[str, list[Tensor | None]]) -> None:
        self.momentum_buffers = list(state["momentum_buffers"])
