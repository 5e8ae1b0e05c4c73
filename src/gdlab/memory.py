"""Will it fit? The memory a run or a population needs, estimated before anything is allocated.

A problem too large for the machine used to fail late: an allocator traceback, a process the
kernel killed without a word, or a constructor that built a Python list of 10^11 numbers until
the machine ran out. gdlab now estimates what a run needs from its config values alone, before
the objective is constructed, and refuses in one line when that exceeds what is available:

- `available()`: the smallest of the kernel's MemAvailable (/proc/meminfo) and what every
  memory cgroup this process is in still allows (cgroup v2 `memory.max` minus usage, v1
  `memory.limit_in_bytes` minus usage; page cache that can be dropped does not count as used).
  `GDLAB_MEMORY_LIMIT` replaces the measurement: a size such as `3G` or `512M` (powers of 1024;
  a plain number is bytes), or `off` to skip the check;
- `Footprint`: what an objective's config implies (its data, the temporaries of one loss and
  gradient, its parameter count), from the optional class method `memory_footprint(fields,
  itemsize)` of the objective contract (`gdlab.objectives.base.Objective`), which is called
  with the config fields BEFORE the class is built;
- `need`: a plain run or a population job of K members on top of that (parameters, gradients
  and the update rule's state per member, records, the dense Hessian when sharpness asks);
- `check`: the one-line refusal, naming what needs how much and how much there is.

Estimates aim at the real peak within a factor of about 1.5, erring low: the check is there to
stop what cannot fit, never to refuse what would. No torch at import: the population sweeper's
planner uses this module in the process that launches the jobs.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdlab.errors import GdlabError

#: bytes gdlab takes as available instead of measuring them; "off" skips the check
ENV = "GDLAB_MEMORY_LIMIT"
OFF = ("off", "none", "no", "false")
MEMINFO = "/proc/meminfo"
PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"
#: a v1 limit at or above this is "no limit" (the kernel writes 2**63 rounded to a page)
UNLIMITED = 2**62

#: copies of one setting's parameters a step holds besides the update rule's state: the
#: parameters, their gradient, the update's temporaries, the start and the final point
PARAM_COPIES = 5
#: the update rule's state in parameter-sized buffers (sgd: momentum; adam: two moments, ...)
STATE_BUFFERS = {"sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 3, "adagrad": 1}
#: a plain run writes every parameter into metrics.json (a Python float, then JSON text)
RECORD_BYTES_PER_PARAM = 100
#: a population member's share of its job besides its parameter-sized tensors: its columns,
#: status, step and losses (training measured about 0.3 KB a member of the two-number
#: regression, tensors included: docs/population.md)
MEMBER_BYTES = 200
#: a population sweep's memory per setting in the process that launches the jobs (basic
#: launcher: the jobs too): the plan, the records read back, the summary's rows and files
#: (a whole command measured 3.0-3.3 KB a member at 500,000 and 1,000,000 members)
SWEEP_BYTES_PER_SETTING = 3000
#: temporaries of the members evaluated at once (population.batching.CHUNK_ELEMENTS on the CPU)
CHUNK_ELEMENTS = 4 * 2**20
ITEMSIZE = {"float32": 4, "float64": 8}


@dataclass(frozen=True)
class Footprint:
    """What an objective's config implies, before the objective exists.

    `data`: bytes of its resident tensors (a data set, constants), shared by every member of a
    population; `work`: bytes of the temporaries one full-batch loss and gradient of ONE setting
    allocates (or its setup, whichever is larger); `params`: numbers in one setting's
    parameters; `host`: bytes of Python objects its constructor builds (lists of numbers), in
    host memory whatever the device; `keys`: the config fields the sizes come from, named in
    the refusal.
    """

    data: int = 0
    work: int = 0
    params: int = 0
    host: int = 0
    keys: tuple[str, ...] = ()
    #: samples in the data set (None: no data): `trainer.chunk_rows` bounds `work` by rows
    n_samples: int | None = None


@dataclass(frozen=True)
class Available:
    """Bytes that can still be allocated, and where that number comes from."""

    bytes: int
    source: str


# ---------------------------------------------------------------- sizes in words and back

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str, key: str = ENV) -> int:
    """`3G`, `512M`, `1.5GiB`, `1000000` -> bytes (K, M, G, T, P are powers of 1024)."""
    match = _SIZE.match(str(text))
    if match is None:
        raise GdlabError(
            f"{key}={text!r} is not a size: give bytes or a number with K, M, G or T "
            f"(powers of 1024), e.g. 3G, or 'off' to skip the memory check"
        )
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** ("kmgtp".index(unit) + 1 if unit else 0))


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'; three significant digits."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.3g} {unit}"


# ---------------------------------------------------------------- what is available


def available() -> Available | None:
    """What this process can still allocate: GDLAB_MEMORY_LIMIT if set, else the smallest of
    MemAvailable and each memory cgroup's headroom; None when unknown or the check is off."""
    setting = os.environ.get(ENV, "").strip()
    if setting:
        if setting.lower() in OFF:
            return None
        return Available(parse_size(setting), f"{ENV}={setting}")
    found = [a for a in (meminfo_available(), cgroup_available()) if a is not None]
    return min(found, key=lambda a: a.bytes) if found else None


def available_bytes() -> int | None:
    """`available()` in bytes (None: unknown, or GDLAB_MEMORY_LIMIT=off)."""
    found = available()
    return None if found is None else found.bytes


def meminfo_available(path: str | Path = MEMINFO) -> Available | None:
    """The kernel's estimate of memory available without swapping (MemAvailable)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    if match is None:
        return None
    return Available(int(match.group(1)) * 1024, "MemAvailable in /proc/meminfo")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, names: Sequence[str]) -> int:
    """The first of `names` found in a cgroup's memory.stat (0 if none)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    values = dict(line.split(maxsplit=1) for line in lines if " " in line)
    for name in names:
        if name in values and values[name].strip().isdigit():
            return int(values[name])
    return 0


def _ancestors(base: Path, relative: str) -> list[Path]:
    """The cgroup's directory and every parent up to the hierarchy's root, deepest first.

    Inside a container the path in /proc/self/cgroup may not exist under the mount (the
    container's own cgroup is the mount's root): then the root alone."""
    parts = [p for p in relative.strip().split("/") if p]
    folders = [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [f for f in folders if f.is_dir()] or [base]


def cgroup_available(
    proc_cgroup: str | Path = PROC_CGROUP, root: str | Path = CGROUP_ROOT
) -> Available | None:
    """The least headroom (limit minus usage, droppable page cache not counted) of the memory
    cgroups this process is in, v2 (`memory.max`) or v1 (`memory.limit_in_bytes`)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(root)
    best: Available | None = None
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        ident, controllers, relative = fields
        if ident == "0" and controllers == "":  # cgroup v2: the unified hierarchy
            base = root / "unified" if (root / "unified" / "cgroup.controllers").exists() else root
            for folder in _ancestors(base, relative):
                limit_text = _text(folder / "memory.max")
                if limit_text is None or not limit_text.isdigit():
                    continue  # "max", or no memory controller here
                usage = _read_int(folder / "memory.current") or 0
                usage -= _stat(folder / "memory.stat", ("inactive_file",))
                best = _least(best, int(limit_text), usage, folder / "memory.max")
        elif "memory" in controllers.split(","):  # cgroup v1
            for folder in _ancestors(root / "memory", relative):
                limit = _read_int(folder / "memory.limit_in_bytes")
                if limit is None or limit >= UNLIMITED:
                    continue
                usage = _read_int(folder / "memory.usage_in_bytes") or 0
                usage -= _stat(folder / "memory.stat", ("total_inactive_file", "inactive_file"))
                best = _least(best, limit, usage, folder / "memory.limit_in_bytes")
    return best


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _least(best: Available | None, limit: int, usage: int, where: Path) -> Available:
    headroom = max(0, limit - max(0, usage))
    if best is not None and best.bytes <= headroom:
        return best
    return Available(headroom, f"cgroup limit {format_bytes(limit)} in {where}")


# ---------------------------------------------------------------- an objective's footprint


def with_defaults(cls: type, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor's arguments as the config gives them, its defaults filling the rest."""
    arguments = dict(fields)
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return arguments
    for p in parameters:
        if p.default is not p.empty:
            arguments.setdefault(p.name, p.default)
    return arguments


def count(value: Any) -> int:
    """A size field as a number >= 0 (a list's length for a list); ValueError otherwise, so
    that an estimate gives up on a value the constructor will refuse with its own line."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return len(value)
    number = int(value)
    if number != value:
        raise ValueError(value)
    return max(0, number)


def footprint(cls: Any, fields: Mapping[str, Any], itemsize: int) -> Footprint | None:
    """The objective class's own estimate for these config fields, or None when it has none
    (or gives up on a field the constructor is going to refuse anyway)."""
    method = getattr(cls, "memory_footprint", None)
    if method is None:
        return None
    try:
        found = method(dict(fields), itemsize)
    except (TypeError, ValueError, KeyError, OverflowError):
        return None
    if isinstance(found, int) and not isinstance(found, bool):
        return Footprint(data=max(0, found))
    return found if isinstance(found, Footprint) else None


# ---------------------------------------------------------------- a run's need


@dataclass(frozen=True)
class Need:
    """Bytes a run needs on the host and on its device (the same memory on the CPU)."""

    host: int
    device: int


def need(
    fp: Footprint,
    itemsize: int,
    values: Mapping[str, Any],
    members: int = 1,
    population: bool = False,
) -> Need:
    """What a plain run (`population=False`) or a population job of `members` needs.

    `values` are the settings table's values (`gdlab.settings.read_values`): the update rule,
    `trainer.chunk_rows`, the `sharpness.*` keys.
    """
    rule = str(values.get("optimizer.name", "sgd"))
    state = STATE_BUFFERS.get(rule, 3) + bool(values.get("optimizer.amsgrad"))
    per_setting = fp.params * itemsize * (PARAM_COPIES + state)
    work = fp.work
    rows = values.get("trainer.chunk_rows")
    if rows and fp.n_samples and rows < fp.n_samples:
        work = work * rows // fp.n_samples
    sharp = 0
    if int(values.get("sharpness.every") or 0) > 0 and fp.params:
        if fp.params <= int(values.get("sharpness.dense_max") or 0):
            sharp = 3 * fp.params * fp.params * 8  # the dense Hessian, its symmetric part, eigvalsh
        else:
            sharp = (int(values.get("sharpness.max_iter") or 100) + 4) * fp.params * 8
    if not population:
        return Need(
            host=fp.host + fp.params * RECORD_BYTES_PER_PARAM,
            device=fp.data + work + per_setting + sharp,
        )
    work = max(work, CHUNK_ELEMENTS * itemsize) if members > 1 else work
    return Need(
        host=fp.host + members * MEMBER_BYTES,
        device=fp.data + work + members * (per_setting + sharp),
    )


def device_available(device: Any) -> Available | None:
    """Free memory on a CUDA device (torch.cuda.mem_get_info); None for the CPU."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    if os.environ.get(ENV, "").strip().lower() in OFF:
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return Available(int(free), f"free on {device}")


def check(
    what: str | Callable[[], str],
    needed: Need,
    device: Any = "cpu",
    advice: str = "choose smaller sizes",
) -> None:
    """Refuse in one line when `needed` exceeds what is available (see `available`); `what`
    names the run (a callable: worded only when refusing), `advice` says what to do."""
    on_cuda = getattr(device, "type", str(device)) == "cuda"
    host = needed.host if on_cuda else needed.host + needed.device
    _refuse_over(what, host, available(), "memory", advice)
    if on_cuda:
        _refuse_over(what, needed.device, device_available(device), f"{device} memory", advice)


def _refuse_over(
    what: str | Callable[[], str], needed: int, found: Available | None, kind: str, advice: str
) -> None:
    if found is None or needed <= found.bytes:
        return
    name = what() if callable(what) else what
    raise GdlabError(
        f"{name} needs about {format_bytes(needed)} of {kind}, more than the "
        f"{format_bytes(found.bytes)} available ({found.source}); {advice} "
        f"({ENV}=off skips this check)"
    )


def describe(name: str, fp: Footprint | None, fields: Mapping[str, Any], dtype: str) -> str:
    """`objective=linear_regression (objective.n_samples=10000000000, float32)`."""
    shown = []
    for key in fp.keys if fp is not None else ():
        if key in fields:
            shown.append(f"objective.{key}={_short(fields[key])}")
    return f"objective={name} ({', '.join([*shown, dtype])})"


def _short(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 6:
        return f"[{len(value)} entries]"
    return str(value).replace(" ", "")


def check_settings(settings: int, what: str) -> None:
    """A population sweep's own records (plan, summary) for `settings` settings: refused in
    one line when they can't fit, before any value is enumerated."""
    if settings <= 0:
        return
    bytes_needed = settings * SWEEP_BYTES_PER_SETTING
    found = available()
    if found is None or bytes_needed <= found.bytes:
        return
    raise GdlabError(
        f"{what}: {settings:,} settings need about {format_bytes(bytes_needed)} of memory for "
        f"their records and summary (about {SWEEP_BYTES_PER_SETTING // 1000} KB a setting), "
        f"more than the {format_bytes(found.bytes)} available ({found.source}); sweep fewer "
        f"values ({ENV}=off skips this check)"
    )


def itemsize_of(dtype: Any) -> int:
    """Bytes per number of `device.dtype` (a name or a torch dtype)."""
    name = str(dtype).removeprefix("torch.")
    return ITEMSIZE.get(name, 8)
