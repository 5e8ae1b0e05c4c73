"""Sharpness: the extreme eigenvalues of the loss's Hessian along a run, and the local lr limit.

On a quadratic the curvature never changes and `gdlab.rules.curvature` knows it. Everywhere
else it moves with the run, and the largest eigenvalue of the Hessian at the current
parameters, the sharpness lambda_max, decides which learning rates are stable there
(Cohen et al., ICLR 2021: under full-batch gradient descent it rises until it reaches 2/lr,
then hovers there). This module measures it for one run or for K population members at once:

- `HessianOperator`: v -> H v by double backward through the objective's own `loss`
  (`torch.autograd.grad(..., create_graph=True)`, then one more backward per product). The
  summed loss of K members has a block-diagonal Hessian, so one product serves all K;
- `dense_extremes`: small problems form H (P products, batched) and call `eigvalsh` in
  float64: exact to rounding;
- `lanczos`: larger ones run Lanczos with full reorthogonalisation, warm-started from the
  previous extreme eigenvectors, until the top Ritz pair's residual is below `tol` times the
  spectrum's scale (the bottom one's below BOTTOM x tol x the scale) (not power iteration: at
  a saddle it would find the negative eigenvalue of largest magnitude, not lambda_max);
- `Sharpness`: when to measure (`sharpness.every`), and the local limit of the run's own
  update rule (`gdlab.rules.stability_constant`): SGD's on lambda_max, the adaptive rules' on
  the preconditioned sharpness lambda_max(P^-1 H), P from the rule's state
  (`gdlab.optim.preconditioner`).

A measurement never changes the run: it reads the parameters, builds its own graph, never
touches `.grad`, and draws its random start vectors from its own generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gdlab.errors import GdlabError
from gdlab.optim import preconditioner
from gdlab.rules import STABILITY_ARGUMENTS, limit_at, stability_constant, threshold_at

#: K members' losses [K] from parameters with a leading member dimension (with their graph)
LossesFn = Callable[[dict[str, Tensor]], Tensor]
#: dense Hessians are formed this many columns at a time
DENSE_BLOCK = 256
#: ... and only while K * P * P float64 numbers stay below this (else Lanczos)
DENSE_ELEMENTS = 1 << 25
#: Lanczos converges lambda_min to BOTTOM x tol x |lambda_max|: the bottom of a network's
#: spectrum is a cluster near 0 that takes 4x the products lambda_max needs to resolve
BOTTOM = 10
#: a warm start is the last extreme Ritz vectors plus this much of a random unit vector
WARM_NOISE = 0.1
#: Lanczos runs at least this many iterations: at the edge of stability several eigenvalues
#: hover near 2/lr and trade places, and a warm start's residual is small long before a new
#: top eigenvalue shows in the Krylov space (bench_sharpness measures the error)
MIN_ITERATIONS = 10


@dataclass(frozen=True)
class SharpnessSettings:
    """The `sharpness.*` config keys (gdlab.settings)."""

    every: int = 0  # 0: off; N: at step 0, every N steps and at the end
    tol: float = 1e-3  # Lanczos: residuals below tol x the spectrum's scale
    dense_max: int = 2000  # at most this many parameter numbers: the dense Hessian
    max_iter: int = 100  # Lanczos iterations at most


class HessianOperator:
    """v -> H v for K members' flattened parameters [K, P], from one graph.

    `losses(leaves)` gives each member's loss; its gradient is taken once with
    `create_graph=True`, and each product is a backward of <grad, v> through that graph.
    `scale` (D, [K, P]) and `shift` ([K] or a number) turn it into v -> D (H + shift) D v,
    the preconditioned Hessian P^-1/2 (H + wd) P^-1/2 of an adaptive rule (the same
    eigenvalues as P^-1 (H + wd), and symmetric).
    """

    def __init__(self, losses: LossesFn, params: Mapping[str, Tensor], name: str = "") -> None:
        self.name = name or "the objective"
        self.leaves = [v.detach().requires_grad_(True) for v in params.values()]
        self.count = self.leaves[0].shape[0]
        with torch.enable_grad():
            values = losses(dict(zip(params, self.leaves, strict=True)))
            self.loss = values.detach()
            grads = torch.autograd.grad(
                values.sum(), self.leaves, create_graph=True, allow_unused=True
            )
        self.grad = torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).reshape(self.count, -1)
                for p, g in zip(self.leaves, grads, strict=True)
            ],
            dim=1,
        )
        self.size = self.grad.shape[1]
        if not self.grad.requires_grad:
            # autograd can't differentiate the gradient: a custom Function's backward marked
            # once_differentiable or computed without autograd, a detach, or a loss linear in
            # every parameter (whose Hessian would be 0, but gdlab can't tell the two apart)
            raise GdlabError(
                f"sharpness: {self.name} has no second derivatives (autograd can't "
                "differentiate its gradient); set sharpness.every=0"
            )
        self.products = 0
        self.scale: Tensor | None = None
        self.shift: Tensor | float = 0.0

    def preconditioned(self, scale: Tensor | None, shift: Tensor | float = 0.0) -> HessianOperator:
        """This operator as v -> D (H + shift) D v (the same graph)."""
        twin = object.__new__(HessianOperator)
        twin.__dict__.update(self.__dict__)
        twin.scale, twin.shift = scale, shift
        return twin

    def _products(self, vectors: Tensor, batched: bool) -> Tensor:
        """H v for v [K, P] (or [m, K, P] with `batched`)."""
        try:
            parts = torch.autograd.grad(
                self.grad,
                self.leaves,
                grad_outputs=vectors.to(self.grad.dtype),
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=batched,
            )
        except RuntimeError as err:
            if batched:
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise GdlabError(
                f"sharpness: {self.name} has no second derivatives ({first[:160]}); "
                "set sharpness.every=0"
            ) from None
        lead = vectors.shape[:-1]
        return torch.cat(
            [
                (torch.zeros_like(p).expand(*lead[:-1], *p.shape) if g is None else g).reshape(
                    *lead, -1
                )
                for p, g in zip(self.leaves, parts, strict=True)
            ],
            dim=-1,
        )

    def __call__(self, vectors: Tensor) -> Tensor:
        """H v for each member's v: [K, P] -> [K, P]."""
        self.products += 1
        if self.scale is None:
            return self._plain(vectors)
        scaled = vectors * self.scale
        return (self._plain(scaled) + _column(self.shift, scaled) * scaled) * self.scale

    def _plain(self, vectors: Tensor) -> Tensor:
        return self._products(vectors, batched=False)

    def columns(self, vectors: Tensor) -> Tensor:
        """H v for m vectors per member at once, [m, K, P] -> [m, K, P] (autograd's batched
        backward; a loss it can't batch falls back to one product at a time)."""
        if self.scale is not None:
            return torch.stack([self(v) for v in vectors])
        self.products += vectors.shape[0]
        try:
            return self._products(vectors, batched=True)
        except RuntimeError:
            return torch.stack([self._plain(v) for v in vectors])


def _column(value: Tensor | float, like: Tensor) -> Tensor | float:
    """A per-member value [K] shaped to broadcast over [K, P]."""
    return value.to(like.dtype).reshape(-1, 1) if isinstance(value, Tensor) else value


@dataclass
class Extremes:
    """The extreme eigenvalues of each member's Hessian, and how they were found."""

    lambda_max: Tensor  # float64 [K]
    lambda_min: Tensor  # float64 [K]
    vector: Tensor | None  # [K, P] Lanczos: top + bottom Ritz vectors, the next warm start
    method: str  # "dense" or "lanczos"


def dense_extremes(op: HessianOperator) -> Extremes:
    """Form each member's Hessian (P products, DENSE_BLOCK columns at a time) and take its
    eigenvalues in float64: exact up to rounding."""
    count, size = op.count, op.size
    device = op.grad.device
    hessian = torch.empty(count, size, size, dtype=torch.float64, device=device)
    for start in range(0, size, DENSE_BLOCK):
        stop = min(size, start + DENSE_BLOCK)
        basis = torch.zeros(stop - start, count, size, dtype=op.grad.dtype, device=device)
        basis[torch.arange(stop - start), :, torch.arange(start, stop)] = 1.0
        hessian[:, start:stop, :] = op.columns(basis).transpose(0, 1).double()
    hessian = (hessian + hessian.transpose(1, 2)) / 2  # rounding makes it barely asymmetric
    finite = hessian.isfinite().all(dim=2).all(dim=1)
    top = torch.full((count,), math.nan, dtype=torch.float64, device=device)
    bottom = top.clone()
    if bool(finite.any()):
        values = torch.linalg.eigvalsh(hessian[finite])
        top[finite], bottom[finite] = values[:, -1], values[:, 0]
    return Extremes(top, bottom, None, "dense")


def lanczos(op: HessianOperator, start: Tensor, tol: float, max_iter: int) -> Extremes:
    """Lanczos on each member's Hessian at once, from `start` [K, P].

    Full reorthogonalisation (twice, against every earlier vector) keeps the basis
    orthogonal in float32. A member is done when the error bound of the top Ritz value
    (`error_bound`: its residual |beta_j s_j|, or residual^2 / gap) is below `tol` x
    max|theta| and the bottom one's below BOTTOM x tol x max|theta|, or when its Krylov space is
    exhausted; its values are kept from then on. The vector returned for the next warm start
    is the sum of both extreme Ritz vectors.
    """
    count, size = start.shape
    device, dtype = start.device, op.grad.dtype
    steps = max(1, min(max_iter, size))
    basis = torch.zeros(steps, count, size, dtype=dtype, device=device)
    alphas = torch.zeros(count, steps, dtype=torch.float64, device=device)
    betas = torch.zeros(count, steps, dtype=torch.float64, device=device)
    lam_max = torch.full((count,), math.nan, dtype=torch.float64, device=device)
    lam_min = torch.full_like(lam_max, math.nan)
    top = torch.zeros(count, size, dtype=dtype, device=device)
    done = torch.zeros(count, dtype=torch.bool, device=device)
    q = start.to(dtype)
    q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    tiny = torch.finfo(dtype).eps
    for j in range(steps):
        basis[j] = q
        w = op(q)
        alphas[:, j] = (w * q).sum(dim=1).double()
        for _ in range(2):  # full reorthogonalisation (also removes alpha q and beta q_prev)
            coefficients = torch.einsum("jkp,kp->jk", basis[: j + 1], w)
            w = w - torch.einsum("jk,jkp->kp", coefficients, basis[: j + 1])
        beta = torch.linalg.vector_norm(w, dim=1).double()
        tridiagonal = torch.diag_embed(alphas[:, : j + 1])
        if j > 0:
            off = torch.diag_embed(betas[:, :j], offset=1)
            tridiagonal = tridiagonal + off + off.transpose(1, 2)
        theta, ritz = torch.linalg.eigh(tridiagonal)
        scale = theta.abs().amax(dim=1).clamp_min(1e-300)
        residual_top = error_bound(beta * ritz[:, -1, -1], theta, -1)
        residual_bottom = error_bound(beta * ritz[:, -1, 0], theta, 0)
        exhausted = beta <= tiny * scale * 4
        converged = (residual_top <= tol * scale) & (residual_bottom <= BOTTOM * tol * scale)
        converged &= j + 1 >= MIN_ITERATIONS
        finishing = ~done & (converged | exhausted | (j == steps - 1))
        if finishing.any():
            rows = finishing.nonzero().reshape(-1)
            lam_max[rows] = theta[rows, -1]
            lam_min[rows] = theta[rows, 0]
            # the next warm start: both extreme Ritz vectors, so both ends start converged
            ends = ritz[:, :, -1] + (ritz[:, :, 0] if j > 0 else 0)
            vectors = torch.einsum("jkp,kj->kp", basis[: j + 1], ends.to(dtype))
            top[rows] = vectors[rows]
            done |= finishing
        if bool(done.all()):
            break
        betas[:, j] = beta
        q = w / beta.clamp_min(torch.finfo(torch.float64).tiny).to(dtype).reshape(-1, 1)
    return Extremes(lam_max, lam_min, top, "lanczos")


def error_bound(residual: Tensor, theta: Tensor, end: int) -> Tensor:
    """How far the Ritz value theta[:, end] can be from an eigenvalue: its residual r, or
    r^2 / gap where the gap to the next Ritz value is wide (Kahan-Parlett-Jiang; the Ritz gap
    stands in for the true one, as ARPACK-style solvers do)."""
    residual = residual.abs()
    if theta.shape[1] < 2:
        return residual
    neighbour = theta[:, -2] if end == -1 else theta[:, 1]
    gap = (theta[:, end] - neighbour).abs().clamp_min(1e-300)
    return torch.minimum(residual, residual * residual / gap)


def extremes(
    op: HessianOperator,
    settings: SharpnessSettings,
    previous: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Extremes:
    """lambda_max and lambda_min of each member's Hessian: dense up to `dense_max` numbers,
    else Lanczos warm-started from `previous` (the last extreme Ritz vectors) plus a random part
    from `generator` (so that the bottom of the spectrum is in the start too)."""
    dense_budget = op.count * op.size * op.size <= DENSE_ELEMENTS
    if op.size <= settings.dense_max and dense_budget:
        return dense_extremes(op)
    generator = generator or torch.Generator().manual_seed(0)
    noise = torch.randn(op.count, op.size, generator=generator, dtype=torch.float64)
    start = noise.to(device=op.grad.device, dtype=op.grad.dtype)
    if previous is not None and previous.shape == start.shape and bool(previous.isfinite().all()):
        unit = start / torch.linalg.vector_norm(start, dim=1, keepdim=True)
        start = previous / torch.linalg.vector_norm(previous, dim=1, keepdim=True).clamp_min(1e-30)
        start = start + WARM_NOISE * unit
    return lanczos(op, start, settings.tol, settings.max_iter)


# ------------------------------------------------------------------------------ measuring a run


@dataclass
class SharpnessPoint:
    """One measurement: the Hessian's extremes at the parameters of `step`, and the limit."""

    step: int
    lambda_max: float
    lambda_min: float
    lr: float
    #: the largest stable lr of the run's rule at this curvature (None: the rule has none)
    lr_limit: float | None
    ratio: float | None  # lr / lr_limit: 1.0 is the edge of stability
    #: the sharpness the limit judges where it is not lambda_max: lambda_max(P^-1 H) of an
    #: adaptive rule (None for SGD, and before an adaptive rule's first step)
    preconditioned: float | None
    #: the value of the judged sharpness at which this lr is the edge (2/lr for plain SGD)
    threshold: float | None
    loss: float  # the full objective at this point
    products: int  # Hessian-vector products spent
    method: str  # dense or lanczos

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Sharpness:
    """Measures the sharpness of a run (K = 1) or of K members at their due steps.

    `constants` holds each member's (c, shift) of `gdlab.rules.stability_constant` (None: no
    limit), `hyper` the rule's arguments (numbers, or [K] tensors in a population).
    """

    settings: SharpnessSettings
    rule: str
    hyper: dict[str, Any]
    constants: list[tuple[float, float] | None]
    name: str = ""
    previous: Tensor | None = None  # the last extreme Ritz vectors: the next warm start
    previous_preconditioned: Tensor | None = None
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the warm starts and the generator, so that a resumed
        run measures what the uninterrupted one would."""
        return {
            "previous": self.previous,
            "previous_preconditioned": self.previous_preconditioned,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.previous = state.get("previous")
        self.previous_preconditioned = state.get("previous_preconditioned")
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"].cpu())

    def due(self, step: int) -> bool:
        every = self.settings.every
        return every > 0 and step % every == 0

    def measure(
        self,
        losses: LossesFn,
        params: Mapping[str, Tensor],
        step: int,
        lr: Tensor | float,
        state: Mapping[str, Any] | None = None,
        state_params: list[str] | None = None,
        hyper: Mapping[str, Any] | None = None,
        members: list[int] | None = None,
    ) -> list[SharpnessPoint]:
        """Measure K members at `step` ([K, ...] parameters, lr a number or [K]); `state` is
        the update rule's (lists aligned with `state_params`, by default every parameter),
        `hyper` its arguments for these rows (default: the run's), `members` which members
        the rows are (default 0..K-1: the rows of `constants` and of the warm starts)."""
        hyper = dict(self.hyper if hyper is None else hyper)
        op = HessianOperator(losses, params, self.name)
        rows = list(range(op.count)) if members is None else list(members)
        found = extremes(op, self.settings, _rows(self.previous, rows), self.generator)
        self.previous = _store(self.previous, rows, found.vector, self.total)
        judged, preconditioned = found.lambda_max, None
        if self.rule != "sgd":
            preconditioned = self._preconditioned(op, params, state, state_params, hyper, rows)
            judged = preconditioned if preconditioned is not None else judged
        lrs = lr.double().cpu().tolist() if isinstance(lr, Tensor) else [float(lr)] * op.count
        tops, bottoms = found.lambda_max.cpu().tolist(), found.lambda_min.cpu().tolist()
        judged_values = judged.cpu().tolist()
        pre = None if preconditioned is None else preconditioned.cpu().tolist()
        losses_now = op.loss.double().cpu().tolist()
        points = []
        for i, member in enumerate(rows):
            limit = ratio = threshold = None
            constant = self.constants[member]
            if constant is not None and (self.rule == "sgd" or pre is not None):
                limit = limit_at(constant, judged_values[i])
                ratio = 0.0 if limit is None else lrs[i] / limit  # no limit: never unstable
                threshold = threshold_at(constant, lrs[i])
            points.append(
                SharpnessPoint(
                    step=step,
                    lambda_max=tops[i],
                    lambda_min=bottoms[i],
                    lr=lrs[i],
                    lr_limit=limit,
                    ratio=ratio,
                    preconditioned=None if pre is None else pre[i],
                    threshold=threshold,
                    loss=losses_now[i],
                    products=op.products,
                    method=found.method,
                )
            )
        return points

    @property
    def total(self) -> int:
        return len(self.constants)

    def _preconditioned(
        self,
        op: HessianOperator,
        params: Mapping[str, Tensor],
        state: Mapping[str, Any] | None,
        state_params: list[str] | None,
        hyper: dict[str, Any],
        rows: list[int],
    ) -> Tensor | None:
        """lambda_max(P^-1/2 (H + wd) P^-1/2), P the rule's next denominators (None before
        its first step); AdamW's decay is decoupled: not part of H."""
        names = state_params or list(params)
        tensors = [params[k].detach() for k in names]
        denominators = preconditioner(self.rule, dict(state or {}), tensors, **hyper)
        if denominators is None:
            return None
        by_name = dict(zip(names, denominators, strict=True))
        count = op.count
        scale = torch.cat(
            [
                (by_name[k] if k in by_name else torch.ones_like(v)).reshape(count, -1)
                for k, v in params.items()
            ],
            dim=1,
        ).rsqrt()
        decay = hyper.get("weight_decay", 0.0)
        coupled = 0.0 if self.rule == "adamw" or decay is None else decay
        twin = op.preconditioned(scale.to(op.grad.dtype), coupled)
        warm = _rows(self.previous_preconditioned, rows)
        found = extremes(twin, self.settings, warm, self.generator)
        self.previous_preconditioned = _store(
            self.previous_preconditioned, rows, found.vector, self.total
        )
        op.products = twin.products
        return found.lambda_max


def _rows(vectors: Tensor | None, rows: list[int]) -> Tensor | None:
    """The warm starts of `rows` (None where there are none yet)."""
    if vectors is None:
        return None
    return vectors[torch.tensor(rows, device=vectors.device)]


def _store(
    vectors: Tensor | None, rows: list[int], found: Tensor | None, total: int
) -> Tensor | None:
    """Keep `found` as the warm starts of `rows` (of `total` members)."""
    if found is None:
        return vectors
    if vectors is None or vectors.shape[1] != found.shape[1]:
        vectors = torch.zeros(total, found.shape[1], dtype=found.dtype, device=found.device)
    vectors[torch.tensor(rows, device=vectors.device)] = found.detach()
    return vectors


def constants_for(
    rule: str, columns: Mapping[str, Sequence[Any]], count: int = 1
) -> list[tuple[float, float] | None]:
    """Each member's `stability_constant` from its hyperparameters (name -> one value per
    member; `count` members where none of them varies), once per distinct setting."""
    names = [n for n in STABILITY_ARGUMENTS if n in columns]
    rows = zip(*(columns[n] for n in names), strict=True) if names else [()] * count
    cache: dict[tuple, tuple[float, float] | None] = {}
    out = []
    for row in rows:
        if row not in cache:
            cache[row] = stability_constant(rule, dict(zip(names, row, strict=True)))
        out.append(cache[row])
    return out


def start_limits(
    loss: Callable[..., Tensor],
    params: Mapping[str, Tensor],
    defaults: Mapping[str, Mapping[str, Any]],
    settings: SharpnessSettings | None = None,
    name: str = "",
) -> dict[str, SharpnessPoint]:
    """The sharpness at one point and the local limit of each update rule in `defaults`
    (rule -> its hyperparameters by name, lr included), what `gdlab-check` prints.

    An adaptive rule is judged with the preconditioner of its first step, made by its own
    function (`gdlab.optim.RULES`) on a copy of the parameters.
    """
    from gdlab.optim import RULES

    settings = settings or SharpnessSettings(every=1)
    names = list(params)
    batched = {k: v.detach().unsqueeze(0) for k, v in params.items()}

    def losses(leaves: dict[str, Tensor]) -> Tensor:
        return loss({k: v[0] for k, v in leaves.items()}).reshape(1)

    leaves = [v.detach().clone().requires_grad_(True) for v in params.values()]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss(dict(zip(names, leaves, strict=True))), leaves)
    out = {}
    for rule, values in defaults.items():
        hyper = {k: v for k, v in values.items() if k != "lr"}
        state: dict[str, Any] = {}
        if rule != "sgd":  # the state the first step leaves: its preconditioner
            copies = [v.detach().clone() for v in params.values()]
            with torch.no_grad():
                RULES[rule][0](copies, [g.clone() for g in grads], state, **values)
        probe = Sharpness(settings, rule, hyper, [stability_constant(rule, hyper)], name)
        batched_state = {
            k: [b.unsqueeze(0) for b in v] if isinstance(v, list) else v for k, v in state.items()
        }
        (out[rule],) = probe.measure(losses, batched, 0, float(values["lr"]), batched_state)
    return out
