"""The driver side of `hydra/launcher=ray`: start or join Ray, send each job as a task, collect.

Imported only when a sweep is launched (Hydra's plugin scan skips modules starting with `_`);
`ray` itself is imported only after the environment a local Ray needs has been set.

- Local Ray (`hydra.launcher.ray.init.address` null and no RAY_ADDRESS): `ray.init` starts
  one for the sweep with `local_init` added (loopback only, no dashboard), and this process
  sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (without it Ray turns 127.0.0.1 into the machine's
  outward address) and RAY_USAGE_STATS_ENABLED=0 before; the Ray processes inherit both.
  Ray 2.60's head also asks the cloud metadata addresses which cloud it runs on, whatever
  these say: its processes start with a proxy on a closed loopback port (`no_cloud_probes`).
- A cluster (`address` HOST:PORT, `auto`, or RAY_ADDRESS): `ray.init(**init)` as given; Ray
  refuses local-only settings (`object_store_memory`, `num_cpus`) there, so none are added.
- The sweep directory is made absolute here, and each job's directory is settled here
  (gdlab's `hydra.sweep.subdir` resolver claims it): workers with another cwd write where
  the basic launcher would, and the driver knows where a job whose worker died belongs.
- Each job is waited for separately: a worker that dies (SIGKILL, os._exit, the OOM killer,
  a lost node) leaves a `failed` metrics.json saying so and a JobReturn the sweep accepts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

if TYPE_CHECKING:
    from hydra.types import HydraContext, TaskFunction

    from hydra_plugins.gdlab_launchers._compositions import Compositions
    from hydra_plugins.gdlab_launchers.ray_launcher import RayLauncher

log = logging.getLogger(__name__)

#: keeps a local Ray on 127.0.0.1 (Ray reads it when `ray` is imported; its processes inherit it)
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: no usage reports from a Ray gdlab starts
USAGE_ENV = "RAY_USAGE_STATS_ENABLED"
#: Ray folds log lines of different workers that differ only in numbers ("[#3] gdlab: ..."
#: and "[#4] gdlab: ..."): the driver prints every job's lines instead (unless the user set it)
DEDUP_ENV = "RAY_DEDUP_LOGS"
#: Ray colours its "(gdlab_job pid=...)" prefixes: not where the console is a file or a pipe
COLOR_ENV = "RAY_COLOR_PREFIX"
#: seconds to wait, after Ctrl-C, for cancelled jobs to checkpoint (a second Ctrl-C: at once)
CANCEL_WAIT_S = 15.0

#: a closed port on this machine: where a local Ray's own HTTP requests go (`no_cloud_probes`)
LOOPBACK_ONLY = "http://127.0.0.1:9"
NO_PROXY = "localhost,127.0.0.1,::1"
PROXY_ENV = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY")

_UNSET = object()
#: the ray.init arguments of the Ray this module started and that still runs, if any
_started: dict[str, Any] | None = None
#: the user's RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER while a local Ray's "0" replaces it
_user_cluster_env: object = _UNSET


class RayJobLost(RuntimeError):
    """A job Ray could not finish: its worker or node died, or Ray could not run it."""


@dataclass
class Job:
    num: int
    overrides: list[str]
    config: DictConfig
    run_dir: Path
    ref: Any = None


def launch(
    launcher: RayLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    setup_globals()
    config, context, task = launcher.config, launcher.hydra_context, launcher.task_function
    assert config is not None and context is not None and task is not None
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    # Absolute in the driver: workers (another cwd, another node) write where the basic
    # launcher would, relative to the directory the user ran gdlab from.
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)

    init, local = init_arguments(launcher.ray_cfg)
    user_env = {key: os.environ.get(key) for key in PROXY_ENV}
    ray = start_ray(init, local)
    where = "a local Ray" if local else f"the Ray cluster at {init['address']}"
    log.info(
        "Ray launcher is launching %d job%s on %s, sweep output dir: %s",
        len(job_overrides),
        "" if len(job_overrides) == 1 else "s",
        where,
        sweep_dir,
    )
    options = container(launcher.ray_cfg.get("remote"))
    remote = ray.remote(**options)(gdlab_job) if options else ray.remote(gdlab_job)
    # Sent to the object store once, not once per job (each task is given the references)
    compositions = launcher.compositions
    compositions.detach()  # the context goes to the object store as Hydra made it
    try:
        shared = {
            "hydra_context": ray.put(context),
            "task_function": ray.put(task),
            "singleton_state": ray.put(Singleton.get_state()),
            "user_env": user_env if local else None,
        }
    finally:
        compositions.attach_again()
    cwd = os.getcwd()
    jobs: list[Job] = []
    returns: list[JobReturn] = []
    try:
        for offset, overrides in enumerate(job_overrides):
            num = initial_job_idx + offset
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            job = job_config(compositions, config, list(overrides), num, sweep_dir)
            job.ref = remote.remote(sweep_config=job.config, cwd=cwd, **shared)
            jobs.append(job)
        for job in jobs:  # one at a time: one lost job never hides the others' results
            returns.append(collect(ray, job))
    except BaseException:  # Ctrl-C (KeyboardInterrupt), or a bug: stop the jobs still running
        cancel(ray, jobs[len(returns) :])
        raise
    return returns


def container(node: Any) -> dict[str, Any]:
    """A config node as keyword arguments: null values left out (Ray's defaults)."""
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return {str(k): v for k, v in dict(node).items() if v is not None}


def init_arguments(ray_cfg: Any) -> tuple[dict[str, Any], bool]:
    """`ray.init`'s arguments and whether they start a local Ray.

    `init.address` null means a Ray started for this sweep (Ray's own None would join the
    cluster of the last `ray start` on this machine instead), unless RAY_ADDRESS names one
    (as `ray job submit` does). `local_init` fills in what `init` leaves null, locally only.
    """
    init = container(ray_cfg.get("init"))
    address = init.get("address") or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        for key, value in container(ray_cfg.get("local_init")).items():
            init.setdefault(key, value)
        init["address"] = "local"
        return init, True
    init["address"] = str(address)
    return init, False


def start_ray(init: dict[str, Any], local: bool) -> Any:
    """`ray`, initialized with `init` (reusing the Ray this module started with the same
    arguments, or one the user initialized in this process)."""
    global _started
    from gdlab.errors import GdlabError

    os.environ.setdefault(DEDUP_ENV, "0")
    if not sys.stdout.isatty():
        os.environ.setdefault(COLOR_ENV, "0")
    if local:
        os.environ[USAGE_ENV] = "0"
    loopback_only(local)
    try:
        import ray

        # hydra-ray-launcher's _run_job runs each job in its worker (gdlab_job)
        from hydra_plugins.hydra_ray_launcher import _launcher_util  # noqa: F401
    except ImportError as err:
        raise GdlabError(
            "hydra/launcher=ray needs ray and hydra-ray-launcher "
            f"(pip install 'gdlab[launchers]'): {err}"
        ) from None
    if ray.is_initialized():
        if _started is None:
            log.info("Ray is already initialized in this process: the sweep uses it")
            return ray
        if _started == init:
            return ray
        ray.shutdown()  # the Ray an earlier sweep of this process started, set up otherwise
        _started = None
    log.info("Initializing Ray with %s", init)
    try:
        with no_cloud_probes() if local else contextlib.nullcontext():
            ray.init(**init)
    except ConnectionError as err:
        if local:
            raise
        raise GdlabError(cannot_connect(init["address"], err)) from None
    _started = init
    return ray


@contextlib.contextmanager
def no_cloud_probes() -> Iterator[None]:
    """While a local Ray starts: its processes get an HTTP proxy on a closed loopback port.

    Ray's head asks the cloud metadata addresses (169.254.169.254, metadata.google.internal)
    which cloud it runs on, from its dashboard process and with `requests`, whatever
    RAY_USAGE_STATS_ENABLED says, and nothing in Ray's settings stops it. The Ray processes
    started here inherit this environment, so those requests fail at once without leaving the
    machine; loopback stays direct (no_proxy), and Ray's gRPC ignores proxies. This process
    gets its own environment back afterwards, and each job the user's (`gdlab_job`).
    """
    saved = {key: os.environ.get(key) for key in PROXY_ENV}
    for key in PROXY_ENV:
        os.environ[key] = LOOPBACK_ONLY if "no_" not in key.lower() else NO_PROXY
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cannot_connect(address: str, err: BaseException) -> str:
    """One line for a cluster `ray.init` could not join (a wrong address, a stopped head, a
    token the cluster does not accept)."""
    from ray.exceptions import AuthenticationError

    from gdlab.errors import causes

    line = f"cannot connect to the Ray cluster at {address} (hydra.launcher.ray.init.address)"
    for cause in causes(err):
        if isinstance(cause, AuthenticationError):
            # Ray enables token authentication on a head that finds ~/.ray/auth_token, but a
            # driver given an explicit address uses a token only when told to
            return (
                f"{line}: it uses token authentication; set RAY_AUTH_MODE=token, with the "
                "cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN"
            )
    return f"{line}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"


def loopback_only(on: bool) -> None:
    """Keep a local Ray on 127.0.0.1, or give a cluster's driver its outward address back.

    Ray turns 127.0.0.1 into the machine's outward address unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; it reads the variable when `ray` is imported (and the
    Ray processes a local `ray.init` starts inherit it), so it is set before that, and in
    `ray_constants` when an earlier sweep or the user imported Ray already.
    """
    global _user_cluster_env
    if on:
        if _user_cluster_env is _UNSET:
            _user_cluster_env = os.environ.get(CLUSTER_ENV)
        os.environ[CLUSTER_ENV] = "0"
    elif _user_cluster_env is not _UNSET:  # a local sweep in this process set it: undo
        if _user_cluster_env is None:
            os.environ.pop(CLUSTER_ENV, None)
        else:
            os.environ[CLUSTER_ENV] = str(_user_cluster_env)
        _user_cluster_env = _UNSET
    else:
        return
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = constants.env_bool(
            CLUSTER_ENV, not constants.IS_WINDOWS_OR_OSX
        )


def job_config(
    compositions: Compositions, config: DictConfig, overrides: list[str], num: int, sweep_dir: Path
) -> Job:
    """The job's composed config (the sweeper's check composed it), its directory settled in
    the driver."""
    sweep_config = compositions.compose(config, overrides)
    with read_write(sweep_config.hydra), open_dict(sweep_config.hydra):
        # As hydra-ray-launcher: a scheduler's job id is unknown here
        sweep_config.hydra.job.id = f"job_id_for_{num}"
        sweep_config.hydra.job.num = num
        sweep_config.hydra.sweep.dir = str(sweep_dir)
        # Resolved here (gdlab's resolver claims the directory) and kept as a plain value, so
        # the worker writes into it and the driver knows it if the worker dies
        subdir = str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
        sweep_config.hydra.sweep.subdir = subdir
        run_dir = sweep_dir / subdir
        sweep_config.hydra.runtime.output_dir = str(run_dir)
    return Job(num, overrides, sweep_config, run_dir)


def gdlab_job(
    hydra_context: HydraContext,
    sweep_config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
    cwd: str,
    user_env: dict[str, str | None] | None = None,
) -> JobReturn:
    """One job, in a Ray worker: Hydra's run_job (hydra-ray-launcher's `_run_job`), from the
    driver's working directory where this node has it (relative paths in a config then mean
    what they mean to the user; outputs go to absolute paths either way)."""
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job

    if user_env is not None:  # a local Ray's workers: the user's proxies, not `no_cloud_probes`
        for key, value in user_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    here = os.getcwd()
    try:
        if os.path.isdir(cwd):
            os.chdir(cwd)
        return _run_job(hydra_context, sweep_config, task_function, singleton_state)
    finally:
        os.chdir(here)


def collect(ray: Any, job: Job) -> JobReturn:
    """The job's JobReturn; for a job Ray lost, a `failed` record and a JobReturn as gdlab's
    app gives for a job that raised (completed, value infinity: an Optuna sweeper's worst)."""
    try:
        return ray.get(job.ref)
    except ray.exceptions.RayError as err:
        return lost(ray, job, err)


def lost(ray: Any, job: Job, err: BaseException) -> JobReturn:
    from gdlab.results import write_failure

    reason = lost_reason(ray, err)
    if any((job.run_dir / name).exists() for name in ("metrics.json", "population.json")):
        # It wrote its result, then its worker went: the result stands
        log.warning("#%d: %s after the job wrote its result; keeping it", job.num, reason)
    else:
        log.error("#%d (%s): %s", job.num, " ".join(filter_overrides(job.overrides)), reason)
        try:
            save_hydra_files(job)
            write_failure(job.run_dir, RayJobLost(reason))
        except OSError as error:  # then the summary says the job left no result
            log.error("#%d: cannot record the failure in %s: %s", job.num, job.run_dir, error)
    task_cfg = OmegaConf.masked_copy(job.config, [k for k in job.config if k != "hydra"])
    return JobReturn(
        overrides=job.overrides,
        cfg=task_cfg,
        hydra_cfg=OmegaConf.create({"hydra": job.config.hydra}),
        working_dir=os.getcwd(),
        task_name=str(job.config.hydra.job.name),
        status=JobStatus.COMPLETED,
        _return_value=math.inf,
    )


def lost_reason(ray: Any, err: BaseException) -> str:
    """What metrics.json says of a job Ray lost (the first line of Ray's message)."""
    errors = ray.exceptions
    text = str(err).strip().splitlines()
    detail = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    died = tuple(
        getattr(errors, name)
        for name in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")
        if hasattr(errors, name)
    )
    if isinstance(err, died):
        return f"the Ray worker running this job died ({detail})"
    if isinstance(err, errors.TaskCancelledError):
        return "Ray cancelled this job"
    if isinstance(err, errors.RayTaskError):
        cause = getattr(err, "cause", None)
        if cause is not None:
            lines = str(cause).strip().splitlines()
            detail = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
        return f"the job's Ray task ended with {detail}"
    return f"Ray could not run this job ({detail})"


def save_hydra_files(job: Job) -> None:
    """The job's .hydra/ as Hydra's run_job writes it, if the worker died before writing it:
    the summary finds job directories by their .hydra/overrides.yaml."""
    subdir = job.config.hydra.output_subdir
    if subdir is None:
        return
    hydra_dir = job.run_dir / str(subdir)
    if (hydra_dir / "overrides.yaml").exists():
        return
    hydra_dir.mkdir(parents=True, exist_ok=True)
    task_cfg = OmegaConf.masked_copy(job.config, [k for k in job.config if k != "hydra"])
    OmegaConf.save(task_cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": job.config.hydra}), hydra_dir / "hydra.yaml")
    OmegaConf.save(job.config.hydra.overrides.task, hydra_dir / "overrides.yaml")


def cancel(ray: Any, jobs: Sequence[Job]) -> None:
    """Cancel jobs still running (Ctrl-C in the driver): each gets a KeyboardInterrupt, which
    gdlab's trainer takes as Ctrl-C (checkpoint, `interrupted`); wait a little for that."""
    refs = [job.ref for job in jobs if job.ref is not None]
    for ref in refs:
        with contextlib.suppress(Exception):  # finished meanwhile, or Ray is going down
            ray.cancel(ref)
    if refs:
        log.info("Ray launcher: cancelled %d job(s); waiting for them to stop", len(refs))
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
    for job in jobs:  # a job that never started leaves no directory, as under the basic launcher
        with contextlib.suppress(OSError):
            job.run_dir.rmdir()  # only if empty
