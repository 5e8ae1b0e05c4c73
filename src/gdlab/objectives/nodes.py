"""Config nodes for registered objectives, built from their constructor signatures.

`objective=NAME` needs a config node in Hydra's group `objective`. A package may ship
`objective/NAME.yaml`; when it does not, gdlab generates the node from the class: every
constructor parameter becomes a field, typed from its annotation where OmegaConf can check the
type (int, float, bool, str, Path, enums, lists and dicts of those, Optional of those; anything
else is `Any` and left to the constructor to check), its default as the field's default, and a
parameter without a default a required field (`???`) that the command line must fill.

The nodes are stored in Hydra's ConfigStore, so they behave like any structured config:
`objective.x0=abc` for a float list and `objective.typo=1` are refused while composing.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import pathlib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from gdlab.objectives.registry import ObjectiveEntry, Registry, registry

SCALARS: tuple[type, ...] = (int, float, bool, str, pathlib.Path)
SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
#: keys Hydra's instantiate reserves; a parameter with one of these names is left out
RESERVED = {"_target_", "_args_", "_recursive_", "_convert_", "_partial_"}
UNAVAILABLE_TARGET = "gdlab.objectives.registry.unavailable"


def node_type(annotation: Any) -> Any:
    """The OmegaConf-checkable type for a parameter annotation, or Any."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return Any
    if annotation in SCALARS or (inspect.isclass(annotation) and issubclass(annotation, enum.Enum)):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = node_type(rest[0])
            return Any if inner is Any else Optional[inner]  # noqa: UP045 (OmegaConf needs it)
        return Any
    if origin in SEQUENCES:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            same = len(set(args)) == 1
            return list[node_type(args[0])] if args and same else list[Any]
        return list[node_type(args[0])] if args else list[Any]
    if origin in MAPPINGS:
        key, value = args if len(args) == 2 else (str, Any)
        return dict[key, node_type(value)] if key in (str, int) else dict[str, Any]
    return Any


def plain(value: Any) -> Any:
    """A default as config data: tuples become lists, recursively."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def make_field(default: Any) -> dataclasses.Field:
    if default is MISSING or not isinstance(default, list | dict):
        return dataclasses.field(default=default)
    return dataclasses.field(default_factory=lambda: plain(default))


def accepts(name: str, typ: Any, default: Any) -> bool:
    """Whether OmegaConf can hold this field with this type and default."""
    probe = dataclasses.make_dataclass("Probe", [(name, typ, make_field(default))])
    try:
        OmegaConf.structured(probe)
    except Exception:
        return False
    return True


def signature_of(cls: type) -> inspect.Signature:
    try:
        return inspect.signature(cls, eval_str=True)
    except Exception:  # an annotation that names something not importable at runtime
        return inspect.signature(cls)


def config_fields(cls: type) -> list[tuple[str, Any, dataclasses.Field]]:
    """(name, type, field) for each constructor parameter a config can set."""
    fields = []
    for param in signature_of(cls).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            continue
        if param.name in RESERVED:
            continue
        default = MISSING if param.default is param.empty else plain(param.default)
        typ = node_type(param.annotation)
        if default is None and typ is not Any and typing.get_origin(typ) is not typing.Union:
            typ = Optional[typ]  # noqa: UP045
        if not accepts(param.name, typ, default):
            typ = Any
            if not accepts(param.name, typ, default):
                continue  # a default no config can hold: the constructor keeps it
        fields.append((param.name, typ, make_field(default)))
    return fields


def config_node(entry: ObjectiveEntry) -> type:
    """A dataclass whose instance is the objective's config node (`_target_` plus fields)."""
    assert entry.cls is not None
    fields: list[tuple[str, Any, dataclasses.Field]] = [
        ("_target_", str, dataclasses.field(default=entry.target))
    ]
    fields += config_fields(entry.cls)
    name = "".join(part.capitalize() for part in entry.name.replace("-", "_").split("_"))
    return dataclasses.make_dataclass(f"{name}ObjectiveConfig", fields)


def yaml_presets(folders: Iterable[Path]) -> dict[str, Path]:
    """`objective/*.yaml` in the given config folders, first folder winning, by name."""
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted((Path(folder) / "objective").glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def search_folders(gdlab_configs: str | Path, reg: Registry) -> list[Path]:
    """The config folders, in the order Hydra searches them: gdlab's, then plugins'."""
    return [Path(gdlab_configs)] + [d.path for d in reg.config_dirs if d.path is not None]


def register_objective_configs(
    gdlab_configs: str | Path,
    reg: Registry | None = None,
    store: ConfigStore | None = None,
) -> list[str]:
    """Store a node in group `objective` for each registered name without a YAML file.

    Usable objectives get their generated node; unusable ones a node whose `_target_` raises
    their one-line problem, so selecting one reports the plugin's problem rather than "not
    found". Returns the names stored.
    """
    reg = reg or registry()
    store = store or ConfigStore.instance()
    presets = yaml_presets(search_folders(gdlab_configs, reg))
    stored = []
    for name, entry in sorted(reg.entries.items()):
        if name in presets:
            continue  # the package's own YAML is the node
        provider = f"gdlab entry point ({entry.package})"
        node: Any
        if entry.problem is None:
            try:
                node = config_node(entry)
            except Exception as err:  # e.g. a signature inspect cannot read
                reg.entries[name] = dataclasses.replace(
                    entry, cls=None, problem=f"cannot build its config from the constructor: {err}"
                )
                reg.problems.append(str(reg.entries[name].error()))
                node = {"_target_": UNAVAILABLE_TARGET, "name": name}
        else:
            node = {"_target_": UNAVAILABLE_TARGET, "name": name}
        store.store(group="objective", name=name, node=node, provider=provider)
        stored.append(name)
    return stored


def preset_problems(gdlab_configs: str | Path, reg: Registry) -> dict[str, str]:
    """YAML presets (not named like an entry point) that select an objective that cannot be
    used, through their `_target_` or their defaults list: name -> one line saying why."""
    import yaml

    found: dict[str, str] = {}
    presets = yaml_presets(search_folders(gdlab_configs, reg))
    for name, path in sorted(presets.items()):
        if name in reg.entries:
            continue
        try:
            node = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            found[name] = f"objective preset {name!r} ({path}): cannot be read: {reason}"
            continue
        if not isinstance(node, dict):
            continue
        used: list[ObjectiveEntry] = []
        target = node.get("_target_")
        if isinstance(target, str) and reg.for_target(target) is not None:
            used.append(reg.for_target(target))  # type: ignore[arg-type]
        for item in node.get("defaults") or []:
            # `- good` (this group) or `- /objective: good`
            if isinstance(item, dict) and len(item) == 1:
                key, item = next(iter(item.items()))
                item = item if str(key).strip("/") == "objective" else None
            if isinstance(item, str) and item in reg.entries:
                used.append(reg.entries[item])
        broken = next((e for e in used if e.problem is not None), None)
        if broken is not None:
            found[name] = (
                f"objective preset {name!r} ({path}) uses objective {broken.name!r}, which "
                f"cannot be used: {broken.problem}"
            )
    return found


def unusable_names(gdlab_configs: str | Path, reg: Registry | None = None) -> set[str]:
    """Every `objective=NAME` that can't be used: broken entry points and the presets on them."""
    reg = reg or registry()
    broken = {name for name, entry in reg.entries.items() if entry.problem is not None}
    return broken | set(preset_problems(gdlab_configs, reg))


def objectives_help(gdlab_configs: str | Path, reg: Registry | None = None) -> str:
    """The objectives section of `gdlab --help`: every usable name, its package and summary,
    the usable presets, then every objective that cannot be used with the reason (one line
    each: broken entry points, the presets that select them, unusable config folders)."""
    reg = reg or registry()
    width = max([len(n) for n in reg.entries] + [12]) + 2
    lines = [
        "== Objectives ==",
        "Pick one with objective=NAME; change a field with objective.FIELD=VALUE",
        "",
    ]
    for entry in reg.usable():
        summary = f" {entry.summary}" if entry.summary else ""
        lines.append(f"  {entry.name:<{width}}[{entry.package}]{summary}")
    broken_presets = preset_problems(gdlab_configs, reg)
    presets = sorted(
        set(yaml_presets(search_folders(gdlab_configs, reg)))
        - set(reg.entries)
        - set(broken_presets)
    )
    if presets:
        lines += ["", f"  presets (YAML): {', '.join(presets)}"]
    problems = [*reg.problems, *broken_presets.values()]
    if problems:
        lines += ["", "== Objectives that cannot be used =="]
        lines += [f"  {problem}" for problem in problems]
    # The help template is a string.Template: a literal "$" must be doubled.
    return "\n".join(lines).replace("$", "$$")


def register_help_resolver(gdlab_configs: str | Path) -> None:
    """`${gdlab.objectives_help:}`, used by the help template in configs/config.yaml."""
    if not OmegaConf.has_resolver("gdlab.objectives_help"):
        OmegaConf.register_new_resolver(
            "gdlab.objectives_help", lambda: objectives_help(gdlab_configs)
        )
