"""Gradient checks for an objective: autograd against its analytic `grad` and finite differences.

For each point and each parameter, three gradients of the same loss are compared in float64:
autograd's (`loss.backward()`), the objective's own `grad(params)` when it has one, and
central finite differences, the last through `torch.autograd.gradcheck` (which perturbs one
number at a time by `fd_eps` and compares with autograd under `fd_rtol`/`fd_atol`). The
largest difference of each pair is kept for the table that `gdlab-check` prints.

Gradients are compared only where they mean something: at a point where the loss itself is
NaN or infinite nothing is compared (the row says so, `loss_finite`); where autograd's
gradient is not finite, or the loss a finite-difference step away (`fd_eps`) is not, the row
says that (`grad_finite`, `fd_finite`) rather than a difference of NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from gdlab.errors import GdlabError
from gdlab.objectives.base import Objective, Params


@dataclass(frozen=True)
class Tolerances:
    rtol: float = 1e-6  # analytic grad vs autograd
    atol: float = 1e-8
    fd_eps: float = 1e-6  # finite differences (torch.autograd.gradcheck)
    fd_rtol: float = 1e-3
    fd_atol: float = 1e-5


@dataclass(frozen=True)
class Row:
    """The comparison for one parameter at one point."""

    point: str
    parameter: str
    value: Tensor  # the parameter at this point (CPU, float64)
    loss: float
    analytic_diff: float | None  # max |autograd - analytic|; None without an analytic grad
    analytic_ok: bool | None
    fd_diff: float  # max |autograd - central differences|
    fd_ok: bool  # torch.autograd.gradcheck's verdict
    analytic_note: str = ""  # why the analytic grad could not be compared, if it could not
    grad_finite: bool = True  # autograd's gradient has no NaN or infinity
    fd_finite: bool = True  # the loss is finite at the points finite differences evaluate

    @property
    def loss_finite(self) -> bool:
        """False where the loss is NaN or infinite: then no gradient was compared."""
        return math.isfinite(self.loss)

    @property
    def ok(self) -> bool:
        return self.loss_finite and self.fd_ok and self.analytic_ok is not False


def random_points(start: Params, count: int, seed: int, scale: float) -> dict[str, Params]:
    """The start and `count` seeded points around it: start + scale * N(0, 1), elementwise."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    points = {"start": {k: v.detach().clone() for k, v in start.items()}}
    for i in range(1, count + 1):
        points[f"random {i}"] = {
            k: v.detach()
            + scale * torch.randn(v.shape, generator=generator, dtype=v.dtype).to(device=v.device)
            for k, v in start.items()
        }
    return points


def central_differences(objective: Objective, params: Params, name: str, eps: float) -> Tensor:
    """d loss / d params[name] by (f(x + eps) - f(x - eps)) / 2 eps, one number at a time."""
    base = params[name].detach()
    flat = base.reshape(-1)
    out = torch.empty_like(flat)
    with torch.no_grad():
        for i in range(flat.numel()):
            values = []
            for sign in (1.0, -1.0):
                moved = flat.clone()
                moved[i] += sign * eps
                values.append(objective.loss({**params, name: moved.reshape(base.shape)}))
            out[i] = (values[0] - values[1]) / (2.0 * eps)
    return out.reshape(base.shape)


def autograd_grads(objective: Objective, params: Params) -> tuple[float, Params]:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    loss = objective.loss(leaves)
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
    return float(loss.detach()), {
        k: torch.zeros_like(leaves[k]) if g is None else g
        for k, g in zip(names, grads, strict=True)
    }


def analytic_grads(objective: Objective, params: Params) -> Mapping[str, Tensor] | None:
    grad = getattr(objective, "grad", None)
    if grad is None:
        return None
    with torch.no_grad():
        result = grad({k: v.detach() for k, v in params.items()})
    if not isinstance(result, Mapping):
        raise GdlabError(f"grad(params) must return a dict of tensors; it returned {result!r:.60}")
    return result


def passes_gradcheck(objective: Objective, params: Params, name: str, tol: Tolerances) -> bool:
    """torch.autograd.gradcheck on the loss as a function of one parameter, the rest fixed."""
    fixed = {k: v.detach() for k, v in params.items()}

    def loss_of(x: Tensor) -> Tensor:
        return objective.loss({**fixed, name: x})

    x = fixed[name].clone().requires_grad_(True)
    return bool(
        torch.autograd.gradcheck(
            loss_of,
            (x,),
            eps=tol.fd_eps,
            atol=tol.fd_atol,
            rtol=tol.fd_rtol,
            raise_exception=False,
        )
    )


def max_abs(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def check_point(objective: Objective, point: str, params: Params, tol: Tolerances) -> list[Row]:
    """Compare the three gradients for every parameter at one point."""
    loss, auto = autograd_grads(objective, params)
    if not math.isfinite(loss):  # no gradient of a NaN or infinite loss means anything
        return [
            Row(point, name, value.detach().cpu(), loss, None, None, math.nan, False)
            for name, value in params.items()
        ]
    analytic = analytic_grads(objective, params)
    rows = []
    for name, value in params.items():
        a_diff: float | None = None
        a_ok: bool | None = None
        note = ""
        if analytic is not None:
            given = analytic.get(name)
            if not isinstance(given, Tensor):
                a_ok, note = False, f"grad() returned no tensor for {name!r}"
            elif given.shape != auto[name].shape:
                a_ok = False
                note = f"grad() has shape {tuple(given.shape)}, the parameter {tuple(value.shape)}"
            else:
                given = given.to(auto[name])
                a_diff = max_abs(given, auto[name])
                a_ok = bool(torch.allclose(given, auto[name], rtol=tol.rtol, atol=tol.atol))
        fd = central_differences(objective, params, name, tol.fd_eps)
        rows.append(
            Row(
                point=point,
                parameter=name,
                value=value.detach().cpu(),
                loss=loss,
                analytic_diff=a_diff,
                analytic_ok=a_ok,
                fd_diff=max_abs(fd, auto[name]),
                fd_finite=bool(torch.isfinite(fd).all()),
                fd_ok=passes_gradcheck(objective, params, name, tol),
                analytic_note=note,
                grad_finite=bool(torch.isfinite(auto[name]).all()),
            )
        )
    return rows


def check_objective(
    objective: Objective, points: dict[str, Params], tol: Tolerances = Tolerances()
) -> list[Row]:
    """Every row of the check, point by point; the objective must be set up in float64."""
    rows: list[Row] = []
    for point, params in points.items():
        rows += check_point(objective, point, params, tol)
    return rows
