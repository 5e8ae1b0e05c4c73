"""The `gdlab` command: a thin Hydra entry point over `experiment.run_experiment`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gdlab.config import config_dir
from gdlab.errors import GdlabError
from gdlab.experiment import run_experiment
from gdlab.sinks.console import summary_line

log = logging.getLogger("gdlab")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def app(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = run_experiment(cfg, run_dir)
    except GdlabError as err:
        print(f"gdlab: error: {err}", file=sys.stderr)
        sys.exit(2)
    log.info("gdlab: %s", summary_line(result))
    log.info("gdlab: run directory %s", run_dir)


def main() -> None:
    """Console-script entry point (`gdlab`, `python -m gdlab`)."""
    app()
