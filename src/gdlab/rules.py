"""The rules that judge a run, written once for a plain run and a population alike.

A plain run is the case K = 1: each function here takes numbers (one run) or tensors of
shape [K] (one value per population member) and uses only operators that mean the same for
both, so the two engines cannot drift apart:

- `Status`: how a run (or a member) ended;
- `stop_code` / `stop_reason`: the stop rules checked at log points (diverged, converged);
- `end_code`: the verdict on a run that spent its budget (its loss rose above the start, or
  grows geometrically: diverged);
- `distance_to_minimizer`, `clamp_excess`: the metrics of objectives with a known optimum;
- `score` / `rank_key`: the one number a run is ranked by (and returns to a sweeper), and how
  sweeps, `gdlab-report`, HParams and population jobs order results with it;
- `curvature` / `lr_limit` / `rule_lr_limit`: the largest stable learning rate of each update
  rule where the objective is a quadratic (2/L for plain SGD), or at the curvature measured
  along the run (gdlab.curvature: the local limit, `stability_constant` for every rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
LOSS_ROSE, LOSS_GROWS = 6, 7  # end verdicts on a run that spent its budget
#: the status each stop code ends a run with
STOP_STATUS = {
    LOSS_NOT_FINITE: Status.DIVERGED,
    PARAM_NOT_FINITE: Status.DIVERGED,
    PARAM_TOO_LARGE: Status.DIVERGED,
    GRAD_NOT_FINITE: Status.DIVERGED,
    SMALL_GRADIENT: Status.CONVERGED,
    LOSS_ROSE: Status.DIVERGED,
    LOSS_GROWS: Status.DIVERGED,
}
#: log points the geometric-growth verdict looks back over
TREND_POINTS = 6
#: machine epsilon by dtype name: the precision of the numbers a run computes with
EPS = {"float32": 2.0**-23, "float64": 2.0**-52}
#: how many units of its precision two losses may differ by and still count as equal
ULPS = 16


def precision(dtype: Any) -> float:
    """Machine epsilon of a run's dtype (a torch dtype or its name)."""
    return EPS[str(dtype).removeprefix("torch.")]


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


def end_code(
    initial: Any,
    history: Sequence[Any],
    eps: float,
    trend: bool = True,
    steps: Sequence[int] | None = None,
) -> Any:
    """The verdict on a run that spent its step budget: LOSS_ROSE when its final loss
    (`history[-1]`, on the full objective) is above its initial loss on the same objective
    beyond the dtype's precision, LOSS_GROWS when its loss rose at each of the last
    `TREND_POINTS` log points (at `steps`) by rises per step growing at least 5% each time
    (geometric growth, as an unstable run's does; per step, because the final point often
    follows the last log point sooner than the log interval), else GO_ON. For numbers or [K]
    tensors.

    A run that starts at the minimum and stays there differs from its start by rounding
    only: never condemned. `trend=False` (mini-batch runs, whose logged losses are noisy
    batch losses) judges on the full objective alone.
    """
    final = history[-1]
    rose = final - initial > ULPS * eps * (abs(initial) + abs(final))
    code: Any = rose * LOSS_ROSE
    if trend and len(history) >= TREND_POINTS:
        last = list(history[-TREND_POINTS:])
        at = list(range(TREND_POINTS))  # evenly spaced, unless the steps are known
        if steps is not None and len(steps) >= TREND_POINTS:
            at = list(steps[-TREND_POINTS:])
        grows: Any = True
        for i in range(TREND_POINTS - 2):
            gap, next_gap = max(at[i + 1] - at[i], 1), max(at[i + 2] - at[i + 1], 1)
            rise, next_rise = last[i + 1] - last[i], last[i + 2] - last[i + 1]
            grows = grows & (rise > ULPS * eps * abs(last[i + 1]))
            grows = grows & (next_rise / next_gap > 1.05 * rise / gap)
        code = code + (code == GO_ON) * grows * LOSS_GROWS
    return code


def end_reason(code: int, initial: float, history: Sequence[float]) -> str:
    """The stop reason of an end verdict."""
    final = history[-1]
    if code == LOSS_ROSE:
        return f"loss rose from {initial:.6g} to {final:.6g}"
    if code == LOSS_GROWS:
        return (
            f"loss grows geometrically: up at each of the last {TREND_POINTS} log points, "
            f"faster each time, to {final:.6g}"
        )
    raise ValueError(f"end code {code} condemns nothing")


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


def clamp_excess(loss64: float | None, minimum: float | None) -> float | None:
    """f(theta) - f*, from the loss evaluated in float64; None where f* is unknown.

    Never negative: a value below 0 by float64 round-off (64 ulps of max(1, |f*|)) is 0. A
    larger negative value means the objective's `minimum` is wrong, and is kept to show it.
    """
    if loss64 is None or minimum is None or not math.isfinite(loss64):
        return None
    excess = loss64 - minimum
    if excess < 0 and -excess <= 64 * EPS["float64"] * max(1.0, abs(minimum)):
        return 0.0
    return excess


def at_minimum(excess: float | None, minimum: float | None, eps: float) -> bool:
    """Whether a run's excess loss agrees with f* to its dtype's precision: 16 units of it,
    relative to max(1, |f*|) (so a float32 run within 2e-6 of f* = 0 is at the minimum, and
    the nearest to the minimiser ranks first)."""
    if excess is None or minimum is None:
        return False
    return excess <= ULPS * eps * max(1.0, abs(minimum))


def score(
    status: str,
    loss64: float | None,
    excess: float | None,
    minimum: float | None,
    distance: float | None,
    steps: int | None,
    eps: float,
) -> float:
    """The one number a run is ranked by, lower is better; what it returns to a sweeper.

    - diverged, interrupted, failed: +inf (never the best);
    - at the minimum to its dtype's precision: d/(1+d) in [0, 1), d its distance to the
      minimiser, so ties at f* go to the nearest run;
    - converged elsewhere: 1 + e/(1+e) in [1, 2), e its excess loss;
    - otherwise 2 + e: a run that neither converged nor reached f* never beats one that did;
    - where f* is unknown: the final loss in float64.

    Values that agree to about 7 significant digits (2^-44 per step) go to the run with
    fewer steps: the score carries that nudge itself, so a sweeper that minimises it (Optuna)
    picks the run gdlab ranks first.
    """
    if status not in RANKED or loss64 is None or not math.isfinite(loss64):
        return math.inf
    nudge = 1.0 + min(steps or 0, 1 << 24) * 2.0**-44  # fewer steps first, among near-ties
    if minimum is None or excess is None:
        return loss64 * nudge if loss64 > 0 else loss64 / nudge
    if at_minimum(excess, minimum, eps):
        if distance is not None and distance > 0:
            return distance / (1.0 + distance) * nudge
        return (steps or 0) * math.ulp(0.0)  # exactly at the minimiser: fewer steps first
    if status == Status.CONVERGED:
        return 1.0 + excess * nudge / (1.0 + excess * nudge)
    return 2.0 + excess * nudge


def rank_key(status: str, run_score: float | None, steps: int | None, order: Any = 0) -> tuple:
    """Sort key, best first: ranked results by score (then fewer steps, then `order`), then
    diverged, interrupted and failed results, in `order` (job order)."""
    if status in RANKED:
        value = math.inf if run_score is None or math.isnan(run_score) else run_score
        return (0, value, math.inf if steps is None else steps, order)
    place = UNRANKED_ORDER.index(status) if status in UNRANKED_ORDER else 0
    return (1 + place, math.inf, math.inf, order)


def curvature(objective: Any, mini_batch: bool) -> float | None:
    """L, the largest eigenvalue of the Hessian, where it is the same everywhere (a convex
    quadratic: the 1-D quadratic, a positive definite quadratic form, the full-batch
    regression) or the objective states it (`lipschitz`); else None."""

    from gdlab.objectives.linear_regression import LinearRegression
    from gdlab.objectives.multivariate import QuadraticForm
    from gdlab.objectives.quadratic import Quadratic

    hessian_max: float | None = None
    if isinstance(objective, Quadratic):
        hessian_max = 2.0 * objective.a if objective.a > 0 else None
    elif isinstance(objective, QuadraticForm):
        hessian_max = objective.lipschitz if objective.positive_definite else None
    elif isinstance(objective, LinearRegression) and not mini_batch:
        # MSE is the quadratic (1/n)|D theta - y|^2 in theta = (w, b), D = [X, 1]: H = 2 D^T D / n,
        # from the normal equations its setup solved (row chunks, no float64 copy of X)
        hessian_max = objective.hessian_max
    elif isinstance(getattr(objective, "lipschitz", None), int | float):
        hessian_max = float(objective.lipschitz)  # a plugin that states its curvature bound
    if hessian_max is None or not hessian_max > 0:
        return None
    return hessian_max


def stability_constant(rule: str, hyper: dict[str, Any]) -> tuple[float, float] | None:
    """(c, shift): the update rule `rule` is stable on a quadratic with curvature `lam` along
    an eigendirection exactly when lr (lam + shift) < c, so its largest stable lr is
    c / (lam + shift). None where no linear analysis applies (gradient clipping bounds the
    steps; a momentum buffer that never moves).

    - SGD, x' = x - lr L x: c = 2; weight decay adds to the curvature (shift = weight_decay);
    - heavy ball, v' = m v + (1-d) L x, x' = x - lr v': the characteristic polynomial
      z^2 - (1 + m - lr (1-d) L) z + m has its roots inside the unit circle iff
      lr (1-d) L < 2 (1 + m): c = 2(1+m)/(1-d);
    - Nesterov, v' = m v + g, x' = x - lr (g + m v'): z^2 - (1+m)(1 - a) z + m (1 - a)
      with a = lr L, stable iff (a - 1)(1 + 2m) < 1: c = 2(1+m)/(1+2m);
    - the adaptive rules, with their preconditioner P frozen (Cohen et al. 2022): `lam` is
      the preconditioned sharpness, the largest eigenvalue of P^-1 H (their coupled weight
      decay inside H), and the rule is the heavy ball above on it: Adam and AdamW's first
      moment is momentum beta1 with dampening beta1, c = (2 + 2 beta1)/(1 - beta1) (38 at
      beta1 = 0.9); RMSprop's momentum m gives c = 2(1+m); Adagrad c = 2 (its lr_decay is
      part of P). AdamW's decoupled decay (x *= 1 - lr wd) is left out.
    """
    if hyper.get("clip_norm") is not None:
        return None
    if rule in ("adam", "adamw"):
        beta1 = float(hyper.get("beta1", 0.9))
        return (2.0 + 2.0 * beta1) / (1.0 - beta1), 0.0
    if rule == "rmsprop":
        return 2.0 * (1.0 + float(hyper.get("momentum", 0.0))), 0.0
    if rule == "adagrad":
        return 2.0, 0.0
    momentum = float(hyper.get("momentum", 0.0))
    dampening = float(hyper.get("dampening", 0.0))
    shift = float(hyper.get("weight_decay", 0.0))
    if momentum == 0:
        return 2.0, shift
    if hyper.get("nesterov", False):
        return 2.0 * (1.0 + momentum) / (1.0 + 2.0 * momentum), shift
    if dampening >= 1.0:
        return None  # the momentum buffer never moves: no step at all
    return 2.0 * (1.0 + momentum) / (1.0 - dampening), shift


def lr_limit(
    L: float | None,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
) -> float | None:
    """The largest stable lr of SGD on a quadratic with largest curvature L (see
    `stability_constant`): 2/L, 2(1+m)/((1-d) L) with heavy ball, 2(1+m)/((1+2m) L) with
    Nesterov, L + weight_decay in place of L. None where L is unknown, and with clipping."""
    hyper = {
        "momentum": momentum,
        "dampening": dampening,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
        "clip_norm": clip_norm,
    }
    return limit_at(stability_constant("sgd", hyper), L)


def limit_at(constant: tuple[float, float] | None, curvature: float | None) -> float | None:
    """c / (curvature + shift), the largest stable lr at `curvature` for a rule's
    `stability_constant`; None without a constant or a curvature, or where curvature + shift
    is not positive (no step size is unstable there)."""
    if constant is None or curvature is None:
        return None
    c, shift = constant
    return c / (curvature + shift) if curvature + shift > 0 else None


def threshold_at(constant: tuple[float, float] | None, lr: float) -> float | None:
    """c / lr - shift: the curvature at which `lr` is the edge of stability (2/lr for plain
    SGD); None without a constant."""
    if constant is None:
        return None
    c, shift = constant
    return c / lr - shift


#: the hyperparameters SGD's stability limit depends on
LIMIT_ARGUMENTS = ("momentum", "dampening", "nesterov", "weight_decay", "clip_norm")
#: ... and every rule's (`stability_constant`)
STABILITY_ARGUMENTS = (*LIMIT_ARGUMENTS, "beta1")


def rule_lr_limit(
    rule: str, L: float | None, hyper: dict[str, Any], preconditioned: bool = False
) -> float | None:
    """`lr_limit` for the update rule `rule` with hyperparameters `hyper` (by name). SGD's
    needs L, the largest curvature; an adaptive rule's needs its preconditioned sharpness
    (`preconditioned=True`: L is the largest eigenvalue of P^-1 H, measured by
    gdlab.curvature), else it has none (None)."""
    if rule != "sgd" and not preconditioned:
        return None
    return limit_at(stability_constant(rule, hyper), L)


def edge_threshold(rule: str, lr: float, hyper: dict[str, Any]) -> float | None:
    """The sharpness at which lr is the edge of stability (lr = lr_limit): 2/lr for plain
    SGD, 38/lr for Adam at beta1 = 0.9; None where the rule has no limit."""
    return threshold_at(stability_constant(rule, hyper), lr)
