"""From a composed config to what both engines share: the problem, checked once.

A plain run (`gdlab.experiment`) and a population job (`gdlab.population.job`) train the same
problem: an objective with its data on a device, a dtype, the settings of the loop and of the
schedule. `build_problem` turns a config into that, with every check a run makes before its
first step (unknown keys, the settings table's ranges, the device, the objective's fields and
loss), so both engines refuse the same mistakes with the same one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from gdlab.config import reject_unknown_keys
from gdlab.devices import resolve_device, resolve_dtype
from gdlab.objectives import instantiate as objectives
from gdlab.objectives.base import Objective, Params
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


def build_problem(cfg: DictConfig) -> Problem:
    """Check `cfg` and build its objective on its device; user mistakes are one line."""
    reject_unknown_keys(cfg)
    device, device_note = resolve_device(plain_value(cfg.device.type))
    dtype = resolve_dtype(plain_value(cfg.device.dtype))
    values = read_values(cfg)
    check_values(values)
    objective = objectives.build_objective(cfg.objective)
    objectives.setup_objective(objective, device, dtype)  # setup() is optional
    return Problem(
        objective=objective,
        name=objectives.registered_name(objective),
        device=device,
        device_note=device_note,
        dtype=dtype,
        values=values,
        loop=loop_settings(values),
        schedule=ScheduleSpec.from_config(cfg.optimizer.schedule),
    )
