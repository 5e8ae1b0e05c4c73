"""From a composed config to objects, and from objects to a finished run.

This is the `build()` step of the design: objective, device, update rule, schedule, sinks.
It knows Hydra only through the config it is handed, so tests and notebooks call
`run_experiment(cfg, run_dir)` directly, without a subprocess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gdlab.checkpoint import save_checkpoint
from gdlab.config import reject_unknown_keys
from gdlab.devices import resolve_device, resolve_dtype
from gdlab.errors import GdlabError
from gdlab.events import RunInfo, RunResult, Sink
from gdlab.objectives import instantiate as objectives
from gdlab.objectives.base import Objective, Params
from gdlab.optim import SGDSettings, UpdateRule
from gdlab.schedules import make_schedule
from gdlab.sinks.console import ConsoleSink
from gdlab.sinks.metrics import MetricsSink
from gdlab.sweep import override_hparams
from gdlab.trainer import (
    BatchSampler,
    StopRequest,
    Trainer,
    TrainerSettings,
    default_log_every,
    row_chunks,
)

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
    """Instantiate the objective from its config node; user and plugin mistakes are one line."""
    return objectives.build_objective(node)


def objective_name(objective: Objective) -> str:
    """The registry's name for the objective (plugins included), else its class's."""
    return objectives.registered_name(objective)


def make_sampler(
    objective: Objective, generator: torch.Generator, device: torch.device
) -> BatchSampler | None:
    """A seeded mini-batch sampler when the objective asks for mini-batches, else None."""
    n, batch_size = getattr(objective, "n_samples", None), getattr(objective, "batch_size", None)
    if n is None or batch_size is None or batch_size >= n:
        return None
    return BatchSampler(n, batch_size, generator, device)


def gradient_chunks(objective: Objective, chunk_rows: int | None) -> list[slice] | None:
    """Row chunks for full-batch gradient accumulation (`trainer.chunk_rows`), or None.

    Opt-in: it reads X from memory once per step instead of twice, but adds Python and
    autograd work per chunk, and on the machines measured (docs/performance.md) that work
    cost more than the memory traffic it saved.
    """
    if chunk_rows is None:
        return None
    if chunk_rows < 1:
        raise GdlabError(f"trainer.chunk_rows={chunk_rows} must be >= 1 (or null: one pass)")
    n = getattr(objective, "n_samples", None)
    if n is None:
        raise GdlabError("trainer.chunk_rows needs an objective with data (n_samples)")
    return row_chunks(n, chunk_rows)


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


def build(
    cfg: DictConfig,
    run_dir: Path | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    interrupt: StopRequest | None = None,
) -> Experiment:
    """Turn a composed config into a ready-to-run experiment; sinks write into `run_dir`.

    `overrides` (the command line that composed `cfg`) go into checkpoints, so a resumed run
    can be composed again the same way; `interrupt` lets a signal stop the run cleanly.
    """
    reject_unknown_keys(cfg)
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
    if t.checkpoint_every is not None and t.checkpoint_every < 1:
        raise GdlabError(
            f"trainer.checkpoint_every={t.checkpoint_every} must be >= 1 (or null: at the end only)"
        )

    objective = build_objective(cfg.objective)
    objectives.setup_objective(objective, device, dtype)  # setup() is optional
    generator = torch.Generator(device=device).manual_seed(int(t.seed))
    initial = objectives.checked_init_params(objective, generator, device, dtype)
    params = {
        name: value.detach().to(device=device, dtype=dtype).requires_grad_(True)
        for name, value in initial.items()
    }
    objectives.check_loss(objective, params, device)  # a scalar on the run's device, or one line

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
        checkpoint_every=t.checkpoint_every,
    )

    name = objective_name(objective)
    info = RunInfo(
        objective=name,
        device=str(device),
        dtype=enum_value(cfg.device.dtype),
        steps=t.steps,
        log_every=log_every,
        config_yaml=OmegaConf.to_yaml(cfg),
        # HParams: what the command line set (the swept keys), then the main ones
        hparams={**override_hparams(cfg, overrides), **main_hparams(cfg, name)},
    )
    sinks = make_sinks(cfg, run_dir, objective)
    checkpoint = None
    if run_dir is not None:
        config_yaml, saved_overrides = info.config_yaml, list(overrides)
        checkpoint = lambda state: save_checkpoint(  # noqa: E731
            run_dir, {**state, "config_yaml": config_yaml, "overrides": saved_overrides}
        )
    sampler = make_sampler(objective, generator, device)
    trainer = Trainer(
        objective.loss,
        params,
        rule,
        schedule,
        settings,
        sinks=sinks,
        minimizer=getattr(objective, "minimizer", None),
        minimum=getattr(objective, "minimum", None),
        sampler=sampler,
        checkpoint=checkpoint,
        interrupt=interrupt,
        chunks=gradient_chunks(objective, t.chunk_rows) if sampler is None else None,
        n_samples=getattr(objective, "n_samples", None),
    )
    return Experiment(objective, params, trainer, info, device_note, sinks)


def make_sinks(
    cfg: DictConfig, run_dir: Path | None, objective: Objective | None = None
) -> list[Sink]:
    """Console always; metrics.json, TensorBoard and plots when there is a run directory."""
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
    if cfg.logger.plots:
        from gdlab.sinks.plots import PlotSink  # matplotlib itself only when the run ends

        tensorboard = sinks[-1] if cfg.logger.tensorboard else None
        sinks.append(PlotSink(run_dir, objective, getattr(tensorboard, "add_image", None)))
    return sinks


def run_experiment(
    cfg: DictConfig,
    run_dir: Path | None = None,
    *,
    resume_state: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    interrupt: StopRequest | None = None,
) -> RunResult:
    """Build and run one experiment (continuing `resume_state` if given); sinks always close."""
    experiment = build(cfg, run_dir, overrides=overrides, interrupt=interrupt)
    if resume_state is not None:
        try:
            experiment.trainer.load_state_dict(resume_state)
        except (ValueError, RuntimeError) as err:
            raise GdlabError(
                f"trainer.resume: the checkpoint does not fit this run ({err})"
            ) from None
        experiment.info.resumed = True
        experiment.info.start_step = experiment.trainer.start_step
    log.info(
        "gdlab: %s on %s, %s, %d steps%s",
        experiment.info.objective,
        experiment.device_note,
        experiment.info.dtype,
        experiment.info.steps,
        f", resuming at step {experiment.info.start_step}" if resume_state is not None else "",
    )
    try:
        for sink in experiment.sinks:
            sink.start(experiment.info)
        return experiment.trainer.run()
    finally:
        for sink in experiment.sinks:
            sink.close()
