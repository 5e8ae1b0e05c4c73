"""Structured-config schemas for every group, registered in Hydra's ConfigStore.

Hydra merges the YAML files under `configs/` onto these dataclasses, so a wrong type
(`optimizer.lr=abc`) or an unknown key (`optimizer.lrr=0.1`) is refused while the config is
composed, before anything runs. Range checks that types cannot express live beside the code
that uses the value (`optim.SGDSettings`, `schedules`, the objectives' constructors).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from gdlab.errors import GdlabError


class DeviceType(Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class Dtype(Enum):
    float32 = "float32"
    float64 = "float64"


class ZeroGrad(Enum):
    zero = "zero"  # p.grad.zero_(), as the tutorial does
    set_to_none = "set_to_none"  # p.grad = None: frees the gradient between steps


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant, step, cosine, exponential
    step_size: int = 100  # step: multiply by gamma every step_size steps
    gamma: float = 0.1  # step and exponential decay factor
    min_lr: float = 0.0  # cosine: the lr reached at the last step


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    clip_norm: float | None = None
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class TrainerConfig:
    steps: int = 50
    seed: int = 0  # draws the initial parameters and the mini-batch order
    tol: float = 1e-6  # converged when the gradient norm falls below this (0: never)
    log_every: int | None = None  # null: every step up to 1000 steps, ~1000 points beyond
    divergence_bound: float = 1e8  # diverged when a parameter's norm exceeds this
    zero_grad: ZeroGrad = ZeroGrad.zero
    progress: bool | None = None  # null: a progress bar only on a terminal
    checkpoint_every: int | None = 1000  # also at the end and on Ctrl-C/SIGTERM; null: end only
    resume: str | None = None  # a run directory to continue, in place
    chunk_rows: int | None = None  # full-batch gradients accumulated over row chunks (null: off)


@dataclass
class DeviceConfig:
    type: DeviceType = DeviceType.cpu
    dtype: Dtype = Dtype.float32


@dataclass
class LoggerConfig:
    tensorboard: bool = True
    plots: bool = True  # PNG plots in the run directory (and TensorBoard images), drawn at the end


@dataclass
class GdlabConfig:
    objective: Any = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


#: the schema of each group, for key checks and messages
SCHEMA_BY_GROUP: dict[str, type] = {
    "optimizer": OptimizerConfig,
    "optimizer.schedule": ScheduleConfig,
    "trainer": TrainerConfig,
    "device": DeviceConfig,
    "logger": LoggerConfig,
}


def reject_unknown_keys(cfg: Any) -> None:
    """Refuse keys a schema does not know, even ones forced in with `+group.key=...`.

    Without `+`, Hydra refuses them while composing; with it they would be silently ignored.
    """
    for group, schema in SCHEMA_BY_GROUP.items():
        node = OmegaConf.select(cfg, group)
        if node is None:
            continue
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node:
            if key not in known:
                raise GdlabError(f"unknown key {group}.{key}; allowed keys: {', '.join(known)}")


def config_dir() -> str:
    """The `configs/` tree: packaged inside a wheel, at the repository root in a checkout."""
    packaged = Path(__file__).resolve().parent / "configs"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "configs")


#: where Hydra keeps a run's composed config and overrides
OUTPUT_SUBDIR = ".hydra"


def run_dir_for(resume: str | None, new_dir: str) -> str:
    """hydra.run.dir: a new directory, or with `trainer.resume=DIR` the run being resumed.

    Checked here, before Hydra creates the directory, so a mistyped path creates nothing.
    """
    if resume is None:
        return new_dir
    if not (Path(resume) / "checkpoint.pt").is_file():
        raise GdlabError(f"trainer.resume={resume}: no run directory with a checkpoint.pt there")
    return str(resume)


def register_configs() -> None:
    """Register the schemas and resolvers; safe to call more than once."""
    from gdlab.objectives.nodes import register_help_resolver, register_objective_configs

    ConfigStore.instance().store(name="gdlab_schema", node=GdlabConfig)
    # objective=NAME for every entry point in gdlab.objectives, plugins included (no YAML needed)
    register_objective_configs(config_dir())
    register_help_resolver(config_dir())
    if not OmegaConf.has_resolver("gdlab.pid"):
        # Part of the run directory's name, so two runs started in the same second never share one.
        OmegaConf.register_new_resolver("gdlab.pid", lambda: str(os.getpid()), use_cache=True)
    if not OmegaConf.has_resolver("gdlab.run_dir"):
        OmegaConf.register_new_resolver("gdlab.run_dir", run_dir_for)
    if not OmegaConf.has_resolver("gdlab.output_subdir"):
        # Hydra would write the resume command's own config over the run's: not on resume.
        OmegaConf.register_new_resolver(
            "gdlab.output_subdir", lambda resume: OUTPUT_SUBDIR if resume is None else None
        )
    if not OmegaConf.has_resolver("gdlab.job_dir"):
        from gdlab.sweep import job_dirname  # light: no torch, no matplotlib

        # hydra.sweep.subdir; cached so a job resolves (and claims) its directory once
        OmegaConf.register_new_resolver("gdlab.job_dir", job_dirname, use_cache=True)


register_configs()
