"""Mini-batch sampling: a fresh random permutation of the rows per epoch, one order per seed.

A plain run has one seed (one generator); a population has one generator per distinct seed,
and each member reads the order of its own seed, so members draw exactly the batches their
plain runs draw. All orders advance in lockstep (a batch per loss evaluation), so one
position serves them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def data_shape(objective: Any) -> tuple[int | None, int | None]:
    """(n_samples, batch_size) of an objective; (None, None) for one without data.

    Read with getattr: the objective contract makes both optional (no base class needed).
    """
    return getattr(objective, "n_samples", None), getattr(objective, "batch_size", None)


def uses_mini_batches(objective: Any) -> bool:
    n, batch_size = data_shape(objective)
    return n is not None and batch_size is not None and batch_size < n


class BatchSampler:
    """Sample indices for mini-batches, on the device, from one generator per seed."""

    def __init__(
        self,
        n_samples: int,
        batch_size: int,
        generators: torch.Generator | Sequence[torch.Generator],
        device: torch.device,
    ) -> None:
        self.n_samples = n_samples
        self.batch_size = batch_size
        if isinstance(generators, torch.Generator):
            generators = [generators]
        self.generators = list(generators)
        self.device = device
        self._orders: list[Tensor] | None = None
        self._stacked: Tensor | None = None
        self._position = n_samples

    def _advance(self) -> int:
        """Start a new epoch when the next batch does not fit; returns the batch's start."""
        if self._position + self.batch_size > self.n_samples:
            self._orders = [
                torch.randperm(self.n_samples, generator=g, device=self.device)
                for g in self.generators
            ]
            self._stacked = None
            self._position = 0
        start = self._position
        self._position += self.batch_size
        return start

    def next(self) -> Tensor:
        """The next batch of the first (a plain run's only) seed: indices [batch_size]."""
        start = self._advance()
        assert self._orders is not None
        return self._orders[0][start : self._position]

    def next_per_member(self, slots: Tensor) -> Tensor:
        """The next batch of every member: indices [members, batch_size]; `slots` maps each
        member to its seed's generator."""
        start = self._advance()
        if self._stacked is None:
            assert self._orders is not None
            self._stacked = torch.stack(self._orders)
        return self._stacked.index_select(0, slots)[:, start : self._position]

    def state_dict(self) -> dict[str, Any]:
        """A plain run's sampler state, for its checkpoint."""
        return {
            "generator": self.generators[0].get_state(),
            "order": None if self._orders is None else self._orders[0].cpu(),
            "position": self._position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generators[0].set_state(state["generator"])
        order = state["order"]
        self._orders = None if order is None else [order.to(self.device)]
        self._stacked = None
        self._position = int(state["position"])
