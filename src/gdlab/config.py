"""Structured-config schemas for every group, registered in Hydra's ConfigStore.

Hydra merges the YAML files under `configs/` onto these dataclasses, so a wrong type
(`optimizer.lr=abc`) or an unknown key (`optimizer.lrr=0.1`) is refused while the config is
composed, before anything runs. The optimizer and trainer schemas are built from the settings
table (`gdlab.settings`): their keys, types and defaults are its rows; its range checks run
when a run or a population job is built (`gdlab.problem`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from gdlab import rundir
from gdlab.errors import GdlabError
from gdlab.settings import UPDATE_RULES, ZeroGrad, settings_of

__all__ = ["ZeroGrad"]


class DeviceType(Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class Dtype(Enum):
    float32 = "float32"
    float64 = "float64"


def schema_from_table(
    name: str, group: str, nested: dict[str, type] | None = None, rule: str = "sgd"
) -> type:
    """A dataclass whose fields are the settings table's rows under `group` that the update
    rule `rule` has, with its defaults (plus `nested` groups as fields holding their schema)."""
    fields: list[tuple[str, Any, Any]] = []
    for setting in settings_of(group, rule):
        kind = Optional[setting.kind] if setting.nullable else setting.kind  # noqa: UP045
        default = rule if setting.key == "optimizer.name" else setting.default_for(rule)
        fields.append((setting.name, kind, field(default=default)))
    for key, schema in (nested or {}).items():
        fields.append((key, schema, field(default_factory=schema)))
    schema = dataclasses.make_dataclass(name, fields)
    schema.__module__ = __name__
    return schema


ScheduleConfig = schema_from_table("ScheduleConfig", "optimizer.schedule")
#: one schema per update rule (`optimizer=adam` composes `configs/optimizer/adam.yaml` onto
#: `adam_schema`): each rule has its own keys and torch.optim's defaults
OPTIMIZER_SCHEMAS: dict[str, type] = {
    rule: schema_from_table(
        f"{rule.capitalize()}Config", "optimizer", {"schedule": ScheduleConfig}, rule
    )
    for rule in UPDATE_RULES
}
OptimizerConfig = OPTIMIZER_SCHEMAS["sgd"]
TrainerConfig = schema_from_table("TrainerConfig", "trainer")
SharpnessConfig = schema_from_table("SharpnessConfig", "sharpness")


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
    optimizer: Any = MISSING  # an update rule's schema, chosen by optimizer=NAME
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # type: ignore[valid-type]
    device: DeviceConfig = field(default_factory=DeviceConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)  # type: ignore[valid-type]


#: the schema of each group, for key checks and messages
SCHEMA_BY_GROUP: dict[str, type] = {
    "optimizer.schedule": ScheduleConfig,
    "trainer": TrainerConfig,
    "device": DeviceConfig,
    "logger": LoggerConfig,
    "sharpness": SharpnessConfig,
}


def reject_unknown_keys(cfg: Any) -> None:
    """Refuse keys a schema does not know, even ones forced in with `+group.key=...`.

    Without `+`, Hydra refuses them while composing; with it they would be silently ignored.
    The optimizer group's keys are those of the update rule it names.
    """
    rule = str(OmegaConf.select(cfg, "optimizer.name", default="sgd"))
    schemas = {"optimizer": OPTIMIZER_SCHEMAS.get(rule, OptimizerConfig), **SCHEMA_BY_GROUP}
    for group, schema in schemas.items():
        node = OmegaConf.select(cfg, group)
        if node is None:
            continue
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node:
            if key not in known:
                hint = ""
                if group == "optimizer" and any(
                    key in f.__dataclass_fields__ for f in OPTIMIZER_SCHEMAS.values()
                ):
                    hint = (
                        f" (optimizer={rule}'s keys; choose an update rule with "
                        "optimizer=NAME, not optimizer.name)"
                    )
                raise GdlabError(
                    f"unknown key {group}.{key}; allowed keys: {', '.join(known)}{hint}"
                )


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

    Checked here, before Hydra creates the directory, so a mistyped path creates nothing; a
    new directory is noted, so that a refused command removes it again (`gdlab.rundir`).
    """
    if resume is None:
        rundir.note_dir(new_dir)
        return new_dir
    if not (Path(resume) / "checkpoint.pt").is_file():
        raise GdlabError(f"trainer.resume={resume}: no run directory with a checkpoint.pt there")
    return str(resume)


def sweep_dir_for(resume: str | None, new_dir: str) -> str:
    """hydra.sweep.dir: a multirun trains new runs; a run is resumed on its own, in place."""
    if resume is not None:
        raise GdlabError(MULTIRUN_RESUME)
    rundir.note_dir(new_dir)
    return new_dir


#: why a multirun does not resume runs
MULTIRUN_RESUME = (
    "trainer.resume continues one run in its own directory and does not go with a multirun "
    "(-m, hparams_search): resume each run with its own command, gdlab trainer.resume=DIR"
)


def output_subdir_for(resume: str | None, *, _root_: Any = None) -> str | None:
    """hydra.output_subdir, and the moment a run takes its directory.

    Hydra resolves this after it has created the run directory and before it writes
    `.hydra/` there, so this is where a plain run locks its directory (`gdlab.rundir.lock`)
    and where a new run refuses a directory that holds another run, before overwriting
    anything. On resume Hydra writes no `.hydra/`: the command records the run's own
    config once it has accepted it (`cli.run_job`).
    """
    output_dir = None if _root_ is None else OmegaConf.select(_root_, "hydra.runtime.output_dir")
    mode = None if _root_ is None else OmegaConf.select(_root_, "hydra.mode")
    if output_dir is not None and getattr(mode, "name", str(mode)) == "RUN":
        if resume is not None and os.path.realpath(output_dir) != os.path.realpath(resume):
            raise GdlabError(
                f"trainer.resume={resume} continues that run in its own directory; "
                f"leave out hydra.run.dir={output_dir}"
            )
        if rundir.lock(output_dir) and resume is None:
            try:
                rundir.refuse_other_run(output_dir)
            except GdlabError:
                rundir.release(output_dir)
                raise
    return OUTPUT_SUBDIR if resume is None else None


def register_configs() -> None:
    """Register the schemas and resolvers; safe to call more than once."""
    from gdlab.objectives.nodes import register_help_resolver, register_objective_configs

    store = ConfigStore.instance()
    store.store(name="gdlab_schema", node=GdlabConfig)
    for rule, schema in OPTIMIZER_SCHEMAS.items():
        store.store(group="optimizer", name=f"{rule}_schema", node=schema)
    # objective=NAME for every entry point in gdlab.objectives, plugins included (no YAML needed)
    register_objective_configs(config_dir())
    register_help_resolver(config_dir())
    from gdlab.help import register_help_resolvers

    register_help_resolvers()
    if not OmegaConf.has_resolver("gdlab.pid"):
        # Part of the run directory's name, so two runs started in the same second never share one.
        OmegaConf.register_new_resolver("gdlab.pid", lambda: str(os.getpid()), use_cache=True)
    if not OmegaConf.has_resolver("gdlab.run_dir"):
        OmegaConf.register_new_resolver("gdlab.run_dir", run_dir_for)
    if not OmegaConf.has_resolver("gdlab.sweep_dir"):
        OmegaConf.register_new_resolver("gdlab.sweep_dir", sweep_dir_for)
    if not OmegaConf.has_resolver("gdlab.output_subdir"):
        # Hydra would write the resume command's own config over the run's: not on resume.
        OmegaConf.register_new_resolver("gdlab.output_subdir", output_subdir_for)
    if not OmegaConf.has_resolver("gdlab.job_dir"):
        from gdlab.sweeps.naming import job_dirname  # light: no torch, no matplotlib

        # hydra.sweep.subdir; cached so a job resolves (and claims) its directory once
        OmegaConf.register_new_resolver("gdlab.job_dir", job_dirname, use_cache=True)


register_configs()
