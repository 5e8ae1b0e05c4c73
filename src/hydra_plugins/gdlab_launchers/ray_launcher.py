"""`hydra/launcher=ray`: each job of a sweep is a Ray task, on a local Ray or on a cluster.

gdlab's own class beside hydra-ray-launcher's (whose helpers it reuses): the upstream launcher
always passes `object_store_memory` to `ray.init`, which Ray refuses when it connects to a
running cluster, and a job whose worker dies ends the whole sweep there. This one

- starts a Ray on this machine for the sweep when `hydra.launcher.ray.init.address` is null
  (adding `hydra.launcher.ray.local_init`: loopback only, no dashboard; usage stats off),
  or connects to `address` (`HOST:PORT`, `auto`) with `init` as given;
- makes the sweep directory absolute in the driver, so that workers started elsewhere (another
  cwd, another node on a shared file system) write where the basic launcher would;
- takes each job's config from the sweeper's check instead of composing it again;
- waits for each job separately: a job whose worker dies gets a `failed` metrics.json saying
  so, and the sweep goes on (the summary lists it, the exit code is 1).

This module is imported by Hydra's plugin scan on every command: it imports nothing heavy;
the work is in `_ray` (imported when a sweep is launched).
"""

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class RayConf:
    #: ray.init(**init), null values left out. address: null starts a Ray on this machine for
    #: the sweep (or joins the cluster RAY_ADDRESS names, as under `ray job submit`); HOST:PORT
    #: joins that cluster (the address `ray start --head` prints); auto joins the cluster of
    #: the last `ray start` on this machine. Other ray.init keys: +hydra.launcher.ray.init.KEY=...
    init: dict[str, Any] = field(
        default_factory=lambda: {
            "address": None,
            "num_cpus": None,  # a local Ray's CPUs (null: every core); not for a cluster
            "num_gpus": None,
            "object_store_memory": None,  # bytes, a local Ray's; null: Ray's default
            "include_dashboard": None,  # null: local_init's (none for a local Ray)
        }
    )
    #: filled into init where init leaves a key null, only when gdlab starts the Ray itself: a
    #: Ray for one sweep listens on 127.0.0.1 only and has no dashboard. Nothing is added when
    #: joining a cluster (Ray refuses local settings such as object_store_memory there).
    local_init: dict[str, Any] = field(
        default_factory=lambda: {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
    )
    #: ray.remote(**remote) for each job's task, null values left out. num_cpus: the CPUs each
    #: job reserves, and torch's threads in it (gdlab.threads). max_retries 0: by default Ray
    #: re-runs a task whose worker died 3 times, into the same job directory (which holds the
    #: dead attempt's TensorBoard events), so a job that kills its worker (out of memory, a
    #: crash in native code) would die 4 times before anyone heard of it; with 0 it is
    #: reported once, as a `failed` row saying the Ray worker died, and the sweep goes on.
    remote: dict[str, Any] = field(
        default_factory=lambda: {
            "num_cpus": 1,
            "num_gpus": None,
            "memory": None,  # bytes of memory each job reserves (Ray's scheduling only)
            "max_retries": 0,
        }
    )


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.gdlab_launchers.ray_launcher.RayLauncher"
    ray: RayConf = field(default_factory=RayConf)


def register() -> None:
    """`hydra/launcher=ray` is this launcher, in place of hydra-ray-launcher's own node.

    A YAML file of the same name in gdlab's configs/ would be merged onto hydra-ray-launcher's
    node (Hydra's deprecated automatic schema matching: a warning on every sweep, and that
    schema refuses `local_init`), so the node is replaced in the ConfigStore instead. The
    upstream module that stores its node is imported first (it runs once), so whichever of
    the two plugin packages Hydra's scan imports first, this node is the one that stays.
    """
    with contextlib.suppress(ImportError):  # not installed: launching says what to install
        import hydra_plugins.hydra_ray_launcher._config  # noqa: F401
    ConfigStore.instance().store(
        group="hydra/launcher", name="ray", node=RayLauncherConf, provider="gdlab"
    )


register()


class RayLauncher(Launcher):
    """Hydra Launcher: one Ray task per job (configs/hydra/launcher/ray.yaml)."""

    def __init__(self, ray: DictConfig | dict[str, Any]) -> None:
        self.ray_cfg = ray
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None
        self.compositions: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra_plugins.gdlab_launchers._compositions import Compositions

        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.compositions = Compositions.attach(hydra_context.config_loader)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra_plugins.gdlab_launchers import _ray

        return _ray.launch(self, job_overrides, initial_job_idx)
