"""Update rules as functions over tensors, plus a small object that holds their state.

The split follows `torch/optim/sgd.py`: one function per rule is the functional core, with
the same formulas and order as torch.optim's single-tensor code: `sgd` (weight decay,
heavy-ball momentum, Nesterov), `adam` (Adam, and AdamW with `decoupled=True`), `rmsprop`,
`adagrad`; gradient clipping applies to every rule. `UpdateRule` keeps a rule's state (its
buffers, created at the first step, and the step count) between the steps of a run. The
updates happen in place under `torch.no_grad()`, as the tutorial writes them; no torch.optim
object is involved.

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

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

#: a hyperparameter: one number (a plain run, or shared by every member), or one per member
Hyper = float | bool | Tensor | None


@dataclass(frozen=True)
class SGDSettings:
    """Hyperparameters of one SGD variant; `clip_norm` None means no gradient clipping."""

    rule: ClassVar[str] = "sgd"
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    clip_norm: float | None = None


@dataclass(frozen=True)
class AdamSettings:
    """Adam's hyperparameters (torch.optim.Adam's, with `betas` split in two)."""

    rule: ClassVar[str] = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    clip_norm: float | None = None


@dataclass(frozen=True)
class AdamWSettings(AdamSettings):
    """AdamW: Adam with decoupled weight decay (torch.optim.AdamW's defaults)."""

    rule: ClassVar[str] = "adamw"
    weight_decay: float = 1e-2


@dataclass(frozen=True)
class RMSpropSettings:
    rule: ClassVar[str] = "rmsprop"
    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False
    clip_norm: float | None = None


@dataclass(frozen=True)
class AdagradSettings:
    rule: ClassVar[str] = "adagrad"
    lr: float = 1e-2
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    eps: float = 1e-10
    initial_accumulator_value: float = 0.0
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
    state: dict[str, Any],
    *,
    lr: Hyper,
    momentum: Hyper = 0.0,
    dampening: Hyper = 0.0,
    nesterov: Hyper = False,
    weight_decay: Hyper = 0.0,
    clip_norm: Hyper = None,
    members: bool = False,
) -> None:
    """One SGD step in place, torch.optim.SGD's formulas; creates the momentum buffers
    (`state["momentum_buffer"]`) at the first step with momentum. `members`: the parameters
    carry a leading member dimension."""
    momentum_buffers = state.setdefault("momentum_buffer", [None] * len(params))
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


def _scale(value: Hyper, like: Tensor) -> Any:
    """A hyperparameter (or an expression of it) as a number or a per-member column."""
    return _column(value, like) if isinstance(value, Tensor) else value


def _new_buffers(state: dict[str, Any], name: str, params: list[Tensor], fill: Hyper = 0.0):
    """state[name]: one buffer per parameter, created when first needed (filled with `fill`,
    a number or a per-member tensor); also for a parameter whose first gradient comes late."""
    buffers = state.setdefault(name, [None] * len(params))
    for i, p in enumerate(params):
        if buffers[i] is None:
            buffers[i] = torch.zeros_like(p) + _scale(fill, p) if _on(fill) else torch.zeros_like(p)
    return buffers


def _addcmul_(target: Tensor, a: Tensor, b: Tensor, value: Any) -> None:
    """target += value * a * b, for a number or a per-member column `value`."""
    if isinstance(value, Tensor):
        target.add_(value * a * b)
    else:
        target.addcmul_(a, b, value=value)


def _addcdiv_(target: Tensor, a: Tensor, b: Tensor, value: Any) -> None:
    """target += value * a / b, for a number or a per-member column `value`."""
    if isinstance(value, Tensor):
        target.add_(value * a / b)
    else:
        target.addcdiv_(a, b, value=value)


def adam(
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, Any],
    *,
    lr: Hyper,
    beta1: Hyper = 0.9,
    beta2: Hyper = 0.999,
    eps: Hyper = 1e-8,
    weight_decay: Hyper = 0.0,
    amsgrad: bool = False,
    clip_norm: Hyper = None,
    decoupled: bool = False,
    members: bool = False,
) -> None:
    """One Adam (AdamW with `decoupled`) step in place, torch.optim.Adam's formulas; creates
    the moment buffers at the first step. `state["step"]` counts the steps taken."""
    if clip_norm is not None:
        grads = clip_grad_norm(grads, clip_norm, members)
    exp_avgs = _new_buffers(state, "exp_avg", params)
    exp_avg_sqs = _new_buffers(state, "exp_avg_sq", params)
    max_sqs = _new_buffers(state, "max_exp_avg_sq", params) if amsgrad else None
    state["step"] = step = state.get("step", 0) + 1
    # per-call coefficients: numbers, or per-member tensors shaped for each parameter below
    keep1, keep2 = 1 - beta1, 1 - beta2  # type: ignore[operator]
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5  # type: ignore[operator]
    neg_step_size = -(lr / (1 - beta1**step))  # type: ignore[operator]
    decay = 1 - lr * weight_decay if decoupled and _on(weight_decay) else None  # type: ignore[operator]
    coefficients = (keep1, beta2, keep2, bias_correction2_sqrt, eps, neg_step_size, decay)
    coupled_decay = decay is None and _on(weight_decay)
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        w1, b2, w2, root, e, size, shrink = (
            [_scale(c, param) for c in coefficients] if members else coefficients
        )
        if shrink is not None:
            param.mul_(shrink)  # AdamW: decoupled decay, param *= 1 - lr * weight_decay
        elif coupled_decay:
            grad = _add_scaled(grad, param, weight_decay)
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        exp_avg.lerp_(grad, w1)
        exp_avg_sq.mul_(b2)
        _addcmul_(exp_avg_sq, grad, grad, w2)
        second = exp_avg_sq
        if max_sqs is not None:
            torch.maximum(max_sqs[i], exp_avg_sq, out=max_sqs[i])
            second = max_sqs[i]
        denom = (second.sqrt() / root).add_(e)
        _addcdiv_(param, exp_avg, denom, size)


def adamw(params: list[Tensor], grads: list[Tensor], state: dict[str, Any], **hyper: Any) -> None:
    """AdamW: `adam` with decoupled weight decay (param *= 1 - lr * weight_decay)."""
    adam(params, grads, state, decoupled=True, **hyper)


def rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, Any],
    *,
    lr: Hyper,
    alpha: Hyper = 0.99,
    eps: Hyper = 1e-8,
    weight_decay: Hyper = 0.0,
    momentum: Hyper = 0.0,
    centered: bool = False,
    clip_norm: Hyper = None,
    members: bool = False,
) -> None:
    """One RMSprop step in place, torch.optim.RMSprop's formulas."""
    if clip_norm is not None:
        grads = clip_grad_norm(grads, clip_norm, members)
    square_avgs = _new_buffers(state, "square_avg", params)
    grad_avgs = _new_buffers(state, "grad_avg", params) if centered else None
    buffers = _new_buffers(state, "momentum_buffer", params) if _on(momentum) else None
    state["step"] = state.get("step", 0) + 1
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        if _on(weight_decay):
            grad = _add_scaled(grad, param, weight_decay)
        square_avg = square_avgs[i]
        square_avg.mul_(_scale(alpha, grad))
        _addcmul_(square_avg, grad, grad, _scale(1 - alpha, grad))  # type: ignore[operator]
        if grad_avgs is not None:
            grad_avgs[i].lerp_(grad, _scale(1 - alpha, grad))  # type: ignore[operator]
            avg = square_avg.addcmul(grad_avgs[i], grad_avgs[i], value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(_scale(eps, grad))
        if buffers is None:
            _addcdiv_(param, grad, avg, _scale(-lr, param))  # type: ignore[operator]
            continue
        buf = buffers[i]
        buf.mul_(_scale(momentum, buf)).addcdiv_(grad, avg)
        if isinstance(momentum, Tensor):  # members without momentum: the plain step
            direct = grad / avg
            buf.copy_(torch.where(_column(momentum != 0, buf), buf, direct))
        if isinstance(lr, Tensor):
            param.addcmul_(buf, _column(lr, param), value=-1)
        else:
            param.add_(buf, alpha=-lr)


def adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, Any],
    *,
    lr: Hyper,
    lr_decay: Hyper = 0.0,
    weight_decay: Hyper = 0.0,
    eps: Hyper = 1e-10,
    initial_accumulator_value: Hyper = 0.0,
    clip_norm: Hyper = None,
    members: bool = False,
) -> None:
    """One Adagrad step in place, torch.optim.Adagrad's formulas."""
    if clip_norm is not None:
        grads = clip_grad_norm(grads, clip_norm, members)
    state_sums = _new_buffers(state, "sum", params, initial_accumulator_value)
    state["step"] = step = state.get("step", 0) + 1
    clr = lr / (1 + (step - 1) * lr_decay)  # type: ignore[operator]
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        if _on(weight_decay):
            grad = _add_scaled(grad, param, weight_decay)
        state_sums[i].addcmul_(grad, grad, value=1)
        std = state_sums[i].sqrt().add_(_scale(eps, grad))
        _addcdiv_(param, grad, std, _scale(-clr, param))


def preconditioner(
    rule: str, state: dict[str, Any], params: list[Tensor], **hyper: Any
) -> list[Tensor] | None:
    """P, the per-coordinate denominators the adaptive rule `rule` divides its next step by,
    from its state (one tensor per parameter, None for a rule without one, or before the
    first step created the state). The local stability limit of an adaptive rule is judged
    on the sharpness of P^-1 H (gdlab.curvature):

    - Adam, AdamW: sqrt(v / (1 - beta2^t)) + eps (the largest v with amsgrad);
    - RMSprop: sqrt(v) + eps (sqrt(v - mean(g)^2) + eps when centered);
    - Adagrad: (sqrt(sum) + eps) (1 + t lr_decay): its lr decay as part of P.

    A parameter without state (no gradient yet) gets 1.
    """
    if rule == "sgd" or not state:
        return None
    step = state.get("step", 0)

    def each(name: str) -> list[Tensor | None]:
        return list(state.get(name) or [None] * len(params))

    out: list[Tensor] = []
    if rule in ("adam", "adamw"):
        seconds = each("max_exp_avg_sq" if hyper.get("amsgrad") else "exp_avg_sq")
        root = (1 - hyper["beta2"] ** step) ** 0.5
        for p, v in zip(params, seconds, strict=True):
            out.append(
                torch.ones_like(p)
                if v is None
                else v.sqrt() / _scale(root, p) + _scale(hyper["eps"], p)
            )
    elif rule == "rmsprop":
        means = each("grad_avg") if hyper.get("centered") else [None] * len(params)
        for p, v, g in zip(params, each("square_avg"), means, strict=True):
            if v is None:
                out.append(torch.ones_like(p))
                continue
            second = v if g is None else v - g * g
            out.append(second.sqrt() + _scale(hyper["eps"], p))
    elif rule == "adagrad":
        decay = 1 + step * hyper.get("lr_decay", 0.0)
        for p, total in zip(params, each("sum"), strict=True):
            if total is None:
                out.append(torch.ones_like(p))
                continue
            out.append((total.sqrt() + _scale(hyper["eps"], p)) * _scale(decay, p))
    else:
        raise ValueError(f"unknown update rule {rule!r}")
    return out


#: update rule name -> (functional core, settings class)
RULES: dict[str, tuple[Callable[..., None], type]] = {
    "sgd": (sgd, SGDSettings),
    "adam": (adam, AdamSettings),
    "adamw": (adamw, AdamWSettings),
    "rmsprop": (rmsprop, RMSpropSettings),
    "adagrad": (adagrad, AdagradSettings),
}


def settings_for(rule: str, values: dict[str, Any]) -> Any:
    """The settings object of `rule` from hyperparameters by name (extra names ignored)."""
    cls = RULES[rule][1]
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


class UpdateRule:
    """An update rule with its state: call `step(params, lr)` after `backward()`, under
    `no_grad`. `settings` is one of the settings classes above (its `rule` names the rule).

    Parameters whose `.grad` is None are skipped, as torch.optim does.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.update = RULES[settings.rule][0]
        self.hyper = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name != "lr"}
        #: per-parameter buffers by name (lists aligned with the parameters) and the step count
        self.state: dict[str, Any] = {}
        plain = settings.rule == "sgd" and settings.momentum == 0.0
        plain = plain and settings.weight_decay == 0.0 and settings.clip_norm is None
        # The tutorial's p -= lr * p.grad as one fused call per parameter: the common case
        # gets no Python beyond it (this runs every step).
        self.step = self._plain_step if plain else self._step

    @staticmethod
    def _plain_step(params: list[Tensor], lr: float) -> None:
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)

    def _step(self, params: list[Tensor], lr: float) -> None:
        grads = [p.grad for p in params]
        active = [i for i, g in enumerate(grads) if g is not None]
        if len(active) == len(params):  # the common case: every parameter is used
            self.update(params, grads, self.state, lr=lr, **self.hyper)
            return
        # a parameter without gradient is left alone, its buffers too
        sub = {k: v if not isinstance(v, list) else [v[i] for i in active]
               for k, v in self.state.items()}  # fmt: skip
        self.update([params[i] for i in active], [params[i].grad for i in active], sub,
                    lr=lr, **self.hyper)  # fmt: skip
        for key, value in sub.items():
            if isinstance(value, list):
                full = self.state.get(key) or [None] * len(params)
                for i, buf in zip(active, value, strict=True):
                    full[i] = buf
                self.state[key] = full
            else:
                self.state[key] = value

    def state_dict(self) -> dict[str, Any]:
        return {"rule": self.settings.rule, "state": dict(self.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint's rule state; one written before the other rules existed holds only
        SGD's `momentum_buffers`."""
        if "state" in state:
            if state.get("rule", "sgd") != self.settings.rule:
                raise ValueError(
                    f"it holds the state of optimizer={state.get('rule')}, "
                    f"not of optimizer={self.settings.rule}"
                )
            self.state = dict(state["state"])
        else:
            buffers = list(state.get("momentum_buffers") or [])
            self.state = {"momentum_buffer": buffers} if any(b is not None for b in buffers) else {}
