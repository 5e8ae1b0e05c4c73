"""From an objective's config node to a checked instance, with one-line errors.

Everything a plugin can get wrong at run time is caught here, before the first step, and
reported as a `GdlabError` naming the objective, its package and its entry point: a required
field left out, a constructor that refuses its fields, `init_params` that does not return
named floating-point tensors, and a `loss` that is not a scalar tensor on the run's device
that depends on the parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from gdlab.errors import GdlabError
from gdlab.objectives.base import Objective, Params
from gdlab.objectives.nodes import UNAVAILABLE_TARGET
from gdlab.objectives.registry import GDLAB_PACKAGE, ObjectiveEntry, first_line, registry


def entry_for(objective: Any) -> ObjectiveEntry | None:
    return registry().for_class(type(objective))


def objective_error(objective: Any, problem: str) -> GdlabError:
    """A one-line error about an instance, naming its package and entry point when known."""
    entry = entry_for(objective)
    if entry is not None:
        return entry.error(problem)
    cls = type(objective)
    return GdlabError(f"objective {cls.__module__}.{cls.__qualname__}: {problem}")


def registered_name(objective: Any) -> str:
    """The name a run reports: the registry's, else the class's `name`, else the class name."""
    entry = entry_for(objective)
    if entry is not None:
        return entry.name
    return getattr(objective, "name", "") or type(objective).__name__.lower()


def missing_fields(node: DictConfig) -> list[str]:
    keys = sorted(OmegaConf.missing_keys(node))
    return [k if k.startswith("objective.") else f"objective.{k}" for k in keys]


def build_objective(node: DictConfig | None) -> Objective:
    """Instantiate the objective from its config node, turning every user mistake into one line."""
    if node is None or "_target_" not in node:
        raise GdlabError("objective has no _target_: choose one with objective=<name>")
    target = str(node._target_)
    if target == UNAVAILABLE_TARGET:
        raise registry().get(str(node.get("name")))
    entry = registry().for_target(target)
    label = f"objective {entry.name!r} ({entry.where})" if entry else f"objective ({target})"
    if entry is not None and entry.problem is not None:
        raise entry.error()
    missing = missing_fields(node)
    if missing:
        given = " ".join(f"{key}=VALUE" for key in missing)
        raise GdlabError(
            f"{label} needs {' and '.join(missing)}: no default in the constructor; "
            f"add {given} to the command line"
        )
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, GdlabError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise GdlabError(f"{label}: {cause}") from None
        if cause is None or (isinstance(cause, ImportError | AttributeError) and entry is None):
            # Hydra could not locate `_target_`: a typo in a YAML preset
            raise GdlabError(f"{label}: {first_line(err)}") from err
        if entry is not None and entry.package != GDLAB_PACKAGE:
            raise GdlabError(f"{label}: its constructor raised {first_line(cause)}") from cause
        raise


def setup_objective(objective: Objective, device: torch.device, dtype: torch.dtype) -> None:
    """Call the optional `setup(device, dtype)`; a plugin's failure there is one line."""
    setup = getattr(objective, "setup", None)
    if setup is None:
        return
    try:
        setup(device, dtype)
    except GdlabError:
        raise
    except Exception as err:
        entry = entry_for(objective)
        if entry is None or entry.package == GDLAB_PACKAGE:
            raise
        raise objective_error(objective, f"setup raised {first_line(err)}") from err


def checked_init_params(
    objective: Objective, generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> Params:
    """`objective.init_params(...)`, refused unless it is a dict of floating-point tensors."""
    try:
        raw = objective.init_params(generator, device, dtype)
    except GdlabError:
        raise
    except Exception as err:
        raise objective_error(objective, f"init_params raised {first_line(err)}") from err
    if not isinstance(raw, Mapping) or not raw:
        raise objective_error(
            objective,
            f"init_params must return a non-empty dict of named tensors; it returned {raw!r:.60}",
        )
    for name, value in raw.items():
        if not isinstance(name, str) or not isinstance(value, Tensor):
            raise objective_error(
                objective,
                f"init_params must map names to tensors; {name!r} maps to {type(value).__name__}",
            )
        if not value.is_floating_point():
            raise objective_error(
                objective,
                f"init_params: parameter {name!r} has dtype {value.dtype}; it must be floating "
                "point (use the dtype argument)",
            )
    return dict(raw)


def same_device(actual: torch.device, wanted: torch.device) -> bool:
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)


def check_loss(objective: Objective, params: Params, device: torch.device) -> Tensor:
    """Call `loss` once on `params` and refuse what the trainer cannot use; returns the loss."""
    try:
        value = objective.loss(params)
    except GdlabError:
        raise
    except Exception as err:
        raise objective_error(objective, f"loss(params) raised {first_line(err)}") from err
    if not isinstance(value, Tensor):
        raise objective_error(
            objective, f"loss must return a torch.Tensor; it returned {type(value).__name__}"
        )
    if value.dim() != 0:
        raise objective_error(
            objective,
            f"loss returned a tensor of shape {tuple(value.shape)}; it must be a scalar "
            "(shape ()), e.g. end with .sum() or .mean()",
        )
    if not same_device(value.device, device):
        raise objective_error(
            objective,
            f"loss returned a tensor on {value.device}, but the run's device is {device}; "
            "create tensors on the device setup() and init_params() are given",
        )
    if not value.is_floating_point():
        raise objective_error(objective, f"loss returned dtype {value.dtype}; it must be a float")
    if torch.is_grad_enabled() and not value.requires_grad:
        raise objective_error(
            objective,
            "loss does not depend on the parameters (its result has no gradient); compute it "
            "from the params it is given",
        )
    return value
