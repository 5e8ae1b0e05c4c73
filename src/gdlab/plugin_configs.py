"""Config folders that plugin packages declare, for Hydra's config search path.

A plugin package that ships YAML presets names a folder in the entry-point group
`gdlab.configs`; the folder mirrors gdlab's `configs/` tree (`objective/`, `experiment/`, ...):

    [project.entry-points."gdlab.configs"]
    my_objectives = "my_objectives.configs"

The value is a package path (an `__init__.py` is optional). gdlab's SearchPathPlugin
(`hydra_plugins.gdlab_objectives`) appends these folders to the search path of gdlab's apps,
so `objective=<preset>` finds them without any flag. This module imports nothing heavy: Hydra
loads it while scanning plugins, for every Hydra app in the environment.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

CONFIGS_GROUP = "gdlab.configs"


@dataclass(frozen=True)
class PluginConfigDir:
    """One declared config folder: where it is, or why it cannot be used."""

    package: str  # the distribution that declares it
    entry_point: str  # "name = value"
    path: Path | None
    problem: str | None = None

    def describe_problem(self) -> str:
        return (
            f"config folder (package {self.package}, entry point {self.entry_point} "
            f"in {CONFIGS_GROUP}): {self.problem}"
        )


def gdlab_config_dir() -> Path:
    """gdlab's own `configs/` tree; the same rule as `gdlab.config.config_dir()`."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parents[1] / "configs"


def distribution_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "<unknown package>"


def resolve_dir(ep: EntryPoint) -> PluginConfigDir:
    """Turn one `gdlab.configs` entry point into a folder (imports at most its parent package)."""
    package, label = distribution_name(ep), f"{ep.name} = {ep.value}"
    module = ep.value.split(":", 1)[0].strip()
    try:
        spec = importlib.util.find_spec(module)
    except Exception as err:  # a parent package that fails to import
        return PluginConfigDir(package, label, None, f"cannot import {module!r}: {err}")
    if spec is None:
        return PluginConfigDir(package, label, None, f"no package named {module!r}")
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        return PluginConfigDir(package, label, None, f"{module!r} is a module, not a folder")
    path = Path(locations[0])
    if not path.is_dir():
        return PluginConfigDir(package, label, None, f"{path} is not a folder")
    return PluginConfigDir(package, label, path)


def plugin_config_dirs(eps: Iterable[EntryPoint] | None = None) -> list[PluginConfigDir]:
    """Every declared config folder, sorted by package so the search path is reproducible."""
    if eps is None:
        eps = entry_points(group=CONFIGS_GROUP)
    found = [resolve_dir(ep) for ep in eps]
    return sorted(found, key=lambda d: (d.package, d.entry_point))
