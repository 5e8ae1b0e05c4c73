"""Checkpoints: everything needed to continue a run, written atomically, loaded safely.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads with
`torch.load(weights_only=True)`: no pickled code runs when a file is read. It is written to a
temporary file in the run directory, fsynced, then renamed over `checkpoint.pt`, so a crash
at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

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
    state = read_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GdlabError(f"{path} is not a gdlab checkpoint")
    for key, kind in REQUIRED.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise GdlabError(f"{path} is damaged: field {key!r} is missing or not {KINDS[kind]}")
    if state["version"] > VERSION:
        raise GdlabError(
            f"{path} was written by a newer gdlab (checkpoint version {state['version']})"
        )
    if state["version"] < 1:
        raise GdlabError(f"{path} is damaged: its version {state['version']} is not >= 1")
    if state["step"] < 0:
        raise GdlabError(f"{path} is damaged: its step {state['step']} is negative")
    if state["status"] not in STATUSES:
        raise GdlabError(
            f"{path} is damaged: its status {state['status']!r} is none of {', '.join(STATUSES)}"
        )
    if not all(isinstance(o, str) for o in state["overrides"]):
        raise GdlabError(f"{path} is damaged: its overrides are not all strings")
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
    if state["config_yaml"]:  # "" only in hand-made states
        stored_config(state, path)
    return state


KINDS = {str: "a string", int: "an integer", list: "a list", dict: "a mapping"}
#: every status a checkpoint may hold
STATUSES = ("running", "interrupted", "finished", "converged", "diverged")


def read_file(path: Path) -> Any:
    """`torch.load(weights_only=True)` of `path`; what is wrong with it in one line."""
    if path.stat().st_size == 0:
        raise GdlabError(f"{path} is not a readable checkpoint (the file is empty)")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise GdlabError(
            f"{path} is not a readable checkpoint (not a file torch.save writes: cut short, "
            "or another kind of file)"
        )
    try:
        with warnings.catch_warnings():  # torch warns before it fails on some files
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, or a pickle that is not plain data
        raise GdlabError(f"{path} is not a readable checkpoint ({load_failure(err)})") from None


def load_failure(err: BaseException) -> str:
    """Why torch could not load a checkpoint, in a few words, never cut mid-word."""
    text = " ".join(str(err).split())
    unsafe = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    if unsafe:
        return "it holds Python objects, not only tensors and plain data: " + shorten(
            unsafe.group(1)
        )
    if "Weights only load failed" in text:
        return "it holds Python objects, not only tensors and plain data"
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not re.search(r"[A-Za-z]{3}", first):  # a bare code such as "(101)"
        return f"its data is damaged ({type(err).__name__}{': ' + first if first else ''})"
    return shorten(first)


def shorten(text: str, limit: int = 120) -> str:
    """`text` cut at a word boundary to about `limit` characters."""
    text = text.strip().rstrip(".")
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"


def stored_config(state: dict[str, Any], path: Path) -> DictConfig:
    """The resolved config a checkpoint recorded, as a DictConfig; damage is one line."""
    try:
        cfg = OmegaConf.create(state["config_yaml"])
    except Exception as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise GdlabError(
            f"{path} is damaged: its stored config is not valid YAML ({problem}{where})"
        ) from None
    if not isinstance(cfg, DictConfig):
        raise GdlabError(f"{path} is damaged: its stored config is not a mapping of settings")
    missing = [key for key in ("objective", "optimizer", "trainer") if key not in cfg]
    if missing:
        raise GdlabError(f"{path} is damaged: its stored config has no {', '.join(missing)}")
    return cfg
