"""Update rules as functions over tensors, plus a small object that holds their state.

The split follows `torch/optim/sgd.py`: `sgd` is the functional core (gradient clipping,
weight decay, heavy-ball momentum, Nesterov: the same formulas and order as
`torch.optim.SGD`), and `UpdateRule` keeps the momentum buffers between the steps of a run.

Both engines call the same `sgd`. In a plain run every hyperparameter is a number. In a
population the parameters carry a leading member dimension K, and a hyperparameter is either
a number every member shares or a tensor of K values (one per member, float64 as the config
holds it, or bool for `nesterov`); a member whose value turns a feature off (momentum 0, no
decay, clip_norm +inf) takes exactly the plain branch for it (`torch.where`), so an infinity in
an unused buffer cannot leak into its parameters. Everything here runs under
`torch.no_grad()` and never leaves the device. The hyperparameters' ranges are checked, with
every other setting, by `gdlab.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

#: a hyperparameter: one number (a plain run, or shared by every member), or one per member
Hyper = float | bool | Tensor | None


@dataclass(frozen=True)
class SGDSettings:
    """Hyperparameters of one SGD variant; `clip_norm` None means no gradient clipping."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    clip_norm: float | None = None


def _column(values: Tensor, like: Tensor) -> Tensor:
    """Per-member values shaped (numbers also typed) to broadcast over a parameter [K, ...]."""
    if values.is_floating_point():
        values = values.to(like.dtype)
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def _on(value: Hyper) -> bool:
    """Whether any member may use the feature this value switches (a tensor: some may)."""
    return isinstance(value, Tensor) or bool(value)


def _add_scaled(x: Tensor, y: Tensor, alpha: Hyper) -> Tensor:
    """x + alpha * y, where members with alpha == 0 keep x exactly."""
    if isinstance(alpha, Tensor):
        return torch.where(_column(alpha != 0, x), torch.addcmul(x, y, _column(alpha, x)), x)
    return x.add(y, alpha=alpha)  # type: ignore[arg-type]


def clip_grad_norm(grads: list[Tensor], max_norm: Hyper, members: bool = False) -> list[Tensor]:
    """Gradients scaled so their total 2-norm is at most `max_norm` (per member in a population).

    Same rule as `torch.nn.utils.clip_grad_norm_`, computed on the device without a host sync;
    a plain run's gradients are scaled in place.
    """
    if not members:
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # type: ignore[operator]
        torch._foreach_mul_(grads, scale)
        return grads
    norms = torch.stack(
        [torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads], dim=1
    )
    total = torch.linalg.vector_norm(norms, dim=1)
    # clip_grad_norm_ computes max_norm / (total + 1e-6) as a reciprocal times max_norm.
    limit = max_norm.to(total.dtype) if isinstance(max_norm, Tensor) else max_norm
    scale = torch.clamp((total + 1e-6).reciprocal() * limit, max=1.0)  # type: ignore[operator]
    if isinstance(max_norm, Tensor):  # +inf: this member does not clip
        scale = torch.where(torch.isfinite(limit), scale, torch.ones_like(scale))  # type: ignore[arg-type]
    return [g * _column(scale, g) for g in grads]


def sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: Hyper,
    momentum: Hyper = 0.0,
    dampening: Hyper = 0.0,
    nesterov: Hyper = False,
    weight_decay: Hyper = 0.0,
    clip_norm: Hyper = None,
    members: bool = False,
) -> None:
    """One SGD step in place, torch.optim.SGD's formulas; fills `momentum_buffers` on the
    first step with momentum. `members`: the parameters carry a leading member dimension."""
    if clip_norm is not None:
        grads = clip_grad_norm(grads, clip_norm, members)
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        if _on(weight_decay):
            grad = _add_scaled(grad, param, weight_decay)
        step = grad
        if _on(momentum):
            buf = momentum_buffers[i]
            if buf is None:
                buf = torch.clone(grad).detach()
                momentum_buffers[i] = buf
            elif isinstance(momentum, Tensor):
                buf.mul_(_column(momentum, buf))
                if isinstance(dampening, Tensor):  # 1 - dampening in float64, as a number
                    buf.addcmul_(grad, _column(1.0 - dampening, grad))
                else:
                    buf.add_(grad, alpha=1.0 - dampening)  # type: ignore[operator]
            else:
                buf.mul_(momentum).add_(grad, alpha=1.0 - dampening)  # type: ignore[operator]
            step = buf
            if _on(nesterov):
                ahead = _add_scaled(grad, buf, momentum)
                if isinstance(nesterov, Tensor):
                    step = torch.where(_column(nesterov, grad), ahead, buf)
                else:
                    step = ahead
            if isinstance(momentum, Tensor):  # members without momentum: the plain step
                step = torch.where(_column(momentum != 0, grad), step, grad)
        if isinstance(lr, Tensor):
            param.addcmul_(step, _column(lr, param), value=-1)
        else:
            param.add_(step, alpha=-lr)  # type: ignore[operator]


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
        buffers = [self.momentum_buffers[i] for i in active]
        sgd(
            [params[i] for i in active],
            [params[i].grad for i in active],  # type: ignore[misc]
            buffers,
            lr=lr,
            momentum=s.momentum,
            dampening=s.dampening,
            nesterov=s.nesterov,
            weight_decay=s.weight_decay,
            clip_norm=s.clip_norm,
        )
        for i, buf in zip(active, buffers, strict=True):
            self.momentum_buffers[i] = buf

    def state_dict(self) -> dict[str, Any]:
        return {"momentum_buffers": list(self.momentum_buffers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.momentum_buffers = list(state["momentum_buffers"])
