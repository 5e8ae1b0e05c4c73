"""Loss and gradient of every member at once, for a `loss` written for ONE setting.

Objective authors write `loss(params)` for one setting of the parameters. `BatchedLoss`
batches it, choosing automatically and checking the choice on a probe against one-setting
autograd:

- ``broadcast``: call `loss` on the batched parameters directly (elementwise objectives such as
  the 1-D quadratic return one loss per member), gradient by autograd on the summed loss;
- ``vmap``: `torch.func.vmap(loss)` over the member dimension, gradient by autograd on the
  summed loss, for everything vmap can trace;
- ``loop``: one plain autograd call per member, for objectives vmap cannot trace.

The gradient of the *sum* of K independent losses is each member's own gradient. Shared data
(the regression's X and y) stays a single tensor captured by `loss`; only the per-member
temporaries grow with K, and `chunk_size` bounds them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from gdlab.errors import GdlabError
from gdlab.objectives.base import Params

STRATEGIES = ("auto", "broadcast", "vmap", "loop")
#: per-member temporaries allowed in one evaluation, in tensor elements, by device type (on a
#: GPU at least this, or more where its free memory allows: see `auto_chunk_size`)
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}


def rows_of(values: Tensor, rows: Tensor) -> Tensor:
    """values[rows] along the member dimension (index_select: far cheaper than `[]` on CPU)."""
    return values.index_select(0, rows)


LossFn = Callable[..., Tensor]


def _call(loss: LossFn, params: Params, batch: Tensor | None) -> Tensor:
    return loss(params) if batch is None else loss(params, batch)


def _broadcast(loss: LossFn, params: Params, batch: Tensor | None) -> tuple[Tensor, Params]:
    count = next(iter(params.values())).shape[0]
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        value = _call(loss, leaves, batch)
        if value.shape != (count,):
            raise ValueError(f"loss has shape {tuple(value.shape)}, expected ({count},)")
        grads = torch.autograd.grad(value.sum(), list(leaves.values()), allow_unused=True)
    return value.detach(), _fill(leaves, grads)


def _vmap(loss: LossFn, params: Params, batch: Tensor | None) -> tuple[Tensor, Params]:
    # vmap for the forward pass, plain autograd on the summed loss for the backward pass:
    # torch.func.grad would do the same but imports torch._dynamo on first use (about 1 s).
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        if batch is None:
            value = torch.func.vmap(loss)(leaves)
        else:
            value = torch.func.vmap(loss)(leaves, batch)
        grads = torch.autograd.grad(value.sum(), list(leaves.values()), allow_unused=True)
    return value.detach(), _fill(leaves, grads)


def _loop(loss: LossFn, params: Params, batch: Tensor | None) -> tuple[Tensor, Params]:
    count = next(iter(params.values())).shape[0]
    values, grads = [], {k: torch.empty_like(v) for k, v in params.items()}
    for i in range(count):
        leaves = {k: v[i].detach().clone().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            value = _call(loss, leaves, None if batch is None else batch[i])
            member_grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        for (k, _), g in zip(leaves.items(), _fill(leaves, member_grads).values(), strict=True):
            grads[k][i] = g
        values.append(value.detach().reshape(()))
    return torch.stack(values), grads


def _unused(loss: LossFn, params: Params, batch: Tensor | None) -> frozenset[str]:
    """The parameters one member's loss has no gradient for (autograd says None)."""
    leaves = {k: v[0].detach().clone().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        value = _call(loss, leaves, None if batch is None else batch[0])
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    return frozenset(k for k, g in zip(leaves, grads, strict=True) if g is None)


def _fill(leaves: Params, grads: Iterable[Tensor | None]) -> Params:
    """A parameter the loss does not use has gradient zero, as in the plain trainer."""
    return {
        k: torch.zeros_like(v) if g is None else g
        for (k, v), g in zip(leaves.items(), grads, strict=True)
    }


_IMPLEMENTATIONS = {"broadcast": _broadcast, "vmap": _vmap, "loop": _loop}


def auto_chunk_size(objective: Any, device: torch.device) -> int:
    """Members per evaluation so that per-member temporaries stay near CHUNK_ELEMENTS.

    A member's temporaries scale with the data it touches (a few per-sample values such as
    the residual, and their gradients), so the objective's tensor attributes (its data and
    constants) estimate them; objectives without data are evaluated in one piece.
    """
    data = sum(v.numel() for v in vars(objective).values() if isinstance(v, Tensor))
    budget = CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cuda"])
    if device.type == "cuda":  # a GPU has room: up to 1/64 of its free memory in elements
        free, _ = torch.cuda.mem_get_info(device)
        budget = max(budget, free // 64)
    return max(1, budget // max(1, 4 * data))


class BatchedLoss:
    """Loss and gradient of every member at once, for a `loss` written for one setting."""

    def __init__(self, loss: LossFn, strategy: str = "auto", chunk_size: int | None = None) -> None:
        if strategy not in STRATEGIES:
            raise GdlabError(f"population strategy={strategy!r}; allowed: {', '.join(STRATEGIES)}")
        if chunk_size is not None and chunk_size < 1:
            raise GdlabError(f"population chunk_size={chunk_size} must be >= 1")
        self.loss = loss
        self.strategy = strategy
        self.chunk_size = chunk_size
        #: why each rejected strategy was rejected (filled by `choose`)
        self.rejected: dict[str, str] = {}
        #: parameters the loss does not use (no gradient), found by `choose`
        self.unused: frozenset[str] = frozenset()

    def choose(
        self, params: Params, batches: Sequence[Tensor | None] = (None,), seed: int = 0
    ) -> str:
        """Pick the first strategy that reproduces per-member losses and gradients on a probe.

        The probe perturbs the members' parameters so that they differ from each other (a
        loss that mixes members shows up), evaluates the batched candidate on the first chunk
        for each kind of call the run makes (`batches`: mini-batch indices [K, b] and/or None
        for the full batch), and compares members at both ends and the middle with plain
        one-setting autograd.
        """
        self.unused = _unused(self.loss, params, batches[0] if batches else None)
        if self.strategy != "auto":
            return self.strategy
        count = next(iter(params.values())).shape[0]
        size = min(count, self.chunk_size or count)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        probe = {}
        for k, v in params.items():
            noise = torch.randn(v[:size].shape, generator=gen, dtype=torch.float64)
            scale = 1e-2 * (v[:size].abs() + 1.0)
            probe[k] = (v[:size] + noise.to(v) * scale).detach()
        picks = torch.tensor(sorted({0, size // 2, size - 1}), device=probe[k].device)
        cases = []
        for batch in batches:
            probe_batch = None if batch is None else batch[:size]
            reference = _loop(
                self.loss,
                {k: rows_of(v, picks) for k, v in probe.items()},
                None if probe_batch is None else rows_of(probe_batch, picks),
            )
            cases.append((probe_batch, reference))
        for name in ("broadcast", "vmap"):
            try:
                for probe_batch, (ref_loss, ref_grads) in cases:
                    value, grads = _IMPLEMENTATIONS[name](self.loss, probe, probe_batch)
                    if not (
                        _matches(rows_of(value, picks), ref_loss)
                        and all(_matches(rows_of(grads[k], picks), ref_grads[k]) for k in probe)
                    ):
                        raise _Mismatch("its losses or gradients differ from one-setting autograd")
                self.strategy = name
                return name
            except Exception as err:  # any failure of a candidate means: try the next one
                text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                self.rejected[name] = (
                    text if isinstance(err, _Mismatch) else (f"{type(err).__name__}: {text}")
                )
        self.strategy = "loop"
        return "loop"

    def values(self, leaves: Params) -> Tensor:
        """Every member's full-batch loss [K] with its autograd graph, by the chosen strategy
        (Hessian-vector products differentiate it twice: gdlab.curvature)."""
        assert self.strategy != "auto", "call choose() first"
        if self.strategy == "broadcast":
            return self.loss(leaves)
        if self.strategy == "vmap":
            return torch.func.vmap(self.loss)(leaves)
        count = next(iter(leaves.values())).shape[0]
        return torch.stack(
            [self.loss({k: v[i] for k, v in leaves.items()}).reshape(()) for i in range(count)]
        )

    def __call__(self, params: Params, batch: Tensor | None) -> tuple[Tensor, Params]:
        """Losses [K] and gradients (same shapes as `params`) of every member."""
        assert self.strategy != "auto", "call choose() first"
        impl = _IMPLEMENTATIONS[self.strategy]
        count = next(iter(params.values())).shape[0]
        size = self.chunk_size or count
        if size >= count:
            return impl(self.loss, params, batch)
        # Results go straight into buffers allocated once: small per-chunk outputs kept alive
        # between the chunks' temporaries fragment glibc's heap so that the temporaries of
        # every chunk pile up (measured: 850 MB instead of 3 MB for 300 chunks).
        values: Tensor | None = None
        grads = {k: torch.empty_like(v) for k, v in params.items()}
        for start in range(0, count, size):
            part = slice(start, start + size)
            value, part_grads = impl(
                self.loss,
                {k: v[part] for k, v in params.items()},
                None if batch is None else batch[part],
            )
            if values is None:
                values = value.new_empty(count)
            values[part].copy_(value)
            for k, g in part_grads.items():
                grads[k][part].copy_(g)
            del value, part_grads
        assert values is not None
        return values, grads


class _Mismatch(Exception):
    """A batching candidate ran but computed something else than the one-setting loss."""


def _matches(actual: Tensor, expected: Tensor) -> bool:
    """Equal up to rounding (a wrong batching differs by far more), NaN and inf included."""
    if actual.shape != expected.shape:
        return False
    actual, expected = actual.double(), expected.double()
    finite = torch.isfinite(expected)
    if not torch.equal(finite, torch.isfinite(actual)):
        return False
    if not torch.equal(actual[~finite].nan_to_num(), expected[~finite].nan_to_num()):
        return False
    scale = 1.0 + float(expected[finite].abs().max()) if finite.any() else 1.0
    return bool(torch.allclose(actual[finite], expected[finite], rtol=1e-4, atol=1e-6 * scale))
