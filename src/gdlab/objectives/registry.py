"""Every objective gdlab can run, found through the entry-point group `gdlab.objectives`.

gdlab's own objectives are declared there in its pyproject.toml, exactly as a plugin package
declares its own, so there is one path for both:

    [project.entry-points."gdlab.objectives"]
    booth = "my_objectives.booth:Booth"

Discovery never lets one bad plugin stop the others: an entry point that fails to import, a
class that breaks the contract, or a name two packages claim becomes a *problem*, a single
line naming the package, the entry point and what is wrong. The problem is raised as a
`GdlabError` when that name is selected and listed by `gdlab --help`; the other objectives keep
working. When a plugin claims the name of one of gdlab's own objectives, gdlab's wins.
"""

from __future__ import annotations

import inspect
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from gdlab.errors import GdlabError
from gdlab.objectives.base import Objective
from gdlab.plugin_configs import PluginConfigDir, distribution_name, plugin_config_dirs

OBJECTIVES_GROUP = "gdlab.objectives"
GDLAB_PACKAGE = "gdlab"
#: names usable as `objective=NAME` and as a Hydra config name
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
#: the methods every objective must have
REQUIRED_METHODS = ("init_params", "loss")


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def target_path(value: str) -> str:
    """An entry point's `module:attr` as the dotted path Hydra's `_target_` uses."""
    return value.replace(":", ".").replace(" ", "")


@dataclass(frozen=True)
class ObjectiveEntry:
    """One name in the registry: the class it stands for, or the problem that stops it."""

    name: str
    package: str
    value: str  # the entry point's "module:attr"
    cls: type | None = None
    problem: str | None = None
    #: the whole error line, when it cannot be "objective NAME (where): problem"
    message: str | None = None

    @property
    def target(self) -> str:
        return target_path(self.value)

    @property
    def where(self) -> str:
        return f"package {self.package}, entry point {self.name} = {self.value}"

    @property
    def summary(self) -> str:
        """The first line of the class docstring, for `gdlab --help`."""
        doc = self.cls.__dict__.get("__doc__") if self.cls is not None else None
        return inspect.cleandoc(doc).splitlines()[0] if doc and doc.strip() else ""

    def error(self, problem: str | None = None) -> GdlabError:
        """A one-line error about this entry: its own problem unless another is given."""
        if problem is None and self.message is not None:
            return GdlabError(self.message)
        return GdlabError(f"objective {self.name!r} ({self.where}): {problem or self.problem}")


@dataclass
class Registry:
    """The discovered objectives by name, and the problems found on the way."""

    entries: dict[str, ObjectiveEntry] = field(default_factory=dict)
    #: one line each: entries that failed, ignored duplicates, unusable config folders
    problems: list[str] = field(default_factory=list)
    config_dirs: list[PluginConfigDir] = field(default_factory=list)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def usable(self) -> list[ObjectiveEntry]:
        return [e for name, e in sorted(self.entries.items()) if e.problem is None]

    def get(self, name: str) -> ObjectiveEntry:
        """The usable entry called `name`; a GdlabError saying why when there is none."""
        entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise GdlabError(f"objective={name!r} is not an installed objective; known: {known}")
        if entry.problem is not None:
            raise entry.error()
        return entry

    def for_target(self, target: str) -> ObjectiveEntry | None:
        """The entry whose class `_target_` names, by the entry point's path or the class's own
        (a class re-exported by a package's `__init__`); gdlab's own entries first."""
        wanted = target_path(str(target))
        matches = [
            e
            for e in self.entries.values()
            if wanted in (e.target, class_path(e.cls) if e.cls is not None else None)
        ]
        matches.sort(key=lambda e: (e.package != GDLAB_PACKAGE, e.name))
        return matches[0] if matches else None

    def for_class(self, cls: type) -> ObjectiveEntry | None:
        return self.for_target(class_path(cls))


def contract_problem(obj: Any) -> str | None:
    """Why a loaded entry point cannot be an objective class, or None when it can."""
    if not inspect.isclass(obj):
        return f"it points at {type(obj).__name__} {obj!r}, not a class"
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(obj, m, None))]
    # Subclasses of the base class inherit placeholders that only raise NotImplementedError.
    if issubclass(obj, Objective):
        missing += [m for m in REQUIRED_METHODS if getattr(obj, m) is getattr(Objective, m)]
    if missing:
        names = " and ".join(sorted(set(missing)))
        return f"class {obj.__qualname__} has no {names} method (see docs/plugins.md)"
    grad = getattr(obj, "grad", None)
    if grad is not None and not callable(grad):
        return f"class {obj.__qualname__}: grad must be a method"
    return None


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def load_entry(ep: EntryPoint, package: str) -> ObjectiveEntry:
    """Import one entry point and check its class, catching everything a plugin can get wrong."""
    if not NAME_PATTERN.match(ep.name):
        return ObjectiveEntry(
            ep.name,
            package,
            ep.value,
            problem="the name must be letters, digits, '_' or '-', starting with a letter or '_'",
        )
    try:
        obj = ep.load()
    except Exception as err:  # ImportError, SyntaxError, AttributeError, anything it raises
        problem = f"cannot import it: {first_line(err)}"
        return ObjectiveEntry(ep.name, package, ep.value, problem=problem)
    problem = contract_problem(obj)
    return ObjectiveEntry(ep.name, package, ep.value, obj if problem is None else None, problem)


def discover(
    eps: Iterable[EntryPoint] | None = None,
    config_eps: Iterable[EntryPoint] | None = None,
) -> Registry:
    """Build a registry from entry points (by default, every installed one)."""
    if eps is None:
        eps = entry_points(group=OBJECTIVES_GROUP)
    claims: dict[str, list[tuple[str, EntryPoint]]] = defaultdict(list)
    for ep in eps:
        claims[ep.name].append((distribution_name(ep), ep))

    registry = Registry(config_dirs=plugin_config_dirs(config_eps))
    for name, claimants in sorted(claims.items()):
        packages = sorted({package for package, _ in claimants})
        if len(packages) > 1:
            ours = [(p, ep) for p, ep in claimants if p == GDLAB_PACKAGE]
            others = [(p, ep) for p, ep in claimants if p != GDLAB_PACKAGE]
            if ours:
                for package, ep in others:
                    registry.problems.append(
                        f"objective {name!r} (package {package}, entry point {name} = "
                        f"{ep.value}): the name is taken by gdlab's own objective "
                        f"({ours[0][1].value}); this entry point is ignored, rename it"
                    )
                claimants = ours
            else:
                listed = " and ".join(f"{p} ({name} = {ep.value})" for p, ep in claimants)
                message = (
                    f"objective {name!r} is claimed by {len(packages)} packages: {listed}; "
                    "uninstall one or rename its entry point"
                )
                registry.entries[name] = ObjectiveEntry(
                    name,
                    " and ".join(packages),
                    claimants[0][1].value,
                    problem="claimed by more than one package",
                    message=message,
                )
                registry.problems.append(message)
                continue
        package, ep = claimants[0]
        entry = load_entry(ep, package)
        registry.entries[name] = entry
        if entry.problem is not None:
            registry.problems.append(str(entry.error()))
    registry.problems += [d.describe_problem() for d in registry.config_dirs if d.problem]
    return registry


_current: Registry | None = None


def registry() -> Registry:
    """The registry of installed objectives, discovered once per process."""
    global _current
    if _current is None:
        _current = discover()
    return _current


@contextmanager
def use_registry(replacement: Registry) -> Iterator[Registry]:
    """Swap the process-wide registry (tests, notebooks that discover from a folder)."""
    global _current
    previous, _current = _current, replacement
    try:
        yield replacement
    finally:
        _current = previous


def unavailable(name: str) -> None:
    """`_target_` of the config node of an objective that cannot be used: says why."""
    entry = registry().entries.get(name)
    if entry is None:
        raise GdlabError(f"objective={name!r} is not an installed objective")
    raise entry.error()
