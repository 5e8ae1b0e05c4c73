"""From a composed config to what both engines share: the problem, checked once.

A plain run (`gdlab.experiment`) and a population job (`gdlab.population.job`) train the same
problem: an objective with its data on a device, a dtype, the settings of the loop and of the
schedule. `build_problem` turns a config into that, with every check a run makes before its
first step (unknown keys, the settings table's ranges, the device, the objective's fields and
loss), so both engines refuse the same mistakes with the same one line. Before the objective
is constructed (constructors may allocate), its seed fields are checked and the memory the run
or population needs is estimated from the config values (`gdlab.memory`): a size that can't
fit is one line, never an allocator traceback, a silent kill or a hang.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gdlab import memory
from gdlab.batches import data_shape, uses_mini_batches
from gdlab.config import reject_unknown_keys
from gdlab.curvature import SharpnessSettings
from gdlab.devices import resolve_device, resolve_dtype
from gdlab.errors import GdlabError
from gdlab.objectives import instantiate as objectives
from gdlab.objectives.base import Objective, Params
from gdlab.rules import curvature
from gdlab.schedules import ScheduleSpec
from gdlab.settings import check_values, plain_value, read_values, seed_problem
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


def build_problem(cfg: DictConfig, members: int | None = None) -> Problem:
    """Check `cfg` and build its objective on its device; user mistakes are one line.

    `members`: the size of the population job this problem is shared by (None: a plain run),
    for the memory check that runs before the objective is constructed."""
    reject_unknown_keys(cfg)
    device, device_note = resolve_device(plain_value(cfg.device.type))
    dtype = resolve_dtype(plain_value(cfg.device.dtype))
    values = read_values(cfg)
    check_values(values)
    preflight(cfg, device, dtype, values, members)
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


def preflight(
    cfg: DictConfig,
    device: torch.device,
    dtype: torch.dtype,
    values: Mapping[str, Any] | None = None,
    members: int | None = None,
) -> None:
    """What must be checked before the objective is constructed (constructors and `setup`
    draw data and allocate): its seed fields, and the memory the run (members=None) or a
    population job of `members` needs. `values`: the settings table's values when the config
    has them (gdlab-check's has no optimizer: the estimate then takes sgd's)."""
    fields = objective_fields(cfg)
    check_objective_seeds(fields or {})
    check_memory(cfg, device, dtype, values or {}, members, fields)


def objective_fields(cfg: DictConfig) -> dict[str, Any] | None:
    """The objective's config fields as its constructor gets them (without `_target_`); None
    when they can't be read yet (a missing field: the constructor's check says so)."""
    try:
        node = OmegaConf.to_container(cfg["objective"], resolve=True, throw_on_missing=True)
    except Exception:  # a missing or unresolvable value: left to build_objective's one line
        return None
    if not isinstance(node, dict):
        return None
    node.pop("_target_", None)
    return {str(k): v for k, v in node.items()}


def check_objective_seeds(fields: Mapping[str, Any]) -> None:
    """Refuse an objective seed (`seed`, `data_seed`, any `*_seed` field, plugins' included)
    that no torch.Generator takes, naming the key, before the objective draws with it."""
    for key, value in fields.items():
        seed = key == "seed" or key.endswith("_seed")
        if seed and isinstance(value, int) and not isinstance(value, bool):
            message = seed_problem(f"objective.{key}", value)
            if message is not None:
                raise GdlabError(message)


def objective_class(cfg: DictConfig) -> Any:
    """The class `objective._target_` names (a registered objective's, else located by its
    path), without constructing it; None when it can't be found (build_objective says why)."""
    target = OmegaConf.select(cfg, "objective._target_")
    if target is None:
        return None
    entry = objectives.registry().for_target(str(target))
    if entry is not None:
        return entry.cls
    try:
        from hydra.utils import get_class

        return get_class(str(target))
    except Exception:
        return None


def check_memory(
    cfg: DictConfig,
    device: torch.device,
    dtype: torch.dtype,
    values: Mapping[str, Any],
    members: int | None = None,
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Refuse in one line a run (members=None) or a population job of `members` that needs
    more memory than is available, estimated from the config alone (`gdlab.memory`)."""
    fields = objective_fields(cfg) if fields is None else fields
    cls = objective_class(cfg)
    itemsize = memory.itemsize_of(dtype)
    fp = memory.footprint(cls, fields, itemsize) if cls is not None and fields else None
    need = memory.need(
        fp or memory.Footprint(), itemsize, values, members or 1, population=members is not None
    )

    def what() -> str:  # worded only when refusing
        entry = objectives.registry().for_class(cls) if isinstance(cls, type) else None
        target = OmegaConf.select(cfg, "objective._target_")
        name = objective_choice(cfg) or (entry.name if entry else str(target))
        text = memory.describe(name, fp, fields or {}, str(dtype).removeprefix("torch."))
        if members is None:
            return text
        return f"a population of {members:,} member{'' if members == 1 else 's'} of {text}"

    advice = "choose smaller sizes"
    if members is not None:
        advice += ", or fewer members a job (hydra.sweeper.max_members=N)"
    memory.check(what, need, device, advice)


def check_population_memory(cfg: DictConfig, members: int) -> None:
    """`check_memory` for a population job of `members`, before its members are listed."""
    device, _ = resolve_device(plain_value(cfg.device.type))
    dtype = resolve_dtype(plain_value(cfg.device.dtype))
    check_memory(cfg, device, dtype, read_values(cfg), members)


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
