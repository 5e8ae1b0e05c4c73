"""`trainer.resume=DIR`: continue a run in its own directory with its own configuration.

The checkpoint remembers the command-line overrides that composed the run. Resuming composes
the config again from those plus whatever the resume command adds, and accepts only what
does not change the run being continued: a longer budget (`trainer.steps`), another log or
checkpoint cadence, the progress bar, the device, the logger. A change of the problem (the
objective and its data, `device.dtype`) or of a setting of the run (the update rule and its
hyperparameters, the seed, the stop rules, sharpness) is refused in one line naming the keys,
so metrics.json and TensorBoard's HParams describe the whole run truthfully.

A checkpoint belongs to its directory: its config must match the run recorded in the
directory's own `.hydra/config.yaml`, so one copied in from another run is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from gdlab.checkpoint import CHECKPOINT_NAME, RESUMABLE, load_checkpoint, stored_config
from gdlab.config import OUTPUT_SUBDIR
from gdlab.errors import GdlabError
from gdlab.rundir import resume_override
from gdlab.settings import SETTINGS
from gdlab.usage import describe

#: config paths that define the problem: a checkpoint of one problem can't continue another
PROBLEM_KEYS = ("objective", "device.dtype")
#: settings a resume may change: they change neither the problem nor the update rule
MAY_CHANGE = (
    "trainer.steps",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.progress",
    "trainer.resume",
    "trainer.chunk_rows",
)
#: the settings a run keeps for its whole life (its update rule, seed, stop rules...)
KEPT_KEYS = tuple(s.key for s in SETTINGS if s.key not in MAY_CHANGE)
#: what the refusal lists as changeable
CHANGEABLE = tuple(key for key in MAY_CHANGE if key != "trainer.resume")
_ABSENT = object()


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


def differences(before: Any, after: Any, keys: tuple[str, ...]) -> list[str]:
    """The keys whose values differ between two configs, each as `key (old -> new)`.

    A key `before` does not have (a config written by an older gdlab) is not compared."""
    changed = []
    for key in keys:
        old = OmegaConf.select(before, key, default=_ABSENT)
        if old is _ABSENT:
            continue
        new = OmegaConf.select(after, key, default=_ABSENT)
        if new is _ABSENT or as_text(old) != as_text(new):
            if isinstance(old, DictConfig) or isinstance(new, DictConfig):
                changed.append(key)
            else:
                shown = "none" if new is _ABSENT else as_text(new)
                changed.append(f"{key} ({as_text(old)} -> {shown})")
    return changed


def without_resume(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("+~").startswith("trainer.resume=")]


def check_own_checkpoint(run_dir: Path, checkpoint_cfg: DictConfig) -> None:
    """The checkpoint must be this directory's: its problem and settings those recorded in
    the directory's `.hydra/config.yaml` (a checkpoint copied from another run is not)."""
    recorded = Path(run_dir) / OUTPUT_SUBDIR / "config.yaml"
    if not recorded.is_file():
        return
    try:
        own = OmegaConf.load(recorded)
        if not isinstance(own, DictConfig):
            raise ValueError("not a mapping of settings")
        changed = differences(own, checkpoint_cfg, (*PROBLEM_KEYS, *KEPT_KEYS))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GdlabError(
            f"{recorded} is damaged ({reason}); cannot check that the checkpoint is this run's"
        ) from None
    if changed:
        raise GdlabError(
            f"{Path(run_dir) / CHECKPOINT_NAME} is not the checkpoint of the run in {run_dir} "
            f"(copied from another run?): it differs in {', '.join(changed)} (the directory's "
            f"{OUTPUT_SUBDIR}/config.yaml -> the checkpoint); resume each run from its own "
            "checkpoint, in its own directory"
        )


def check_settings(cfg: DictConfig) -> None:
    """The checks a run makes on its settings before its first step (unknown keys, ranges,
    the device), made before a resume records its config."""
    from gdlab.config import reject_unknown_keys
    from gdlab.devices import resolve_device
    from gdlab.settings import check_values, plain_value, read_values

    reject_unknown_keys(cfg)
    check_values(read_values(cfg))
    resolve_device(plain_value(cfg.device.type))


def prepare_resume(
    run_dir: Path, current_overrides: list[str], config_name: str = "config"
) -> tuple[DictConfig, dict[str, Any], list[str]]:
    """Load DIR's checkpoint, check it is DIR's own, and compose the config to continue with.

    Returns the config, the checkpoint's state and the overrides that composed the config.
    Every refusal comes before anything is written. Must run inside a Hydra app (or
    `initialize_config_dir`), where `compose` is available.
    """
    state = load_checkpoint(run_dir)
    original = stored_config(state, Path(run_dir) / CHECKPOINT_NAME)
    check_own_checkpoint(run_dir, original)
    if state["status"] not in RESUMABLE:
        raise AlreadyFinished(state)
    overrides = [*state["overrides"], *without_resume(current_overrides)]
    try:
        # quoted: a run directory's path may hold '=', ',', brackets or quotes
        cfg = compose(config_name=config_name, overrides=[*overrides, resume_override(run_dir)])
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
    changed = differences(original, cfg, KEPT_KEYS)
    if any(c.startswith("optimizer.name ") for c in changed):  # another rule: its keys differ
        changed = [c for c in changed if c.startswith("optimizer.name ") or "optimizer." not in c]
    if changed:
        raise GdlabError(
            f"trainer.resume={run_dir}: this command changes {', '.join(changed)}; a resumed "
            f"run keeps its settings (it may change only {', '.join(CHANGEABLE)}, the "
            "device and the logger): start a new run to try other settings"
        )
    if cfg.trainer.steps < state["step"]:
        raise GdlabError(
            f"trainer.steps={cfg.trainer.steps} is below the checkpoint's step {state['step']}"
        )
    check_settings(cfg)
    return cfg, state, overrides
