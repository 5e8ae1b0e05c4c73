"""gdlab: see gradient descent work.

Config-driven experiments that train an objective with the manual-SGD loop the autograd
tutorial teaches, and log every run to TensorBoard.

From Python (docs/python.md)::

    import gdlab
    r = gdlab.run("objective=quadratic", "optimizer.lr=0.1")   # overrides as on the command line
    s = gdlab.sweep("optimizer.lr=0.01,0.1,0.5")
    gdlab.load(r.dir), gdlab.load_sweep(s.dir)

`import gdlab` loads nothing but `gdlab.errors`: the API (`gdlab.api`, which brings Hydra and
torch) is imported on first use of one of its names.
"""

from __future__ import annotations

from gdlab.errors import GdlabError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (13 ms at start-up)
if TYPE_CHECKING:
    from typing import Any

    from gdlab.api import Run, Sweep, load, load_sweep, run, sweep

__version__ = "0.1.0"
__all__ = ["GdlabError", "Run", "Sweep", "__version__", "load", "load_sweep", "run", "sweep"]

#: the names of the Python API, imported from gdlab.api on first use
_API = frozenset({"Run", "Sweep", "load", "load_sweep", "run", "sweep"})


def __getattr__(name: str) -> Any:
    if name in _API:
        from gdlab import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
