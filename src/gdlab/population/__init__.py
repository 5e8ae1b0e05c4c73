"""Many hyperparameter settings as one batched program: a population of K members.

A learning-rate sweep of a small objective is dominated by per-job overhead, while the
settings never interact. A population holds every parameter with a leading member dimension K
and trains all K settings at once, by the same rule book as a plain run (`gdlab.optim`,
`gdlab.schedules`, `gdlab.rules`), so each member's result equals its plain run's.

- `members`: the per-member hyperparameters, as columns of the settings table's batchable keys;
- `batching`: every member's loss and gradient from a `loss` written for one setting;
- `engine`: the step loop (`PopulationTrainer`) and its result;
- `job`: one population job of a sweep, from its plan to population.json;
- `tensorboard`: an HParams row per member and the curves of the best, median and worst.
"""

from gdlab.population.batching import STRATEGIES, BatchedLoss, auto_chunk_size
from gdlab.population.engine import PopulationResult, PopulationTrainer, from_config
from gdlab.population.members import Members, member_base
from gdlab.schedules import ScheduleSpec
from gdlab.settings import MEMBER_KEYS

__all__ = [
    "MEMBER_KEYS",
    "STRATEGIES",
    "BatchedLoss",
    "Members",
    "PopulationResult",
    "PopulationTrainer",
    "ScheduleSpec",
    "auto_chunk_size",
    "from_config",
    "member_base",
]
