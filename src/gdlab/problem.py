"""From a composed config to what both engines share: the problem, checked once.

A plain run (`gdlab.experiment`) and a population job (`gdlab.population.job`) train the same
problem: an objective with its data on a device, a dtype, the settings of the loop and of the
schedule. `build_problem` turns a config into that, with every check a run makes before its
first step (unknown keys, the settings table's ranges, the device, the objective's fields and
loss), so both engines refuse the same mistakes with the same one line.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gdlab.batches import data_shape, uses_mini_batches
from gdlab.config import reject_unknown_keys
from gdlab.curvature import SharpnessSettings
from gdlab.devices import resolve_device, resolve_dtype
from gdlab.objectives import instantiate as objectives
from gdlab.objectives.base import Objective, Params
from gdlab.rules import curvature
from gdlab.schedules import ScheduleSpec
from gdlab.settings import check_values, plain_value, read_values
from gdlab.trainer import TrainerSettings, default_log_every


@dataclass
class Problem:
    """What a run trains, on what, for how long: everything but the member hyperparameters."""

    objective: Objective
    name: str  # the registry's name for the objective (plugins included)
    device: torch.device
    device_note: str  # what `device=auto` chose, and why
    dtype: torch.dtype
    values: dict[str, Any]  # every key of the settings table, checked
    loop: TrainerSettings
    schedule: ScheduleSpec
    #: the objective's config fields: with `name`, what makes two runs the same problem
    fields: dict[str, Any]
    #: when and how to measure the Hessian's extreme eigenvalues (gdlab.curvature)
    sharpness: SharpnessSettings = field(default_factory=SharpnessSettings)

    def record(self) -> dict[str, Any]:
        """The problem as results record it: runs are ranked only against the same problem
        (the same objective, fields and dtype: precision decides what counts as at f*)."""
        return {"name": self.name, "fields": self.fields, "dtype": self.dtype_name}

    @property
    def mini_batch(self) -> bool:
        return uses_mini_batches(self.objective)

    def curvature(self) -> float | None:
        """L, the largest Hessian eigenvalue, where it is constant (gdlab.rules.curvature)."""
        return curvature(self.objective, self.mini_batch)

    def float64_loss(self) -> Callable[[Params], float]:
        """The objective's loss evaluated in float64 (its data converted, not redrawn): the
        precision the excess loss f - f* is measured in, whatever the run's dtype."""
        return float64_loss(self.objective)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def minimizer(self) -> Params | None:
        return getattr(self.objective, "minimizer", None)

    @property
    def minimum(self) -> float | None:
        return getattr(self.objective, "minimum", None)

    def initial_params(self, seed: int) -> tuple[Params, torch.Generator]:
        """The start a run with `seed` draws, and the generator (which then draws batches)."""
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        start = objectives.checked_init_params(self.objective, generator, self.device, self.dtype)
        params = {k: v.detach().to(device=self.device, dtype=self.dtype) for k, v in start.items()}
        return params, generator


#: rows per float64 evaluation of an objective with data (bounds the float64 copy)
FLOAT64_ROWS = 1 << 16


def float64_twin(objective: Any, rows: slice | None = None) -> Any:
    """A shallow copy of `objective` whose floating tensors (its data) are float64; with
    `rows`, its per-sample tensors (first dimension n_samples) cut to those rows."""
    n, _ = data_shape(objective)
    twin = copy.copy(objective)
    for name, value in vars(objective).items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if rows is not None and value.dim() > 0 and value.shape[0] == n:
                value = value[rows]
            setattr(twin, name, value.double())
    return twin


def float64_loss(objective: Any) -> Callable[[Params], float]:
    """params -> the objective's full loss in float64 (its data converted, not redrawn).

    An objective with data is evaluated in row chunks (its loss is a mean over samples), so
    no float64 copy of the whole data set is made. A loss that can't run in float64 (a
    plugin's) falls back to its own dtype.
    """
    n, _ = data_shape(objective)
    chunks = (
        [None]
        if n is None
        else [slice(start, min(n, start + FLOAT64_ROWS)) for start in range(0, n, FLOAT64_ROWS)]
    )
    whole = float64_twin(objective) if n is None else None

    def loss64(params: Params) -> float:
        params64 = {k: v.detach().double() for k, v in params.items()}
        try:
            if whole is not None:
                return float(whole.loss(params64))
            total = 0.0
            for rows in chunks:
                share = (rows.stop - rows.start) / n  # type: ignore[union-attr,operator]
                total += float(float64_twin(objective, rows).loss(params64)) * share
            return total
        except Exception:  # a plugin's loss that insists on its own dtype
            return float(objective.loss(params))

    return loss64


def loop_settings(values: dict[str, Any]) -> TrainerSettings:
    """The loop's settings from the (checked) table values."""
    steps = int(values["trainer.steps"])
    return TrainerSettings(
        steps=steps,
        log_every=values["trainer.log_every"] or default_log_every(steps),
        tol=float(values["trainer.tol"]),
        divergence_bound=float(values["trainer.divergence_bound"]),
        set_to_none=values["trainer.zero_grad"] == "set_to_none",
        checkpoint_every=values["trainer.checkpoint_every"],
    )


def sharpness_settings(values: dict[str, Any]) -> SharpnessSettings:
    """The `sharpness.*` settings from the (checked) table values."""
    return SharpnessSettings(
        every=int(values["sharpness.every"]),
        tol=float(values["sharpness.tol"]),
        dense_max=int(values["sharpness.dense_max"]),
        max_iter=int(values["sharpness.max_iter"]),
    )


def build_problem(cfg: DictConfig) -> Problem:
    """Check `cfg` and build its objective on its device; user mistakes are one line."""
    reject_unknown_keys(cfg)
    device, device_note = resolve_device(plain_value(cfg.device.type))
    dtype = resolve_dtype(plain_value(cfg.device.dtype))
    values = read_values(cfg)
    check_values(values)
    objective = objectives.build_objective(cfg.objective)
    objectives.setup_objective(objective, device, dtype)  # setup() is optional
    fields = OmegaConf.to_container(cfg.objective, resolve=True)
    assert isinstance(fields, dict)
    fields.pop("_target_", None)
    return Problem(
        objective=objective,
        name=objective_choice(cfg) or objectives.registered_name(objective),
        device=device,
        device_note=device_note,
        dtype=dtype,
        values=values,
        loop=loop_settings(values),
        schedule=ScheduleSpec.from_config(cfg.optimizer.schedule),
        fields={str(k): v for k, v in fields.items()},
        sharpness=sharpness_settings(values),
    )


def objective_choice(cfg: DictConfig) -> str | None:
    """The objective option the command line chose (`saddle`, a preset of `multivariate`),
    when Hydra composed this run (for a resumed run: the choice its first command recorded in
    its `.hydra/hydra.yaml`); None otherwise."""
    from hydra.core.hydra_config import HydraConfig

    resume = cfg.trainer.get("resume")
    if resume is not None:
        try:
            saved = OmegaConf.load(Path(str(resume)) / ".hydra" / "hydra.yaml")
            choice = OmegaConf.select(saved, "hydra.runtime.choices.objective")
        except (OSError, ValueError):
            return None
    elif HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("objective")
    else:
        return None
    return None if choice is None else str(choice)
