"""Configs composed once per job: the sweeper's check hands its compositions to the launcher.

Before launching, a Hydra sweeper composes the config of every job of the batch to check it
(`Sweeper.validate_batch_is_legal`), and throws the configs away; then each job composes its
own again (in a worker for joblib, in the driver for Ray). About 0.1 s each on this machine:
as much as a small run costs. While attached, `Compositions` makes the config loader remember
what it composes, and the launcher takes each job's config from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

#: configs kept from a check at most (beyond, the jobs compose their own, as without this)
KEPT_COMPOSITIONS = 4096


class Compositions:
    """The configs the config loader composed while attached, by the job's overrides.

    It is detached while jobs are sent to other processes (the loader travels with each job
    and must arrive there as Hydra's own), and attached again for the sweeper's next batch."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.kept: dict[tuple[str, ...], DictConfig] = {}

    @classmethod
    def attach(cls, loader: Any) -> Compositions:
        compositions = cls(loader)
        compositions.attach_again()
        return compositions

    def attach_again(self) -> None:
        compose = type(self.loader).load_sweep_config
        loader, kept = self.loader, self.kept

        def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> Any:
            config = compose(loader, master_config, sweep_overrides)
            if len(kept) < KEPT_COMPOSITIONS:
                kept[tuple(sweep_overrides)] = config.copy()
            return config

        loader.load_sweep_config = load_sweep_config

    def detach(self) -> None:
        self.loader.__dict__.pop("load_sweep_config", None)

    def take(self, overrides: Sequence[str]) -> DictConfig | None:
        """The config composed for these overrides (handed out once), or None."""
        return self.kept.pop(tuple(overrides), None)

    def compose(self, master_config: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """The job's config: the one kept, else composed now (and not kept)."""
        config = self.take(overrides)
        if config is None:
            config = type(self.loader).load_sweep_config(
                self.loader, master_config, list(overrides)
            )
        return config
