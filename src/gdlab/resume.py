"""`trainer.resume=DIR`: continue a run in its own directory with its own configuration.

The checkpoint remembers the command-line overrides that composed the run. Resuming composes
the config again from those plus whatever the resume command adds (a longer budget, another
log cadence), and refuses additions that would change the problem being solved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from gdlab.checkpoint import RESUMABLE, load_checkpoint
from gdlab.errors import GdlabError
from gdlab.usage import describe

#: config paths that define the problem: a checkpoint of one problem can't continue another
PROBLEM_KEYS = ("objective", "device.dtype")


class AlreadyFinished(Exception):
    """The run to resume has already ended; there is nothing to do."""

    def __init__(self, state: dict[str, Any]) -> None:
        status, step = state["status"], state["step"]
        super().__init__(
            f"that run already ended ({status} after {step} steps); nothing to resume "
            "(to train further, start a new run)"
        )


def as_text(node: object) -> str:
    """A config value as comparable text (enums and nested nodes included)."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_yaml(node, resolve=True)
    return str(getattr(node, "value", node))


def without_resume(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("+~").startswith("trainer.resume=")]


def prepare_resume(
    run_dir: Path, current_overrides: list[str], config_name: str = "config"
) -> tuple[DictConfig, dict[str, Any], list[str]]:
    """Load DIR's checkpoint and compose the config to continue with.

    Returns the config, the checkpoint's state and the overrides that composed the config.

    Must run inside a Hydra app (or `initialize_config_dir`), where `compose` is available.
    """
    state = load_checkpoint(run_dir)
    if state["status"] not in RESUMABLE:
        raise AlreadyFinished(state)
    original = OmegaConf.create(state["config_yaml"])
    overrides = [*state["overrides"], *without_resume(current_overrides)]
    try:
        cfg = compose(config_name=config_name, overrides=[*overrides, f"trainer.resume={run_dir}"])
    except Exception as err:
        reason = describe(err)
        if reason is None:
            raise
        raise GdlabError(
            f"trainer.resume={run_dir}: the run's overrides plus this command's do not compose "
            f"({reason}); a checkpointed run keeps its problem"
        ) from None
    for key in PROBLEM_KEYS:
        if as_text(OmegaConf.select(original, key)) != as_text(OmegaConf.select(cfg, key)):
            raise GdlabError(
                f"trainer.resume={run_dir}: this command changes {key} of the checkpointed run; "
                "resume with the same problem or start a new run"
            )
    if cfg.trainer.steps < state["step"]:
        raise GdlabError(
            f"trainer.steps={cfg.trainer.steps} is below the checkpoint's step {state['step']}"
        )
    return cfg, state, overrides
