"""`hydra/sweeper=population`: a multirun whose learning rates, momenta, ... share one job.

The sweep is expanded like Hydra's basic sweeper (the cartesian product of every swept key).
Combinations that differ only in batchable keys (the settings table's batchable rows:
optimizer.lr, momentum, dampening, nesterov, weight_decay, clip_norm and trainer.seed) become
the members of ONE job that trains them all at once (`gdlab.population`); every other swept key
fans out into separate jobs through the configured launcher (basic, joblib, submitit), and
`max_members` cuts a large population into several jobs so that a parallel launcher can spread
it. Each job's member list is written to `<sweep dir>/.population/<n>.json`; the job itself is
composed with its non-batchable overrides plus `+population=<n>`.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("gdlab")


@dataclass
class PopulationSweeperConf:
    _target_: str = "hydra_plugins.gdlab_population.population_sweeper.PopulationSweeper"
    #: members per job at most (null: one job per group of batchable combinations)
    max_members: int | None = None
    #: how to batch the objective's loss: auto, broadcast, vmap or loop
    strategy: str = "auto"
    #: members per batched evaluation (null: chosen from the objective's data size)
    chunk_size: int | None = None
    #: TensorBoard HParams rows (one run directory each) per job at most; null: every member
    hparams_members: int | None = 400
    #: the step compiled by torch.compile: auto (large jobs), true or false
    compile: Any = "auto"
    #: sweep overrides given in the config, as Hydra's basic sweeper takes them
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="population", node=PopulationSweeperConf, provider="gdlab"
)


class PopulationSweeper(Sweeper):
    """Hydra Sweeper: batchable keys become population members, the rest separate jobs."""

    def __init__(
        self,
        max_members: int | None = None,
        strategy: str = "auto",
        chunk_size: int | None = None,
        hparams_members: int | None = 400,
        params: dict[str, str] | None = None,
        compile: Any = "auto",
    ) -> None:
        super().__init__()
        self.max_members = max_members
        self.options = {
            "strategy": strategy,
            "chunk_size": chunk_size,
            "hparams_members": hparams_members,
            "compile": compile,
        }
        self.params = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        from gdlab.population.job import population_task

        self.hydra_context = hydra_context
        self.config = config
        # Every job of this sweeper is a population job: the launcher runs `population_task`
        # (a module-level function, so joblib and submitit can pickle it) instead of the app.
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=population_task, config=config
        )

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        from hydra_plugins.gdlab_population._plan import plan_sweep, write_plans

        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(
            [*(f"{k}={v}" for k, v in self.params.items()), *arguments]
        )
        plans = plan_sweep(overrides, self.max_members, self.options)

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        write_plans(sweep_dir, plans)
        members = sum(p.count for p in plans)
        log.info(
            "gdlab: population sweep: %d setting%s in %d job%s (%s)",
            members,
            "" if members == 1 else "s",
            len(plans),
            "" if len(plans) == 1 else "s",
            ", ".join(a.key for a in plans[0].axes) or "no batchable key swept",
        )
        batch = [p.overrides for p in plans]
        self.validate_batch_is_legal(batch)  # composition errors before anything runs
        returns = list(self.launcher.launch(batch, initial_job_idx=0))
        # A job that raised was recorded by the job itself (gdlab.sweeps.job_failed) and the
        # summary shows it; as with gdlab's plain sweeps, one failure never stops the others.
        return returns

    def __repr__(self) -> str:  # shown by `--info plugins`
        return f"PopulationSweeper(max_members={self.max_members}, options={self.options})"
