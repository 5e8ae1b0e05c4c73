"""Many hyperparameter settings as one batched program: a population of K members.

A learning-rate sweep of a small objective is dominated by per-job overhead, while the settings
never interact: the gradient of the *sum* of K independent losses is each setting's own
gradient. So the population holds every parameter with a leading member dimension K, evaluates
all K losses and gradients at once, and applies `torch.optim.SGD`'s update with per-member
hyperparameters held as tensors. Objective authors still write `loss(params)` for ONE setting;
`BatchedLoss` batches it, choosing automatically (and checking the choice on a probe):

- ``broadcast``: call `loss` on the batched parameters directly (elementwise objectives such as
  the 1-D quadratic return one loss per member), gradient by autograd on the summed loss;
- ``vmap``: `torch.func.vmap(loss)` over the member dimension, gradient by autograd on the
  summed loss, for everything vmap can trace;
- ``loop``: one plain autograd call per member, for objectives vmap cannot trace.

Shared data (the regression's X and y) stays a single tensor captured by `loss`; only the
per-member temporaries grow with K, and `chunk_size` bounds them, so memory grows with K times
the parameter size. Stop rules are the plain trainer's (`gdlab.trainer`), applied per member at
the same log points: a stopped member is frozen with its step and status and leaves the working
set; the job ends when every member has stopped or the step budget is spent. Each member's
result equals the plain run with the same settings (tests/test_population.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from gdlab.errors import GdlabError
from gdlab.events import LogRecord, RunResult
from gdlab.objectives.base import Objective, Params
from gdlab.optim import SGDSettings
from gdlab.schedules import make_schedule
from gdlab.trainer import StopRequest, Trainer, TrainerSettings

#: config keys a population batches, by member field
MEMBER_KEYS: dict[str, str] = {
    "lr": "optimizer.lr",
    "momentum": "optimizer.momentum",
    "dampening": "optimizer.dampening",
    "nesterov": "optimizer.nesterov",
    "weight_decay": "optimizer.weight_decay",
    "clip_norm": "optimizer.clip_norm",
    "seed": "trainer.seed",
}
STRATEGIES = ("auto", "broadcast", "vmap", "loop")
#: per-member temporaries allowed in one evaluation, in tensor elements, by device type (on a
#: GPU at least this, or more where its free memory allows: see `auto_chunk_size`)
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}


# --------------------------------------------------------------------------------------------
# Members: the per-member hyperparameters, held as columns so a million members stay cheap.


@dataclass
class Members:
    """One column per batchable hyperparameter; row i is member i's setting."""

    lr: list[float]
    momentum: list[float]
    dampening: list[float]
    nesterov: list[bool]
    weight_decay: list[float]
    clip_norm: list[float | None]
    seed: list[int]

    @classmethod
    def build(cls, count: int, base: Mapping[str, Any], **columns: Sequence[Any]) -> Members:
        """`count` members: `columns` give per-member values, `base` the shared rest."""
        values: dict[str, list[Any]] = {}
        for f in fields(cls):
            if f.name in columns:
                column = list(columns[f.name])
                if len(column) != count:
                    raise ValueError(f"column {f.name} has {len(column)} values, not {count}")
                values[f.name] = column
            else:
                values[f.name] = [base[f.name]] * count
        unknown = set(columns) - set(values)
        if unknown:
            raise ValueError(f"unknown member fields: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any]) -> Members:
        """Members from dicts of field -> value; missing fields come from `base`."""
        columns = {
            f.name: [row.get(f.name, base[f.name]) for row in rows]
            for f in fields(cls)
            if any(f.name in row for row in rows)
        }
        return cls.build(len(rows), base, **columns)

    def __len__(self) -> int:
        return len(self.lr)

    def row(self, i: int) -> dict[str, Any]:
        return {f.name: getattr(self, f.name)[i] for f in fields(self)}

    def sgd_settings(self, i: int) -> SGDSettings:
        row = self.row(i)
        row.pop("seed")
        return SGDSettings(**row)

    def problems(self) -> dict[int, str]:
        """Member index -> why a plain run with its settings would refuse to start.

        A population job leaves those members out (they are reported as failed, as their
        plain jobs would be) and trains the rest. `SGDSettings`' checks look at one field at a
        time, except Nesterov's (with momentum and dampening), so each check runs once per
        distinct value of its fields, in `SGDSettings`' order: a member gets the message its
        plain run would print first. Cheap for a million members with distinct lrs.
        """
        defaults = {"lr": 1.0, "momentum": 0.0, "dampening": 0.0, "nesterov": False}
        checks = [("seed",), ("lr",), ("momentum",), ("dampening",)]
        checks += [("nesterov", "momentum", "dampening"), ("weight_decay",), ("clip_norm",)]
        found: dict[int, str] = {}
        for names in checks:
            columns = [getattr(self, n) for n in names]
            verdicts: dict[tuple[Any, ...], str | None] = {}
            for i, values in enumerate(zip(*columns, strict=True)):
                if values not in verdicts:
                    verdicts[values] = _refusal(dict(zip(names, values, strict=True)), defaults)
                message = verdicts[values]
                if message is not None and i not in found:
                    found[i] = message
        return found

    def select(self, rows: Sequence[int]) -> Members:
        return Members(*([getattr(self, f.name)[i] for i in rows] for f in fields(self)))

    def validate(self) -> None:
        """Refuse the first member a plain run would refuse (same message), and convert the
        columns to the types the update needs (ints to floats)."""
        problems = self.problems()
        if problems:
            raise GdlabError(problems[min(problems)])
        for f in fields(self):
            key, convert = MEMBER_KEYS[f.name], _COERCE[f.name]
            setattr(self, f.name, [convert(key, v) for v in getattr(self, f.name)])


def _refusal(values: dict[str, Any], defaults: dict[str, Any]) -> str | None:
    """Why one member with these field values (the rest valid defaults) would be refused."""
    try:
        row = {k: _COERCE[k](MEMBER_KEYS[k], v) for k, v in values.items()}
        row.pop("seed", None)
        SGDSettings(**{**defaults, **row})
    except GdlabError as err:
        return str(err)
    return None


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GdlabError(f"{key}={value!r} is not a number")
    return float(value)


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise GdlabError(f"{key}={value!r} is not a boolean (true or false)")
    return value


def _integer(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GdlabError(f"{key}={value!r} is not an integer")
    return value


_COERCE: dict[str, Callable[[str, Any], Any]] = {
    "lr": _number,
    "momentum": _number,
    "dampening": _number,
    "nesterov": _boolean,
    "weight_decay": _number,
    "clip_norm": lambda key, value: None if value is None else _number(key, value),
    "seed": _integer,
}


# --------------------------------------------------------------------------------------------
# Schedules: the same formulas as gdlab.schedules, with a tensor of base learning rates.


@dataclass(frozen=True)
class ScheduleSpec:
    """The shared schedule fields; each member scales it from its own base lr."""

    name: str = "constant"
    step_size: int = 100
    gamma: float = 0.1
    min_lr: float = 0.0

    def check(self, lrs: Sequence[float], total_steps: int) -> None:
        """Refuse what `make_schedule` refuses, with its messages.

        lr enters its checks only through the cosine schedule's min_lr <= lr, which the
        smallest and the largest lr decide.
        """
        for lr in {min(lrs), max(lrs)}:
            make_schedule(
                self.name,
                lr,
                total_steps,
                step_size=self.step_size,
                gamma=self.gamma,
                min_lr=self.min_lr,
            )

    def at(self, lrs: Tensor, t: int, total_steps: int) -> Tensor:
        """lr at step t for every member (float64 base lrs): bit for bit `make_schedule`'s."""
        name = self.name
        if name == "constant":
            return lrs
        if name == "step":
            return lrs * self.gamma ** (t // self.step_size)
        if name == "exponential":
            return lrs * self.gamma**t
        assert name == "cosine", name
        period, min_lr = max(total_steps, 1), self.min_lr
        return min_lr + (lrs - min_lr) * (1.0 + math.cos(math.pi * min(t, period) / period)) / 2.0


# --------------------------------------------------------------------------------------------
# Batched loss and gradient from an objective written for one setting.

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


def auto_chunk_size(objective: Objective, device: torch.device) -> int:
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
                {k: _rows(v, picks) for k, v in probe.items()},
                None if probe_batch is None else _rows(probe_batch, picks),
            )
            cases.append((probe_batch, reference))
        for name in ("broadcast", "vmap"):
            try:
                for probe_batch, (ref_loss, ref_grads) in cases:
                    value, grads = _IMPLEMENTATIONS[name](self.loss, probe, probe_batch)
                    if not (
                        _matches(_rows(value, picks), ref_loss)
                        and all(_matches(_rows(grads[k], picks), ref_grads[k]) for k in probe)
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


# --------------------------------------------------------------------------------------------
# Mini-batches: each member's order follows its own seed, exactly as gdlab.trainer.BatchSampler.


class PopulationSampler:
    """`BatchSampler` for every distinct seed at once; members with one seed share an order.

    All members draw in lockstep (a batch per loss evaluation), so one position serves them
    all; a member that stopped no longer matters, as its plain run would draw no more either.
    """

    def __init__(
        self,
        n_samples: int,
        batch_size: int,
        generators: Sequence[torch.Generator],
        device: torch.device,
    ) -> None:
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.generators = list(generators)
        self.device = device
        self._orders: Tensor | None = None
        self._position = n_samples

    def next(self, slots: Tensor) -> Tensor:
        """Sample indices [members, batch_size]; `slots` maps members to their seed."""
        if self._position + self.batch_size > self.n_samples:
            self._orders = torch.stack(
                [
                    torch.randperm(self.n_samples, generator=g, device=self.device)
                    for g in self.generators
                ]
            )
            self._position = 0
        start = self._position
        self._position += self.batch_size
        assert self._orders is not None
        return self._orders.index_select(0, slots)[:, start : self._position]


# --------------------------------------------------------------------------------------------
# The update: torch.optim.SGD's formulas (gdlab.optim.sgd_update) with per-member tensors.


@dataclass
class _Hyper:
    """Per-member hyperparameters of the working set, as device tensors."""

    lr: Tensor  # float64 base lr (schedules are computed in float64 as in the plain trainer)
    momentum: Tensor
    undampened: Tensor  # 1 - dampening, computed in float64 as the plain update does
    nesterov: Tensor
    weight_decay: Tensor
    clip_norm: Tensor  # +inf where a member has no clipping
    has_clip: Tensor

    def select(self, keep: Tensor) -> _Hyper:
        return _Hyper(**{f.name: _rows(getattr(self, f.name), keep) for f in fields(self)})


def _rows(values: Tensor, rows: Tensor) -> Tensor:
    """values[rows] along the member dimension (index_select: far cheaper than `[]` on CPU)."""
    return values.index_select(0, rows)


def _column(values: Tensor, like: Tensor) -> Tensor:
    """Per-member values shaped to broadcast over a parameter with a leading member dim."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass
class _Flags:
    """Which update branches any member needs (skipping the others keeps steps cheap)."""

    clip: bool
    weight_decay: bool
    momentum: bool
    all_momentum: bool
    nesterov: bool
    dampening: bool


def batched_sgd_update(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor] | None,
    hyper: _Hyper,
    lr: Tensor,
    flags: _Flags,
    skip: frozenset[int] = frozenset(),
) -> list[Tensor] | None:
    """One `sgd_update` per member, in place on `params`; returns the momentum buffers.

    Where a member has a feature off (no momentum, no decay, no clipping) it takes exactly
    the plain branch (`torch.where`), so an infinity in an unused buffer cannot leak into it.
    Parameters in `skip` (those the loss does not use: no gradient) are left alone, as
    `UpdateRule` and torch.optim.SGD leave a parameter whose `.grad` is None.
    """
    if flags.clip:
        norms = torch.stack(
            [torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads], dim=1
        )
        total = torch.linalg.vector_norm(norms, dim=1)
        # clip_grad_norm computes max_norm / (total + 1e-6) as reciprocal times max_norm.
        scale = torch.clamp((total + 1e-6).reciprocal() * hyper.clip_norm, max=1.0)
        scale = torch.where(hyper.has_clip, scale, torch.ones_like(scale))
        grads = [g * _column(scale, g) for g in grads]
    first = buffers is None
    if flags.momentum and first:
        buffers = []
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        if i in skip:
            if flags.momentum and first:
                buffers.append(grad)  # type: ignore[union-attr]  # a placeholder, never used
            continue
        if flags.weight_decay:
            decay = _column(hyper.weight_decay, grad)
            grad = torch.where(decay != 0, torch.addcmul(grad, param, decay), grad)
        step = grad
        if flags.momentum:
            assert buffers is not None
            momentum = _column(hyper.momentum, grad)
            if first:
                buffers.append(grad.clone())
            elif flags.dampening:
                buffers[i].mul_(momentum).addcmul_(grad, _column(hyper.undampened, grad))
            else:
                buffers[i].mul_(momentum).add_(grad)
            buf = buffers[i]
            if flags.nesterov:
                nesterov = _column(hyper.nesterov, grad)
                step = torch.where(nesterov, torch.addcmul(grad, buf, momentum), buf)
            else:
                step = buf
            if not flags.all_momentum:
                step = torch.where(momentum != 0, step, grad)
        param.addcmul_(step, _column(lr, param), value=-1)
    return buffers


# --------------------------------------------------------------------------------------------
# Results.


@dataclass
class PopulationResult:
    """How every member ended, as columns (row i is member i); `member(i)` gives a RunResult."""

    status: list[str]
    steps: list[int]
    final_loss: Tensor  # float64 [K]
    grad_norm: Tensor  # float64 [K]
    params: dict[str, Tensor]  # CPU, [K, ...]
    stop_reason: list[str | None]
    distance_to_minimizer: Tensor | None  # float64 [K], None when the minimiser is unknown
    minimum: float | None
    wall_time_s: float
    strategy: str
    chunk_size: int
    steps_run: int  # the step loop's last step: where the job as a whole ended
    rejected: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.status)

    def member(self, i: int) -> RunResult:
        """Member i's result in a plain run's shape; wall time is the job's share per member."""
        distance = self.distance_to_minimizer
        return RunResult(
            status=self.status[i],
            steps=self.steps[i],
            final_loss=float(self.final_loss[i]),
            grad_norm=float(self.grad_norm[i]),
            params={k: v[i].clone() for k, v in self.params.items()},
            wall_time_s=self.wall_time_s / len(self),
            stop_reason=self.stop_reason[i],
            distance_to_minimizer=None if distance is None else float(distance[i]),
            minimum=self.minimum,
        )

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.status:
            out[s] = out.get(s, 0) + 1
        return out


# --------------------------------------------------------------------------------------------
# The population trainer.


class PopulationTrainer:
    """Trains every member of `members` on one objective; see the module docstring."""

    def __init__(
        self,
        objective: Objective,
        members: Members,
        settings: TrainerSettings,
        schedule: ScheduleSpec,
        device: torch.device,
        dtype: torch.dtype,
        strategy: str = "auto",
        chunk_size: int | None = None,
        interrupt: StopRequest | None = None,
    ) -> None:
        if len(members) == 0:
            raise GdlabError("a population needs at least one member")
        members.validate()
        schedule.check(members.lr, settings.steps)
        self.objective = objective
        self.members = members
        self.settings = settings
        self.schedule = schedule
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size or auto_chunk_size(objective, device)
        self.interrupt = interrupt
        self.batched = BatchedLoss(objective.loss, strategy, self.chunk_size)
        n, batch_size = objective.n_samples, objective.batch_size
        self.mini_batch = n is not None and batch_size is not None and batch_size < n

    def _initial_params(self) -> tuple[Params, Tensor, list[torch.Generator]]:
        """Each member's start from its own seeded generator, drawn once per distinct seed."""
        seeds = sorted(set(self.members.seed))
        slot_of = {s: i for i, s in enumerate(seeds)}
        generators, starts = [], []
        for s in seeds:
            gen = torch.Generator(device=self.device).manual_seed(int(s))
            start = self.objective.init_params(gen, self.device, self.dtype)
            starts.append({k: v.detach().to(self.device, self.dtype) for k, v in start.items()})
            generators.append(gen)
        slots = torch.tensor([slot_of[s] for s in self.members.seed], device=self.device)
        params = {k: _rows(torch.stack([s[k] for s in starts]), slots) for k in starts[0]}
        return params, slots, generators

    def _hyper(self) -> tuple[_Hyper, _Flags]:
        m, dev, dt = self.members, self.device, self.dtype
        clip = [math.inf if c is None else c for c in m.clip_norm]
        hyper = _Hyper(
            lr=torch.tensor(m.lr, dtype=torch.float64, device=dev),
            momentum=torch.tensor(m.momentum, dtype=dt, device=dev),
            undampened=torch.tensor([1.0 - d for d in m.dampening], dtype=dt, device=dev),
            nesterov=torch.tensor(m.nesterov, dtype=torch.bool, device=dev),
            weight_decay=torch.tensor(m.weight_decay, dtype=dt, device=dev),
            clip_norm=torch.tensor(clip, dtype=dt, device=dev),
            has_clip=torch.tensor([c is not None for c in m.clip_norm], device=dev),
        )
        flags = _Flags(
            clip=any(c is not None for c in m.clip_norm),
            weight_decay=any(w != 0 for w in m.weight_decay),
            momentum=any(v != 0 for v in m.momentum),
            all_momentum=all(v != 0 for v in m.momentum),
            nesterov=any(m.nesterov),
            dampening=any(d != 0 for d in m.dampening),
        )
        return hyper, flags

    def run(self) -> PopulationResult:
        count, settings = len(self.members), self.settings
        start_time = time.perf_counter()
        params, slots, generators = self._initial_params()
        hyper, flags = self._hyper()
        sampler = None
        if self.mini_batch:
            assert self.objective.n_samples is not None and self.objective.batch_size is not None
            sampler = PopulationSampler(
                self.objective.n_samples, self.objective.batch_size, generators, self.device
            )
        probes = [None] if sampler is None else [_probe_batch(self, count), None]
        self.batched.choose(params, probes)
        names = list(params)
        skip = frozenset(names.index(k) for k in self.batched.unused)

        final = _Final(count, params, self.device)
        index = torch.arange(count, device=self.device)  # working row -> member
        active = torch.ones(count, dtype=torch.bool, device=self.device)
        running = count
        buffers: list[Tensor] | None = None
        step = 0
        for step in range(settings.steps + 1):
            last = step == settings.steps
            interrupted = not last and self.interrupt is not None and self.interrupt.requested
            # Training steps see mini-batches; the final point (and an interrupted run's last
            # point) is measured on the full batch, as in the plain trainer.
            full = last or interrupted or sampler is None
            batch = None if full else sampler.next(slots)  # type: ignore[union-attr]
            loss, grads = self.batched(params, batch)
            if interrupted:
                reason = f"stopped by a signal after {step} steps"
                final.check(self, step, loss, grads, params, index, active, ("interrupted", reason))
                break
            if last or step % settings.log_every == 0:
                end = ("finished", None) if last else None
                running -= final.check(self, step, loss, grads, params, index, active, end)
                if running == 0:
                    break
                if running <= active.shape[0] // 2:
                    # Stopped members are frozen in `final`; their rows only cost compute from
                    # here on, so drop them once they are half the working set.
                    keep = active.nonzero().reshape(-1)
                    params = {k: _rows(v, keep) for k, v in params.items()}
                    grads = {k: _rows(v, keep) for k, v in grads.items()}
                    buffers = None if buffers is None else [_rows(b, keep) for b in buffers]
                    hyper, slots, index = hyper.select(keep), _rows(slots, keep), _rows(index, keep)
                    active = _rows(active, keep)
            if last:
                break
            lr = self.schedule.at(hyper.lr, step, settings.steps).to(self.dtype)
            with torch.no_grad():
                buffers = batched_sgd_update(
                    list(params.values()), list(grads.values()), buffers, hyper, lr, flags, skip
                )
        wall = time.perf_counter() - start_time
        return final.result(self, wall, step)


def _probe_batch(trainer: PopulationTrainer, count: int) -> Tensor:
    """Mini-batch indices for the strategy probe, drawn apart from the members' generators."""
    objective = trainer.objective
    assert objective.n_samples is not None and objective.batch_size is not None
    gen = torch.Generator(device="cpu").manual_seed(1)
    rows = [torch.randperm(objective.n_samples, generator=gen)[: objective.batch_size]]
    probe = torch.stack(rows * min(count, 3))
    return probe.repeat((count + probe.shape[0] - 1) // probe.shape[0], 1)[:count].to(
        trainer.device
    )


class _Final:
    """Collects members as they stop: their step, status, loss, gradient norm and parameters."""

    def __init__(self, count: int, params: Params, device: torch.device) -> None:
        self.status: list[str] = [""] * count
        self.reason: list[str | None] = [None] * count
        self.steps = [0] * count
        self.loss = torch.full((count,), math.nan, dtype=torch.float64, device=device)
        self.grad_norm = torch.full_like(self.loss, math.nan)
        self.params = {k: torch.empty_like(v) for k, v in params.items()}

    def check(
        self,
        trainer: PopulationTrainer,
        step: int,
        loss: Tensor,
        grads: Params,
        params: Params,
        index: Tensor,
        active: Tensor,
        end: tuple[str, str | None] | None,
    ) -> int:
        """Apply the stop rules to the active rows at a log point; returns how many stopped.

        `end` is how the rest ends when this is the run's last point: ("finished", None) at
        the end of the budget, where the stop rules still have the first word, or
        ("interrupted", reason), which overrides them as in the plain trainer. A stopped
        member's values are recorded here and its row is marked inactive: it is never checked
        again, whatever its (no longer used) row holds later.
        """
        s = trainer.settings
        rows = loss.shape[0]
        with torch.no_grad():
            grad_norm = torch.linalg.vector_norm(_norms(grads, rows), dim=1)
            param_norm = _norms(params, rows).amax(dim=1)
            stats = torch.stack([loss.detach().reshape(rows), grad_norm, param_norm]).double()
        loss64, grad64, param64 = stats
        rule = (
            ~torch.isfinite(loss64)
            | ~torch.isfinite(param64)
            | (param64 > s.divergence_bound)
            | ~torch.isfinite(grad64)
            | (grad64 < s.tol)
        )
        interrupted = end is not None and end[0] == "interrupted"
        # Rows the rule stops get the plain trainer's own verdict and message, one by one;
        # at the end the rest finish (or all are interrupted) without Python per row.
        stopped = (active if interrupted else active & rule).nonzero().reshape(-1)
        forced = end if interrupted else None
        done = self._stopped(s, step, stopped, index, stats, forced, fallback=end)
        if end is not None and not interrupted:
            rest = (active & ~rule).nonzero().reshape(-1)
            done = torch.cat([done, rest])
            for block in _row_blocks(rest):
                for member in _rows(index, block).tolist():
                    self.status[member], self.steps[member] = "finished", step
        if done.numel() == 0:
            return 0
        done_members = _rows(index, done)
        self.loss.index_copy_(0, done_members, _rows(stats[0], done))
        self.grad_norm.index_copy_(0, done_members, _rows(stats[1], done))
        for k, v in params.items():
            self.params[k].index_copy_(0, done_members, _rows(v.detach(), done))
        active.index_fill_(0, done, False)
        return int(done.numel())

    def _stopped(
        self,
        settings: TrainerSettings,
        step: int,
        stopped: Tensor,
        index: Tensor,
        stats: Tensor,
        forced: tuple[str, str | None] | None,
        fallback: tuple[str, str | None] | None,
    ) -> Tensor:
        """Record the verdict of each row in `stopped`; returns the rows that did stop.

        `forced` overrides the stop rules (an interrupt); `fallback` ends a row that they let
        go on (at the end of the budget: finished).

        Rows are read back in blocks, so a million members stopping at once never become a
        million Python objects at a time.
        """
        done: list[Tensor] = []
        for block in _row_blocks(stopped):
            members = _rows(index, block).tolist()
            values = stats.index_select(1, block).T.tolist()
            keep = []
            for position, (member, (loss_v, grad_v, param_v)) in enumerate(
                zip(members, values, strict=True)
            ):
                verdict = forced or _plain_verdict(settings, step, loss_v, grad_v, param_v)
                verdict = verdict or fallback
                if verdict is None:
                    continue  # the vectorised rule and the plain one disagree: plain wins
                self.status[member], self.reason[member] = verdict
                self.steps[member] = step
                keep.append(position)
            if len(keep) == len(members):
                done.append(block)
            elif keep:
                done.append(block[torch.tensor(keep, device=block.device)])
        return torch.cat(done) if done else stopped[:0]

    def result(self, trainer: PopulationTrainer, wall: float, step: int) -> PopulationResult:
        objective = trainer.objective
        minimizer = getattr(objective, "minimizer", None)
        distance = None
        if minimizer:
            with torch.no_grad():
                total = torch.zeros(len(self.status), dtype=torch.float64, device=self.loss.device)
                for k, v in minimizer.items():
                    p = self.params[k]
                    diff = (p - v.to(p)) ** 2
                    total = total + diff.reshape(p.shape[0], -1).sum(dim=1).double()
                distance = total.sqrt().cpu()
        return PopulationResult(
            status=self.status,
            steps=self.steps,
            final_loss=self.loss.cpu(),
            grad_norm=self.grad_norm.cpu(),
            params={k: v.cpu() for k, v in self.params.items()},
            stop_reason=self.reason,
            distance_to_minimizer=distance,
            minimum=getattr(objective, "minimum", None),
            wall_time_s=wall,
            strategy=trainer.batched.strategy,
            chunk_size=trainer.chunk_size,
            steps_run=step,
            rejected=dict(trainer.batched.rejected),
        )


def _row_blocks(rows: Tensor, size: int = 1 << 16) -> list[Tensor]:
    return [rows[start : start + size] for start in range(0, rows.numel(), size)]


def _norms(tensors: Params, rows: int) -> Tensor:
    """2-norm of each tensor per member: [members, tensors]."""
    return torch.stack(
        [torch.linalg.vector_norm(t.detach().reshape(rows, -1), dim=1) for t in tensors.values()],
        dim=1,
    )


def _plain_verdict(
    settings: TrainerSettings, step: int, loss: float, grad_norm: float, param_norm: float
) -> tuple[str, str] | None:
    """The plain trainer's own stop rule and message, applied to one member's values."""
    shim = SimpleNamespace(_param_norm=param_norm, settings=settings)
    record = LogRecord(step, loss, grad_norm, 0.0, {})
    return Trainer._verdict(shim, record)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# From a composed config (the same keys as a plain run) to a population.


def member_base(cfg: Any) -> dict[str, Any]:
    """The batchable values a plain run of `cfg` would use: every member's default."""
    opt = cfg.optimizer
    return {
        "lr": opt.lr,
        "momentum": opt.momentum,
        "dampening": opt.dampening,
        "nesterov": opt.nesterov,
        "weight_decay": opt.weight_decay,
        "clip_norm": opt.clip_norm,
        "seed": cfg.trainer.seed,
    }


def from_config(
    cfg: Any,
    columns: Mapping[str, Sequence[Any]] | None = None,
    strategy: str = "auto",
    chunk_size: int | None = None,
) -> PopulationTrainer:
    """A population over `cfg`: `columns` (member field -> values) vary, the rest is `cfg`'s.

    The shared part is built by `experiment.build`, so it is checked and interpreted exactly
    as for a plain run (objective, data on the device, steps, log points, stop rules).
    """
    from gdlab.experiment import build

    experiment = build(cfg)
    columns = dict(columns or {})
    count = len(next(iter(columns.values()))) if columns else 1
    members = Members.build(count, member_base(cfg), **columns)
    first = next(iter(experiment.params.values()))
    sched = cfg.optimizer.schedule
    return PopulationTrainer(
        experiment.objective,
        members,
        experiment.trainer.settings,
        ScheduleSpec(sched.name, sched.step_size, sched.gamma, sched.min_lr),
        first.device,
        first.dtype,
        strategy=strategy,
        chunk_size=chunk_size,
    )
