"""Built-in objectives and the objective contract (see `base`)."""

from gdlab.objectives.base import Objective, Params

__all__ = ["Objective", "Params"]
