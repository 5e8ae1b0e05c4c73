"""From a multirun's overrides to population jobs: which keys batch, which fan out.

A sweep is the cartesian product of its swept keys, as with Hydra's basic sweeper. Keys that
only change a member's hyperparameters (`gdlab.settings.BATCHABLE`) become the members of one
job; every other swept key fans out into separate jobs, exactly the jobs a plain multirun would
run, and `max_members` cuts a large population into several jobs. A job's members are stored as
the batchable axes plus a slice of their product, so a million members cost a few numbers in the
plan file, and each member's own override list (the one its plain run would have) can be rebuilt
for the summary.

No torch here: the sweeper imports this module in the process that launches the jobs.
"""

from __future__ import annotations

import decimal
import itertools
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gdlab import memory, settings
from gdlab.errors import GdlabError
from gdlab.settings import BATCHABLE, BY_KEY

#: keys that configure the sweep itself: one value for the whole sweep, never per job
SWEEP_ITSELF = ("hydra/sweeper", "hydra/launcher", "hydra.sweeper", "hydra.launcher")
#: keys a population job cannot honour at all
UNSUPPORTED = {"trainer.resume": "population jobs do not resume runs; resume a plain run"}
#: the override that marks a job as a population job, and the folder of the plan files
LABEL_KEY = "population"
PLAN_DIR = ".population"
AXES_FILE = "axes.json"


@dataclass
class Axis:
    """One swept batchable key: its values (typed as the config holds them) and their text."""

    key: str
    values: list[Any]
    strings: list[str]


@dataclass
class JobPlan:
    """One population job: what the launcher composes it with, and who its members are."""

    label: int
    overrides: list[str]  # the job's own overrides, the population label last
    order: list[str]  # every override key in command-line order
    shared: dict[str, str]  # key -> override text, for keys every member shares
    axes: list[Axis] = field(default_factory=list)
    start: int = 0  # the members are product(axes)[start:stop]
    stop: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.stop - self.start

    def combos(self) -> Iterator[tuple[int, ...]]:
        """Indices into each axis, member by member (a plain multirun's job order)."""
        ranges = [range(len(a.values)) for a in self.axes]
        return itertools.islice(itertools.product(*ranges), self.start, self.stop)

    def columns(self) -> dict[str, list[Any]]:
        """Member field -> one value per member (only the swept fields)."""
        combos = list(self.combos())
        return {BATCHABLE[a.key]: [a.values[c[i]] for c in combos] for i, a in enumerate(self.axes)}

    def member_strings(self) -> dict[str, list[str]]:
        """Config key -> each member's value as override text."""
        combos = list(self.combos())
        return {a.key: [a.strings[c[i]] for c in combos] for i, a in enumerate(self.axes)}

    def to_json(self) -> dict[str, Any]:
        """The job's own part; the axes, the same for every job, are stored once."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "axes"}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], axes: list[dict[str, Any]]) -> JobPlan:
        return cls(**data, axes=[Axis(**a) for a in axes])


def plan_path(sweep_dir: Path | str, label: Any) -> Path:
    return Path(sweep_dir) / PLAN_DIR / f"{int(label)}.json"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


def write_plans(sweep_dir: Path, plans: Sequence[JobPlan]) -> None:
    """`<sweep dir>/.population/`: the axes once (AXES_FILE), then a small file per job."""
    folder = Path(sweep_dir) / PLAN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    axes = plans[0].axes if plans else []
    assert all(p.axes is axes for p in plans), "every job of a sweep shares its axes"
    # the axes' fields as they are (asdict would deep-copy a million values first)
    _write_json(folder / AXES_FILE, [{f.name: getattr(a, f.name) for f in fields(a)} for a in axes])
    for plan in plans:
        _write_json(plan_path(sweep_dir, plan.label), plan.to_json())


def read_plan(sweep_dir: Path | str, label: Any) -> JobPlan:
    path = plan_path(sweep_dir, label)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        axes = json.loads((path.parent / AXES_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GdlabError(
            f"+{LABEL_KEY}={label}: no population plan {path}; population jobs are started by "
            "the population sweeper (gdlab -m hydra/sweeper=population ...)"
        ) from None
    return JobPlan.from_json(data, axes)


_NODES: dict[str, Any] = {}


def coerce(key: str, value: Any) -> Any:
    """A swept value converted as the config schema converts it (`'0.1'` -> 0.1, `true`).

    Numbers and booleans of the right kind go through the settings table's own conversion
    (a 10,000-value range must not build 10,000 config nodes); anything else (a quoted
    number, say) through a one-field structured node typed as the table says.
    """
    try:
        return settings.coerce(key, value)
    except GdlabError:
        pass
    node = _node_for(key)
    try:
        node.value = value
    except OmegaConfBaseException as err:
        message = str(getattr(err, "msg", err)).strip().splitlines()[0]
        raise GdlabError(f"{key}={value!r} is not allowed: {message}") from None
    return node.value


def _node_for(key: str) -> Any:
    """A structured config with one field, `value`, of the type the settings table gives
    `key` (cached per key)."""
    if key not in _NODES:
        setting = BY_KEY[key]
        kind = Optional[setting.kind] if setting.nullable else setting.kind  # noqa: UP045
        schema = make_dataclass(f"Swept_{setting.name}", [("value", kind, setting.default)])
        _NODES[key] = OmegaConf.structured(schema)
    return _NODES[key]


def is_sweep_itself(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in SWEEP_ITSELF)


def check_options(options: dict[str, Any]) -> None:
    """Refuse bad `hydra.sweeper.*` settings before any job runs, naming the key."""
    from gdlab.population.batching import STRATEGIES
    from gdlab.population.compiled import compile_choice

    strategy = options.get("strategy", "auto")
    if strategy not in STRATEGIES:
        raise GdlabError(
            f"hydra.sweeper.strategy={strategy!r} is not allowed; allowed: {', '.join(STRATEGIES)}"
        )
    compile_choice(options.get("compile", "auto"))
    for key in ("chunk_size", "hparams_members"):
        value = options.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise GdlabError(f"hydra.sweeper.{key}={value!r} must be an integer >= 1 (or null)")


def sweep_size(override: Override) -> int:
    """How many values a discrete sweep enumerates, counted without enumerating a range;
    an empty one or a range with step 0 is refused in one line naming it."""
    if override.is_range_sweep():
        value = override.value()
        if value.step == 0:
            raise GdlabError(
                f"hydra/sweeper=population: {override.input_line}: a range needs a non-zero "
                "step, range(start, stop, step)"
            )
        numbers = value.range()
        if isinstance(numbers, range):
            size = len(numbers)
        else:  # Hydra steps a float range in exact decimals: as many values as fit
            span = decimal.Decimal(value.stop) - decimal.Decimal(value.start)
            size = max(0, math.ceil(span / decimal.Decimal(value.step)))
    else:
        size = sum(1 for _ in override.sweep_iterator())
    if size == 0:
        raise GdlabError(
            f"hydra/sweeper=population: {override.input_line} is empty: range(start, stop, "
            "step) counts from start up to stop, stop excluded, so it needs start < stop "
            "(start > stop with a negative step)"
        )
    return size


def plan_sweep(
    overrides: Sequence[Override], max_members: int | None, options: dict[str, Any] | None = None
) -> list[JobPlan]:
    """Group the sweep's combinations into population jobs (see the module docstring)."""
    if max_members is not None and max_members < 1:
        raise GdlabError(f"hydra.sweeper.max_members={max_members} must be >= 1 (or null)")
    check_options(options or {})
    settings_count = 1
    for override in overrides:
        if override.is_sweep_override() and override.is_discrete_sweep():
            settings_count *= sweep_size(override)
    # the sweep's records, before a million values are listed
    memory.check_settings(settings_count, "hydra/sweeper=population")
    order: list[str] = []
    shared: dict[str, str] = {}  # non-swept overrides: every job, every member
    fanned: list[tuple[str, list[str]]] = []  # swept keys that are separate jobs
    axes: list[Axis] = []
    for override in overrides:
        key = override.key_or_group
        element = override.get_key_element()
        if key in UNSUPPORTED:
            raise GdlabError(f"hydra/sweeper=population: {key}: {UNSUPPORTED[key]}")
        if key == LABEL_KEY:
            raise GdlabError(
                f"hydra/sweeper=population: {element} is the population sweeper's own key; "
                "choose another name"
            )
        if key in order:
            raise GdlabError(f"hydra/sweeper=population: {key} is given twice")
        order.append(key)
        if not override.is_sweep_override():
            shared[key] = f"{element}={override.get_value_element_as_str()}"
            continue
        if not override.is_discrete_sweep():
            raise GdlabError(
                f"hydra/sweeper=population cannot sweep {override.input_line}: neither batched "
                "nor fanned out; only lists (a,b,c) and range(...) can be enumerated"
            )
        if is_sweep_itself(key):
            raise GdlabError(
                f"hydra/sweeper=population cannot sweep {override.input_line}: {key} configures "
                "the sweep itself (one value for all jobs), so it can be neither batched into a "
                "population nor fanned out into jobs; run one sweep per value"
            )
        strings = list(override.sweep_string_iterator())
        if key in BATCHABLE and override.type != OverrideType.DEL:
            values = [coerce(key, v) for v in override.sweep_iterator()]
            axes.append(Axis(key, values, strings))
        else:
            fanned.append((key, [f"{element}={s}" for s in strings]))

    members = 1
    for axis in axes:
        members *= len(axis.values)
    size = members if max_members is None else max_members
    plans: list[JobPlan] = []
    for combo in itertools.product(*(texts for _, texts in fanned)):
        group = dict(zip((k for k, _ in fanned), combo, strict=True))
        job_overrides = [shared.get(k) or group[k] for k in order if k in shared or k in group]
        for start in range(0, members, size):
            label = len(plans)
            plans.append(
                JobPlan(
                    label=label,
                    overrides=[*job_overrides, f"+{LABEL_KEY}={label}"],
                    order=list(order),
                    shared={**shared, **group},
                    axes=axes,
                    start=start,
                    stop=min(start + size, members),
                    options=dict(options or {}),
                )
            )
    return plans


def member_overrides(plan: JobPlan) -> list[list[str]]:
    """Each member's override list: the one a plain multirun job would have had."""
    strings = plan.member_strings()
    rows = []
    for i in range(plan.count):
        rows.append(
            [
                plan.shared[k] if k in plan.shared else f"{k}={strings[k][i]}"
                for k in plan.order
                if k in plan.shared or k in strings
            ]
        )
    return rows
