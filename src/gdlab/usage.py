"""One line for each user mistake that Hydra or OmegaConf report in several.

Hydra reports a bad override as a stack of exceptions with `full_key`, object types and a
hint about HYDRA_FULL_ERROR. Users need the key, the value and what is allowed; this module
turns those exceptions into that line, and leaves anything else (a bug) to its traceback.
"""

from __future__ import annotations

import dataclasses
import re
from enum import Enum

from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from gdlab import config as schemas
from gdlab.errors import GdlabError, causes


def allowed_keys(parent: str) -> str | None:
    """The keys a schema group accepts, for 'unknown key' messages."""
    schema = schemas.SCHEMA_BY_GROUP.get(parent)
    if schema is None:
        return None
    return ", ".join(f.name for f in dataclasses.fields(schema))


def node_keys(node: object) -> str | None:
    """The keys of the config node an unknown key was looked up in (e.g. an objective's)."""
    if not isinstance(node, DictConfig):
        return None
    keys = [str(k) for k in node if not str(k).startswith("_")]
    return ", ".join(keys) or None


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def describe_omegaconf(err: OmegaConfBaseException, override: str | None) -> str:
    key = getattr(err, "full_key", None) or ""
    msg = first_line(getattr(err, "msg", None) or str(err))
    value = override.split("=", 1)[1] if override and "=" in override else None
    lowered = msg.lower()
    if "not in" in lowered or "not found" in lowered or "is not in struct" in lowered:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = allowed_keys(parent) or node_keys(getattr(err, "parent_node", None))
        hint = f"; allowed keys: {allowed}" if allowed else ""
        return f"unknown key {key}{hint}"
    enum_type = getattr(err, "ref_type", None)
    if isinstance(enum_type, type) and issubclass(enum_type, Enum):
        allowed = ", ".join(member.name for member in enum_type)
        return f"{key}={value!r} is not allowed; allowed: {allowed}"
    where = f"{key}={value!r}" if key and value is not None else (key or "config")
    return f"{where}: {msg}"


def describe(err: BaseException) -> str | None:
    """The one-line message for a user mistake, or None when `err` is not one."""
    for cause in causes(err):  # our own error, perhaps wrapped by Hydra or OmegaConf
        if isinstance(cause, GdlabError):
            return str(cause)
    if isinstance(err, MissingConfigException):
        missing = err.missing_cfg_file or ""
        if "/" in missing and err.options is not None:
            group, option = missing.rsplit("/", 1)
            return f"{group}={option} is not an option; available: {', '.join(err.options)}"
        return first_line(str(err))
    if isinstance(err, OverrideParseException):
        return f"cannot parse the command line: {first_line(str(err))}"
    if isinstance(err, ConfigCompositionException):
        override = None
        found = re.search(r"override '?([^'\s]+)", str(err))
        if found:
            override = found.group(1)
        if isinstance(err.__cause__, OmegaConfBaseException):
            return describe_omegaconf(err.__cause__, override)
        return first_line(str(err))
    if isinstance(err, OmegaConfBaseException):
        return describe_omegaconf(err, None)
    if isinstance(err, OSError) and err.filename is not None:
        # e.g. an output directory that cannot be created or written
        return f"cannot write {err.filename}: {err.strerror}"
    if isinstance(err, RuntimeError) and NO_SLURM in str(err):
        return (
            "hydra/launcher=slurm submits the jobs with SLURM, which this machine does not "
            "have (no srun): run the command on the cluster's login node, or try the sweep "
            "here with hydra/launcher=submitit_local"
        )
    return None


#: what submitit says when it is asked to submit where SLURM is not installed
NO_SLURM = 'Could not detect "srun"'
