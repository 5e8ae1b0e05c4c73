"""Checkpoints: everything needed to continue a run, written atomically, loaded safely.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads with
`torch.load(weights_only=True)`: no pickled code runs when a file is read. It is written to a
temporary file in the run directory, fsynced, then renamed over `checkpoint.pt`, so a crash
at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gdlab.atomic import write_atomic
from gdlab.errors import GdlabError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "gdlab-checkpoint"
VERSION = 2  # 2: the update rule's state (optimizer_state); 1: SGD's momentum_buffers
#: statuses a run can be resumed from; the others mean the run is over
RESUMABLE = ("running", "interrupted")
REQUIRED = {
    "format": str,
    "version": int,
    "step": int,
    "status": str,
    "params": dict,
    "config_yaml": str,
    "overrides": list,
}


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` (plus format tag and version) as `run_dir/checkpoint.pt`."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    return write_atomic(Path(run_dir) / CHECKPOINT_NAME, lambda handle: torch.save(payload, handle))


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read and check `run_dir/checkpoint.pt`; any problem is one line naming the file."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not Path(run_dir).is_dir():
        raise GdlabError(f"trainer.resume={run_dir}: no such run directory")
    if not path.is_file():
        raise GdlabError(f"trainer.resume={run_dir}: no {CHECKPOINT_NAME} in that directory")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or a pickle that is not plain data
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GdlabError(f"{path} is not a readable checkpoint ({reason[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GdlabError(f"{path} is not a gdlab checkpoint")
    for key, kind in REQUIRED.items():
        if not isinstance(state.get(key), kind):
            raise GdlabError(
                f"{path} is damaged: field {key!r} is missing or not a {kind.__name__}"
            )
    # the update rule's state (version 1: SGD's momentum_buffers alone)
    rule_state = state.get("optimizer_state")
    if rule_state is None:
        rule_state = {"state": {"momentum_buffer": state.get("momentum_buffers")}}
    buffers = (rule_state.get("state") or {}) if isinstance(rule_state, dict) else None
    tensors_ok = (
        all(isinstance(v, torch.Tensor) for v in state["params"].values())
        and isinstance(buffers, dict)
        and all(
            isinstance(column, list)
            and all(b is None or isinstance(b, torch.Tensor) for b in column)
            for key, column in buffers.items()
            if key != "step"
        )
    )
    if not tensors_ok:
        raise GdlabError(f"{path} is damaged: its parameters or optimizer state are not tensors")
    if state["version"] > VERSION:
        raise GdlabError(
            f"{path} was written by a newer gdlab (checkpoint version {state['version']})"
        )
    return state
