"""`hydra/launcher=joblib`: Hydra's joblib launcher, made to pay off for gdlab's small jobs.

Hydra's launcher (hydra-joblib-launcher) starts its worker processes when the first job is
sent, and each worker composes its job's config again, though the sweeper composed every job's
config once already to check the sweep. For runs that take a fraction of a second those two
costs decide whether the parallel sweep beats the serial one. gdlab's class removes both:

- the workers start, and import what a job needs, while the sweeper checks the sweep;
- each job is sent the config the sweeper composed for it (`_compositions`).

Its keys are Hydra's (JobLibLauncherConf); its jobs, directories and results are the same.
(No `from __future__ import annotations` here: Hydra's plugin scan runs this module without
registering it in sys.modules, where dataclasses look string annotations up.)
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

try:
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import (
        JoblibLauncher as HydraJoblibLauncher,
    )
except ImportError:  # hydra-joblib-launcher is not installed: hydra/launcher=joblib is unknown
    HydraJoblibLauncher = None


def check_n_jobs(n_jobs: Any) -> None:
    """Refuse, in one line before any worker starts, an `n_jobs` joblib can't use."""
    from gdlab.errors import GdlabError

    if n_jobs is None or (isinstance(n_jobs, int) and not isinstance(n_jobs, bool) and n_jobs):
        return
    raise GdlabError(
        f"hydra.launcher.n_jobs={n_jobs!r} is not allowed: give the number of worker processes "
        "(an integer >= 1), or a negative one to count back from the CPUs (-1: one per CPU)"
    )


if HydraJoblibLauncher is not None:

    @dataclass
    class JoblibLauncherConf(JobLibLauncherConf):
        _target_: str = "hydra_plugins.gdlab_launchers.joblib_launcher.JoblibLauncher"

    # In place of the plugin's node of the same name (its config module, imported above,
    # stored that node already)
    ConfigStore.instance().store(
        group="hydra/launcher", name="joblib", node=JoblibLauncherConf, provider="gdlab"
    )

    class JoblibLauncher(HydraJoblibLauncher):
        """Hydra's JoblibLauncher with warm workers and the sweeper's own compositions."""

        def __init__(self, **kwargs: Any) -> None:
            check_n_jobs(kwargs.get("n_jobs"))
            super().__init__(**kwargs)
            self.warm_up: Any = None
            self.compositions: Any = None

        def setup(
            self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
        ) -> None:
            from hydra_plugins.gdlab_launchers import _joblib
            from hydra_plugins.gdlab_launchers._compositions import Compositions

            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            self.compositions = Compositions.attach(hydra_context.config_loader)
            self.warm_up = _joblib.WarmUp.start(self.joblib)

        def launch(
            self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
        ) -> Sequence[JobReturn]:
            from hydra_plugins.gdlab_launchers import _joblib

            return _joblib.launch(self, job_overrides, initial_job_idx)
