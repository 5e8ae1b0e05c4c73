"""From a composed config to objects, and from objects to a finished run.

This is the `build()` step of the design: objective, device, update rule, schedule, sinks.
It knows Hydra only through the config it is handed, so tests and notebooks call
`run_experiment(cfg, run_dir)` directly, without a subprocess.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from gdlab.devices import resolve_device, resolve_dtype
from gdlab.errors import GdlabError
from gdlab.events import RunInfo, RunResult, Sink
from gdlab.objectives.base import Objective, Params
from gdlab.optim import SGDSettings, UpdateRule
from gdlab.schedules import make_schedule
from gdlab.sinks.console import ConsoleSink
from gdlab.sinks.metrics import MetricsSink
from gdlab.trainer import BatchSampler, Trainer, TrainerSettings, default_log_every

log = logging.getLogger("gdlab")


@dataclass
class Experiment:
    """Everything a run needs, built and checked, before the first step."""

    objective: Objective
    params: Params
    trainer: Trainer
    info: RunInfo
    device_note: str
    sinks: list[Sink] = field(default_factory=list)


def enum_value(value: Any) -> str:
    """Config enums (DeviceType, Dtype, ZeroGrad) as their plain string."""
    return str(getattr(value, "value", value))


def build_objective(node: DictConfig) -> Objective:
    """Instantiate the objective from its config node, turning constructor errors into one line."""
    if node is None or "_target_" not in node:
        raise GdlabError("objective has no _target_: choose one with objective=<name>")
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, GdlabError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise GdlabError(f"objective ({node._target_}): {cause}") from None
        raise


def objective_name(objective: Objective) -> str:
    return getattr(objective, "name", "") or type(objective).__name__.lower()


def make_loss_fn(
    objective: Objective, generator: torch.Generator, device: torch.device
) -> Callable[[Params], Tensor]:
    """Full-batch `loss(params)`, or a closure that feeds it seeded mini-batches."""
    n, batch_size = getattr(objective, "n_samples", None), getattr(objective, "batch_size", None)
    if n is None or batch_size is None or batch_size >= n:
        return objective.loss
    sampler = BatchSampler(n, batch_size, generator, device)
    return lambda params: objective.loss(params, sampler.next())


def main_hparams(cfg: DictConfig, objective: str) -> dict[str, Any]:
    """The hyperparameters every run reports, whatever was swept."""
    return {
        "objective": objective,
        "optimizer.lr": cfg.optimizer.lr,
        "optimizer.momentum": cfg.optimizer.momentum,
        "trainer.steps": cfg.trainer.steps,
        "device": enum_value(cfg.device.type),
        "dtype": enum_value(cfg.device.dtype),
    }


def build(cfg: DictConfig, run_dir: Path | None = None) -> Experiment:
    """Turn a composed config into a ready-to-run experiment; sinks write into `run_dir`."""
    device, device_note = resolve_device(enum_value(cfg.device.type))
    dtype = resolve_dtype(enum_value(cfg.device.dtype))
    t = cfg.trainer
    if t.steps < 1:
        raise GdlabError(f"trainer.steps={t.steps} must be >= 1")
    if t.log_every is not None and t.log_every < 1:
        raise GdlabError(f"trainer.log_every={t.log_every} must be >= 1 (or null for automatic)")
    if t.tol < 0:
        raise GdlabError(f"trainer.tol={t.tol} must be >= 0 (0 turns convergence off)")
    if not t.divergence_bound > 0:
        raise GdlabError(f"trainer.divergence_bound={t.divergence_bound} must be > 0")

    objective = build_objective(cfg.objective)
    objective.setup(device, dtype)
    generator = torch.Generator(device=device).manual_seed(int(t.seed))
    params = {
        name: value.detach().to(device=device, dtype=dtype).requires_grad_(True)
        for name, value in objective.init_params(generator, device, dtype).items()
    }

    opt = cfg.optimizer
    rule = UpdateRule(
        SGDSettings(
            lr=opt.lr,
            momentum=opt.momentum,
            dampening=opt.dampening,
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay,
            clip_norm=opt.clip_norm,
        )
    )
    schedule = make_schedule(
        opt.schedule.name,
        opt.lr,
        t.steps,
        step_size=opt.schedule.step_size,
        gamma=opt.schedule.gamma,
        min_lr=opt.schedule.min_lr,
    )
    log_every = t.log_every or default_log_every(t.steps)
    settings = TrainerSettings(
        steps=t.steps,
        log_every=log_every,
        tol=t.tol,
        divergence_bound=t.divergence_bound,
        set_to_none=enum_value(t.zero_grad) == "set_to_none",
    )

    name = objective_name(objective)
    info = RunInfo(
        objective=name,
        device=str(device),
        dtype=enum_value(cfg.device.dtype),
        steps=t.steps,
        log_every=log_every,
        config_yaml=OmegaConf.to_yaml(cfg),
        hparams=main_hparams(cfg, name),
    )
    sinks = make_sinks(cfg, run_dir)
    trainer = Trainer(
        make_loss_fn(objective, generator, device),
        params,
        rule,
        schedule,
        settings,
        sinks=sinks,
        minimizer=getattr(objective, "minimizer", None),
        minimum=getattr(objective, "minimum", None),
    )
    return Experiment(objective, params, trainer, info, device_note, sinks)


def make_sinks(cfg: DictConfig, run_dir: Path | None) -> list[Sink]:
    """Console always; metrics.json and TensorBoard when there is a run directory to write."""
    sinks: list[Sink] = [ConsoleSink(enabled=cfg.trainer.progress)]
    if run_dir is None:
        return sinks
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GdlabError(f"cannot create the run directory {run_dir}: {err.strerror}") from None
    sinks.append(MetricsSink(run_dir))
    if cfg.logger.tensorboard:
        from gdlab.sinks.tensorboard import TensorBoardSink

        sinks.append(TensorBoardSink(run_dir))
    return sinks


def run_experiment(cfg: DictConfig, run_dir: Path | None = None) -> RunResult:
    """Build and run one experiment; sinks are closed even when the run fails."""
    experiment = build(cfg, run_dir)
    log.info(
        "gdlab: %s on %s, %s, %d steps",
        experiment.info.objective,
        experiment.device_note,
        experiment.info.dtype,
        experiment.info.steps,
    )
    try:
        for sink in experiment.sinks:
            sink.start(experiment.info)
        return experiment.trainer.run()
    finally:
        for sink in experiment.sinks:
            sink.close()
