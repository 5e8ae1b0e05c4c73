"""Starting points for the n-dimensional test functions: given, or a pattern repeated to n."""

from __future__ import annotations

from collections.abc import Sequence

from gdlab.objectives.base import float_vector, positive_int, require


def start_vector(
    n: int | None, x0: Sequence[float] | None, pattern: Sequence[float]
) -> tuple[int, list[float]]:
    """(n, x0): `x0` fixes n when n is None; without x0 the classic `pattern` is cycled to n."""
    if n is not None:
        n = positive_int("objective.n", n)
        require(n >= 2, f"objective.n={n} must be >= 2")
    if x0 is None:
        n = 2 if n is None else n
        return n, [float(pattern[i % len(pattern)]) for i in range(n)]
    start = float_vector("objective.x0", x0, n)
    require(len(start) >= 2, f"objective.x0 has {len(start)} entries; expected at least 2")
    return len(start), start
