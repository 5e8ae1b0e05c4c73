"""The rules that judge a run, written once for a plain run and a population alike.

A plain run is the case K = 1: each function here takes numbers (one run) or tensors of
shape [K] (one value per population member) and uses only operators that mean the same for
both, so the two engines cannot drift apart:

- `Status`: how a run (or a member) ended;
- `stop_code` / `stop_reason`: the stop rules checked at log points (diverged, converged);
- `distance_to_minimizer`: the metric reported for objectives with a known minimiser;
- `rank_key`: how sweeps, `gdlab-report`, HParams and population jobs order results;
- `stability_lr`: the largest stable learning rate 2/L where the objective is a quadratic.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


class Status(StrEnum):
    """How a run ended; the value is what metrics.json and the summaries say."""

    RUNNING = "running"  # in a checkpoint taken mid-run
    FINISHED = "finished"  # the step budget was spent
    CONVERGED = "converged"  # the gradient norm fell below trainer.tol
    DIVERGED = "diverged"  # a loss, gradient or parameter blew up
    INTERRUPTED = "interrupted"  # stopped by a signal, resumable (or no result on disk)
    FAILED = "failed"  # raised, or its settings were refused

    @property
    def ranked(self) -> bool:
        """A result that may be compared with others (the others are listed, never ranked)."""
        return self in RANKED


#: statuses that count as a result and may be ranked
RANKED = (Status.FINISHED, Status.CONVERGED)
#: statuses that make a sweep's exit code non-zero (diverging is a result, not a failure)
FAILED = (Status.FAILED, Status.INTERRUPTED)
#: unranked results are listed in this order after the ranked ones
UNRANKED_ORDER = (Status.DIVERGED, Status.INTERRUPTED, Status.FAILED)


# ------------------------------------------------------------------------------ stop rules

GO_ON = 0
LOSS_NOT_FINITE, PARAM_NOT_FINITE, PARAM_TOO_LARGE, GRAD_NOT_FINITE, SMALL_GRADIENT = 1, 2, 3, 4, 5
#: the status each stop code ends a run with
STOP_STATUS = {
    LOSS_NOT_FINITE: Status.DIVERGED,
    PARAM_NOT_FINITE: Status.DIVERGED,
    PARAM_TOO_LARGE: Status.DIVERGED,
    GRAD_NOT_FINITE: Status.DIVERGED,
    SMALL_GRADIENT: Status.CONVERGED,
}


def _not_finite(x: Any) -> Any:
    """NaN or ±inf, for a number or elementwise for a tensor."""
    return (x != x) | (abs(x) == math.inf)


def stop_code(loss: Any, grad_norm: Any, param_norm: Any, tol: float, bound: float) -> Any:
    """The first stop rule that fires (GO_ON = 0 when none), for a run or per member.

    Checked in this order at a log point, before the update: the loss is not finite; a
    parameter is not finite; the largest parameter norm exceeds `bound`; the gradient norm is
    not finite; the gradient norm is below `tol` (converged). Numbers give an int, [K] tensors
    a [K] integer tensor.
    """
    fired = (
        (LOSS_NOT_FINITE, _not_finite(loss)),
        (PARAM_NOT_FINITE, _not_finite(param_norm)),
        (PARAM_TOO_LARGE, param_norm > bound),
        (GRAD_NOT_FINITE, _not_finite(grad_norm)),
        (SMALL_GRADIENT, grad_norm < tol),
    )
    code: Any = GO_ON
    for rule, fires in fired:
        code = code + (code == GO_ON) * fires * rule
    return code


def stop_reason(
    code: int, step: int, loss: float, grad_norm: float, param_norm: float, tol: float, bound: float
) -> str:
    """The one line a stopped run (or member) reports as its `stop_reason`."""
    if code == LOSS_NOT_FINITE:
        return f"loss is {loss} at step {step}"
    if code == PARAM_NOT_FINITE:
        return f"a parameter is not finite at step {step}"
    if code == PARAM_TOO_LARGE:
        return (
            f"parameter norm {param_norm:.3g} exceeds trainer.divergence_bound={bound:g} "
            f"at step {step}"
        )
    if code == GRAD_NOT_FINITE:
        return f"gradient norm is {grad_norm} at step {step}"
    if code == SMALL_GRADIENT:
        return f"gradient norm {grad_norm:.3g} < trainer.tol={tol:g}"
    raise ValueError(f"stop code {code} stops nothing")


def verdict(
    step: int, loss: float, grad_norm: float, param_norm: float, tol: float, bound: float
) -> tuple[Status, str] | None:
    """The stop rules for one run's values: (status, reason), or None to go on."""
    code = stop_code(loss, grad_norm, param_norm, tol, bound)
    if code == GO_ON:
        return None
    return STOP_STATUS[code], stop_reason(code, step, loss, grad_norm, param_norm, tol, bound)


# ------------------------------------------------------------------------------ metrics


def distance_to_minimizer(params: dict[str, Tensor], minimizer: dict[str, Tensor]) -> Tensor:
    """Euclidean distance from each member's parameters to the minimiser: float64 [K].

    `params` carry a leading member dimension (K = 1 for a plain run); squared differences
    are summed per tensor in the parameters' dtype, then across tensors in float64.
    """
    import torch

    first = next(iter(params.values()))
    total = torch.zeros(first.shape[0], dtype=torch.float64, device=first.device)
    with torch.no_grad():
        for name, target in minimizer.items():
            p = params[name]
            squared = (p - target.to(p)) ** 2
            total = total + squared.reshape(p.shape[0], -1).sum(dim=1).double()
    return total.sqrt()


def rank_key(
    status: str,
    final_loss: float | None,
    minimum: float | None,
    distance: float | None,
    steps: int | None,
    order: Any = 0,
) -> tuple[Any, ...]:
    """Sort key, best first: ranked results by excess loss (final loss minus the known
    minimum, or the final loss where it is unknown), then distance to the minimiser, then
    fewer steps; then diverged, interrupted and failed results, in `order` (job order)."""
    if status in RANKED:
        excess = excess_loss(final_loss, minimum)
        excess = math.inf if excess is None or math.isnan(excess) else excess
        dist = math.inf if distance is None or math.isnan(distance) else distance
        return (0, excess, dist, math.inf if steps is None else steps, order)
    place = UNRANKED_ORDER.index(status) if status in UNRANKED_ORDER else 0
    return (1 + place, math.inf, math.inf, math.inf, order)


def excess_loss(final_loss: float | None, minimum: float | None) -> float | None:
    """final loss minus the known minimum (the final loss itself when it is unknown)."""
    if final_loss is None:
        return None
    return final_loss - minimum if minimum is not None else final_loss


def stability_lr(objective: Any, mini_batch: bool) -> float | None:
    """2/L, the largest learning rate at which plain gradient descent converges on a quadratic
    (L the largest Hessian eigenvalue); None where the objective is not a convex quadratic."""
    import torch

    from gdlab.objectives.linear_regression import LinearRegression
    from gdlab.objectives.multivariate import QuadraticForm
    from gdlab.objectives.quadratic import Quadratic

    hessian_max: float | None = None
    if isinstance(objective, Quadratic):
        hessian_max = 2.0 * objective.a if objective.a > 0 else None
    elif isinstance(objective, QuadraticForm):
        hessian_max = objective.lipschitz if objective.positive_definite else None
    elif isinstance(objective, LinearRegression) and not mini_batch:
        # MSE is the quadratic (1/n)|D theta - y|^2 in theta = (w, b), D = [X, 1]: H = 2 D^T D / n
        design = torch.cat([objective.X, torch.ones_like(objective.X[:, :1])], dim=1).double()
        hessian = 2.0 * design.T @ design / design.shape[0]
        hessian_max = float(torch.linalg.eigvalsh(hessian.cpu()).max())
    elif isinstance(getattr(objective, "lipschitz", None), int | float):
        hessian_max = float(objective.lipschitz)  # a plugin that states its curvature bound
    if hessian_max is None or not hessian_max > 0:
        return None
    return 2.0 / hessian_max
