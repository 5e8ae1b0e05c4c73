"""Starting points for the n-dimensional test functions: given, or a pattern repeated to n."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gdlab.memory import Footprint, count, with_defaults
from gdlab.objectives.base import float_vector, require


def start_vector(
    n: int | None, x0: Sequence[float] | None, pattern: Sequence[float]
) -> tuple[int, list[float]]:
    """(n, x0): `x0` fixes n when n is None; without x0 the classic `pattern` is cycled to n."""
    if n is not None:
        require(
            isinstance(n, int) and not isinstance(n, bool) and n >= 2,
            f"objective.n={n!r} must be an integer >= 2",
        )
    if x0 is None:
        n = 2 if n is None else n
        return n, [float(pattern[i % len(pattern)]) for i in range(n)]
    start = float_vector("objective.x0", x0, n)
    require(len(start) >= 2, f"objective.x0 has {len(start)} entries; expected at least 2")
    return len(start), start


def start_vector_footprint(
    cls: type, fields: Mapping[str, Any], itemsize: int, *, work: int, host: int
) -> Footprint:
    """The memory of an n-D objective whose size is `n` or the length of `x0` (start_vector):
    n numbers of data, `work` x n of the loss's temporaries and their gradients, `host` bytes
    per number of Python lists (the start, a known minimiser)."""
    args = with_defaults(cls, fields)
    n = count(args["x0"]) if args.get("x0") is not None else count(args.get("n") or 2)
    key = "n" if args.get("n") is not None or args.get("x0") is None else "x0"
    return Footprint(
        data=n * itemsize, work=work * n * itemsize, params=n, host=host * n, keys=(key,)
    )
