"""The objective contract: what a built-in objective or a plugin author writes.

An objective is a small class that Hydra builds from its config (`_target_` plus its fields):

- the constructor validates its fields and raises `GdlabError` naming the bad one;
- `init_params(generator, device, dtype)` returns the starting point as named tensors;
- `loss(params)` returns a scalar tensor for ONE setting of the parameters, in plain torch;
  objectives with data take `loss(params, batch)` where `batch` holds sample indices, a `slice`
  of rows, or None for the full batch, and set `n_samples` and `batch_size`;
- optional `setup(device, dtype)`: build data on the run's device before anything else;
- optional `grad(params)`: an analytic gradient, used to check autograd;
- optional `minimizer` (named tensors) and `minimum` (a float): the known optimum;
- optional class method `memory_footprint(fields, itemsize)`: what the config fields imply in
  memory (`gdlab.memory.Footprint`: data, temporaries, parameter count; or an int of bytes),
  called BEFORE the class is built, so that a size that can't fit is refused in one line.

The framework does the rest: devices, the training loop, logging and plots. Subclassing
`Objective` is a convenience, not a requirement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from gdlab.errors import GdlabError

Params = dict[str, Tensor]


class Objective:
    """Base class with the optional parts of the contract filled in with 'unknown'."""

    #: short name used in metrics and summaries; the registry name wins when there is one
    name: ClassVar[str] = ""
    #: samples in the data set (None: the objective has no data, the loss is deterministic)
    n_samples: int | None = None
    #: mini-batch size (None: full batch)
    batch_size: int | None = None
    #: the known optimum, filled by objectives that know it (after `setup`)
    minimizer: Params | None = None
    minimum: float | None = None

    @classmethod
    def memory_footprint(cls, fields: Mapping[str, Any], itemsize: int) -> Any:
        """What a run of this objective holds in memory for these config fields (the
        constructor's keyword arguments, before it runs), as a `gdlab.memory.Footprint` or a
        number of bytes; None: unknown (small). Raise ValueError or TypeError to give up on a
        field the constructor will refuse anyway."""
        return None

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        """Build data or constants on the run's device; objectives without data need nothing."""

    def init_params(
        self, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Params:
        raise NotImplementedError

    def loss(self, params: Params) -> Tensor:
        raise NotImplementedError


class FixedStart(Objective):
    """An objective whose one parameter `x` starts at the fixed point `self.x0` (no RNG)."""

    x0: list[float]

    def init_params(
        self, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Params:
        return {"x": torch.tensor(self.x0, device=device, dtype=dtype)}


def require(condition: bool, message: str) -> None:
    """Raise a user-facing error unless `condition` holds; the message names the field."""
    if not condition:
        raise GdlabError(message)


def finite_float(key: str, value: object) -> float:
    """Coerce a config value to a finite float, naming the key when it is not one."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise GdlabError(f"{key}={value!r} is not a number") from None
    require(math.isfinite(number), f"{key}={value!r} must be a finite number")
    return number


def float_vector(key: str, values: object, length: int | None = None) -> list[float]:
    """Coerce a config list to floats, optionally of a required length."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise GdlabError(f"{key}={values!r} must be a list of numbers")
    out = [finite_float(f"{key}[{i}]", v) for i, v in enumerate(values)]
    if length is not None:
        require(len(out) == length, f"{key} has {len(out)} entries; expected {length}")
    return out


def positive_int(key: str, value: object) -> int:
    """Coerce a config value to an integer >= 1, naming the key when it is not one."""
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"{key}={value!r} must be an integer >= 1",
    )
    return int(value)  # type: ignore[arg-type]


def integer(key: str, value: object) -> int:
    """A config value that must be an integer (a seed), naming the key when it is not one."""
    require(
        isinstance(value, int) and not isinstance(value, bool),
        f"{key}={value!r} must be an integer",
    )
    return int(value)  # type: ignore[arg-type]


def mini_batch_size(value: object, n_samples: int) -> int | None:
    """`objective.batch_size`: None (full batch) or an integer in [1, n_samples]."""
    if value is None:
        return None
    size = positive_int("objective.batch_size", value)
    require(
        size <= n_samples,
        f"objective.batch_size={size} exceeds objective.n_samples={n_samples}",
    )
    return size
