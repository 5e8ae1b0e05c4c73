"""The population step as one compiled program: the rule book's own functions, compiled.

Eager PyTorch pays for every small operation: each member-step of the tutorial regression
walks over [K x samples] temporaries several times (~700 ns per member-step on one CPU
thread). `torch.compile` (inductor; on the CPU its C++ backend with the system's compiler)
turns the same code into fused loops that never store those temporaries (~25 ns). Nothing is
written a second time: what is compiled is

- `gdlab.population.batching`'s broadcast or vmap evaluation (the members' losses and
  `torch.autograd.grad` of their sum), and
- the update rule's own function from `gdlab.optim` (sgd, adam, ...),
- a log point's statistics and the stop rules' codes (`gdlab.rules.stop_code`, through
  `gdlab.population.engine.point_stats`),

so the update formulas, schedules (`lr_at`, evaluated outside) and stop rules stay written
once; what happens to the members a rule stops stays eager, as it is rare.

`hydra.sweeper.compile`: `auto` compiles when a job's member-steps (K x steps) reach
`AUTO_MEMBER_STEPS`, `true` always, `false` never. Whatever fails while compiling (no C++
compiler, an operation inductor can't handle in a plugin's loss, a graph break) falls back to
eager with one line that says why, and the same results. Inductor's cache goes under the
user's cache directory (`$XDG_CACHE_HOME/gdlab/inductor`, by default `~/.cache/...`), never
the run directory; where it can't be written a temporary one is used.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gdlab.errors import GdlabError
from gdlab.objectives.base import Params
from gdlab.population.batching import _IMPLEMENTATIONS, BatchedLoss

log = logging.getLogger("gdlab")

COMPILE_CHOICES = ("auto", "true", "false")
#: `auto` compiles jobs of at least this many member-steps (K x steps). A cold compile of the
#: step costs ~15 s here and a warm one (inductor's cache) ~3 s; compiled, a member-step of
#: the tutorial regression costs ~680 ns less than eager on one CPU thread: a cold compile
#: pays for itself at about 2e7 member-steps (scripts/bench_population.py --compile).
AUTO_MEMBER_STEPS = 20_000_000
#: compiled variants per function (Dynamo's default is 8): every objective, rule and dtype a
#: process trains (a notebook, the test suite) is one variant of the same few functions
RECOMPILES = 64


def compile_choice(value: Any) -> str:
    """`hydra.sweeper.compile` as one of COMPILE_CHOICES (YAML's true/false as booleans too),
    or one line naming the key."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text not in COMPILE_CHOICES:
        raise GdlabError(
            f"hydra.sweeper.compile={value!r} is not allowed; allowed: {', '.join(COMPILE_CHOICES)}"
        )
    return text


def wants_compile(choice: str, count: int, steps: int) -> bool:
    """Whether a job of `count` members and `steps` steps compiles its step."""
    if choice == "auto":
        return count * steps >= AUTO_MEMBER_STEPS
    return choice == "true"


def inductor_cache_dir() -> Path:
    """Where inductor keeps compiled code: TORCHINDUCTOR_CACHE_DIR if the user set it, else
    `$XDG_CACHE_HOME/gdlab/inductor` (~/.cache/gdlab/inductor), else a temporary directory
    when that can't be written. Set in the environment before the first compile."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen:
        return Path(chosen)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = base / "gdlab" / "inductor"
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        target = Path(tempfile.mkdtemp(prefix="gdlab-inductor-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(target)
    return target


class Step:
    """The two halves of a population step, eager or compiled: `grads(params, batch)` gives
    every member's loss and gradient, `update(params, grads, state, hyper, lr)` applies the
    rule in place (under no_grad). The first call of a compiled half compiles it; a failure
    there switches both halves to eager for good, with one line."""

    def __init__(
        self,
        batched: BatchedLoss,
        update: Callable[..., None],
        stats: Callable[..., tuple[Tensor, Tensor]],
        compiled: bool,
        why: str = "",
    ) -> None:
        self.batched = batched
        self.rule_update = update
        self.point_stats = stats
        self.compiled = False
        self.note = why  # why the step is not compiled, when it was asked to be
        self._grads: Callable[..., tuple[Tensor, Params]] | None = None
        self._update: Callable[..., None] | None = None
        self._observed: Callable[..., Any] | None = None
        if compiled:
            self._compile()

    def _compile(self) -> None:
        strategy = self.batched.strategy
        if strategy not in ("broadcast", "vmap"):
            self._eager(f"the loss is batched by the {strategy} strategy, which can't compile")
            return
        cache = inductor_cache_dir()
        log.info("gdlab: compiling the population step (torch.compile, cache %s)", cache)
        impl, loss = _IMPLEMENTATIONS[strategy], self.batched.loss

        stats = self.point_stats

        def grads(params: Params, batch: Tensor | None) -> tuple[Tensor, Params]:
            return impl(loss, params, batch)

        def observed(
            params: Params, batch: Tensor | None, tol: float, bound: float
        ) -> tuple[Tensor, Params, tuple[Tensor, Tensor]]:
            value, gradients = impl(loss, params, batch)
            return value, gradients, stats(value, gradients, params, tol, bound)

        self._grads = torch.compile(grads, fullgraph=True, dynamic=True)
        self._observed = torch.compile(observed, fullgraph=True, dynamic=True)
        self._update = torch.compile(self.rule_update, fullgraph=True, dynamic=True)
        self.compiled = True

    def _eager(self, why: str) -> None:
        self.compiled, self._grads, self._update, self._observed = False, None, None, None
        self.note = why
        log.warning("gdlab: running the population step eager: %s", why)

    def _call(
        self, compiled: Callable[..., Any] | None, *args: Any, **kwargs: Any
    ) -> tuple[bool, Any]:
        """(True, its value) from a compiled half, with autograd ops traced into the graph;
        (False, None) if compiling failed (then the step is eager from here on)."""
        assert compiled is not None
        try:
            with torch._dynamo.config.patch(trace_autograd_ops=True, recompile_limit=RECOMPILES):
                return True, compiled(*args, **kwargs)
        except Exception as err:  # compiling failed: the same step, eager
            text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            self._eager(f"torch.compile failed ({type(err).__name__}: {text})")
            return False, None

    def grads(
        self, params: Params, batch: Tensor | None, limits: tuple[float, float] | None = None
    ) -> tuple[Tensor, Params, tuple[Tensor, Tensor] | None]:
        """Every member's loss and gradient; at a log point (`limits`: trainer.tol and
        trainer.divergence_bound) also `point_stats`' statistics and stop codes, computed in
        the same pass when compiled."""
        if self.compiled:
            ok, out = (
                self._call(self._grads, params, batch)
                if limits is None
                else self._call(self._observed, params, batch, *limits)
            )
            if ok:
                return (*out, None) if limits is None else out
        value, gradients = self.batched(params, batch)
        if limits is None:
            return value, gradients, None
        with torch.no_grad():
            return value, gradients, self.point_stats(value, gradients, params, *limits)

    def update(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        state: dict[str, Any],
        hyper: dict[str, Any],
        lr: Tensor,
    ) -> None:
        with torch.no_grad():
            if self.compiled:
                if "step" not in state:  # a tensor: a Python int would recompile every step
                    state["step"] = torch.zeros((), dtype=torch.float64, device=lr.device)
                before = dict(state)
                ok, _ = self._call(
                    self._update, params, grads, state, **{**hyper, "lr": lr}, members=True
                )
                if ok:
                    return
                state.clear()  # a failed compile ran nothing: the eager call starts afresh
                state.update(before)
            self.rule_update(params, grads, state, **{**hyper, "lr": lr}, members=True)
