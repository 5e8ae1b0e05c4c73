"""The hyperparameters of a job: the composed value of every key its command line set."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def override_hparams(cfg: DictConfig, overrides: Iterable[str]) -> dict[str, Any]:
    """The composed value of every key the command line set, flattened for TensorBoard HParams.

    `optimizer.lr=0.1` gives `{"optimizer.lr": 0.1}` read back from the config (so `1e-1` and
    `0.1` agree); a group choice such as `objective=quadratic` gives its option name. Values are
    what HParams can show: numbers, strings, booleans (lists become their YAML text).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hparams: dict[str, Any] = {}
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # an override Hydra accepted but we cannot re-parse: skip the extras
        return hparams
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() or key.startswith("hydra") or not key:
            continue
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None or isinstance(value, DictConfig):
            value = override.value()  # a config group: its option name
        hparam = hparam_value(value)
        if hparam is not None:
            hparams[key] = hparam
    return hparams


def hparam_value(value: Any) -> float | int | str | bool | None:
    """A value HParams can hold: numbers, strings and booleans as they are, the rest as text."""
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    value = getattr(value, "value", value)  # config enums
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
