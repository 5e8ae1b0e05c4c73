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

from gdlab.batches import BatchSampler, data_shape, uses_mini_batches
from gdlab.checkpoint import save_checkpoint
from gdlab.curvature import Sharpness
from gdlab.errors import GdlabError
from gdlab.events import RunInfo, RunResult, Sink
from gdlab.objectives import instantiate as objectives
from gdlab.objectives.base import Objective, Params
from gdlab.optim import UpdateRule, settings_for
from gdlab.problem import Problem, build_problem
from gdlab.rules import rule_lr_limit, stability_constant
from gdlab.schedules import make_schedule
from gdlab.settings import HPARAM_KEYS, settings_of
from gdlab.sinks.console import ConsoleSink
from gdlab.sinks.metrics import MetricsSink
from gdlab.sweeps.hparams import override_hparams
from gdlab.trainer import StopRequest, Trainer, row_chunks

log = logging.getLogger("gdlab")


@dataclass
class Experiment:
    """Everything a run needs, built and checked, before the first step."""

    problem: Problem
    params: Params
    trainer: Trainer
    info: RunInfo
    device_note: str
    sinks: list[Sink] = field(default_factory=list)

    @property
    def objective(self) -> Objective:
        return self.problem.objective


def objective_name(objective: Objective) -> str:
    """The registry's name for the objective (plugins included), else its class's."""
    return objectives.registered_name(objective)


def make_sampler(
    objective: Objective, generator: torch.Generator, device: torch.device
) -> BatchSampler | None:
    """A seeded mini-batch sampler when the objective asks for mini-batches, else None."""
    if not uses_mini_batches(objective):
        return None
    n, batch_size = data_shape(objective)
    return BatchSampler(n, batch_size, generator, device)  # type: ignore[arg-type]


def gradient_chunks(objective: Objective, chunk_rows: int | None) -> list[slice] | None:
    """Row chunks for full-batch gradient accumulation (`trainer.chunk_rows`), or None.

    Opt-in: it reads X from memory once per step instead of twice, but adds Python and
    autograd work per chunk, and on the machines measured (docs/performance.md) that work
    cost more than the memory traffic it saved.
    """
    if chunk_rows is None:
        return None
    n, _ = data_shape(objective)
    if n is None:
        raise GdlabError("trainer.chunk_rows needs an objective with data (n_samples)")
    return row_chunks(n, chunk_rows)


def main_hparams(problem: Problem, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters every run reports, whatever was swept (the table's `hparam` rows;
    `values` overrides the problem's own, e.g. with a population member's)."""
    values = {**problem.values, **(values or {})}
    return {
        "objective": problem.name,
        **{key: values[key] for key in HPARAM_KEYS if key in values},
        "device": problem.device.type,  # the device used, also under device=auto
        "device.dtype": problem.dtype_name,
    }


def run_lr_limit(problem: Problem, values: dict[str, Any]) -> float | None:
    """The largest stable lr for this run's update rule, where it is known."""
    rule = values["optimizer.name"]
    return rule_lr_limit(rule, problem.curvature(), optimizer_arguments(values))


def optimizer_arguments(values: dict[str, Any], names: Any = None) -> dict[str, Any]:
    """The optimizer rows of the settings table (those named in `names`), by name."""
    rule = values["optimizer.name"]
    return {
        s.name: values[s.key]
        for s in settings_of("optimizer", rule)
        if (names is None or s.name in names) and s.key in values
    }


def sharpness_probe(problem: Problem, rule: UpdateRule) -> Sharpness | None:
    """The run's sharpness measurements (sharpness.every > 0), judged by its own rule."""
    if problem.sharpness.every <= 0:
        return None
    name = rule.settings.rule
    return Sharpness(
        problem.sharpness, name, rule.hyper, [stability_constant(name, rule.hyper)], problem.name
    )


def update_rule(values: dict[str, Any]) -> UpdateRule:
    """The update rule with a plain run's hyperparameters (the optimizer rows of the table)."""
    return UpdateRule(settings_for(values["optimizer.name"], optimizer_arguments(values)))


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
    problem = build_problem(cfg)
    values, objective, device = problem.values, problem.objective, problem.device
    start, generator = problem.initial_params(values["trainer.seed"])
    params = {name: value.requires_grad_(True) for name, value in start.items()}
    objectives.check_loss(objective, params, device)  # a scalar on the run's device, or one line

    lr = values["optimizer.lr"]
    schedule = make_schedule(problem.schedule, lr, problem.loop.steps)
    info = RunInfo(
        objective=problem.name,
        device=str(device),
        dtype=problem.dtype_name,
        steps=problem.loop.steps,
        log_every=problem.loop.log_every,
        config_yaml=OmegaConf.to_yaml(cfg),
        problem=problem.record(),
        # HParams: what the command line set (the swept keys), then the main ones
        hparams={**override_hparams(cfg, overrides), **main_hparams(problem)},
    )
    sinks = make_sinks(cfg, run_dir, objective)
    checkpoint = None
    if run_dir is not None:
        config_yaml, saved_overrides = info.config_yaml, list(overrides)
        checkpoint = lambda state: save_checkpoint(  # noqa: E731
            run_dir, {**state, "config_yaml": config_yaml, "overrides": saved_overrides}
        )
    sampler = make_sampler(objective, generator, device)
    chunk_rows = values["trainer.chunk_rows"]
    rule = update_rule(values)
    trainer = Trainer(
        objective.loss,
        params,
        rule,
        schedule,
        problem.loop,
        sinks=sinks,
        minimizer=problem.minimizer,
        minimum=problem.minimum,
        sampler=sampler,
        checkpoint=checkpoint,
        interrupt=interrupt,
        chunks=gradient_chunks(objective, chunk_rows) if sampler is None else None,
        n_samples=data_shape(objective)[0],
        loss64=problem.float64_loss(),
        lr_limit=run_lr_limit(problem, values),
        sharpness=sharpness_probe(problem, rule),
    )
    return Experiment(problem, params, trainer, info, problem.device_note, sinks)


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
