"""The `gdlab` command: a thin Hydra entry point over `experiment.run_experiment`.

User mistakes (a bad override, an unknown option, a missing GPU, a corrupt checkpoint) end as
one line on stderr and exit code 2; set HYDRA_FULL_ERROR=1 to see the traceback instead.

`main()` runs the command in this process and returns its exit code, so Python code can call
it again and again; `console_main()` (the `gdlab` console script, `python -m gdlab`) exits.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gdlab import rundir
from gdlab.atomic import write_bytes_atomic
from gdlab.config import MULTIRUN_RESUME, OUTPUT_SUBDIR, config_dir
from gdlab.entry import USAGE_ERROR, UserMistake, exit_quickly, run_app, show_tracebacks
from gdlab.errors import GdlabError
from gdlab.interrupts import GracefulInterrupt
from gdlab.resume import AlreadyFinished, prepare_resume
from gdlab.rundir import resume_command
from gdlab.sinks.console import display_path, summary_line
from gdlab.sweeps.callback import last_sweep_failed
from gdlab.sweeps.failures import job_failed, objective_value

log = logging.getLogger("gdlab")
SWEEP_FAILED = 1  # a multirun in which at least one job failed (diverging is not failing)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def app(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    try:
        return run_job(cfg, hydra_cfg)
    except Exception as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # One job never stops a sweep: its failure goes into its metrics.json, the sweep
            # summary lists it, and `main` turns it into the sweep's exit code.
            return job_failed(Path(hydra_cfg.runtime.output_dir), err)
        if not isinstance(err, GdlabError) or show_tracebacks():
            raise
        # Leave Hydra as SystemExit does (an Exception would get a line of Hydra's own too);
        # `run_app` prints the message in one line, or raises it for gdlab.run.
        raise UserMistake(str(err)) from None
    finally:
        if hydra_cfg.mode == RunMode.MULTIRUN:  # a launcher may run the next job here
            rundir.release(hydra_cfg.runtime.output_dir)


def run_job(cfg: DictConfig, hydra_cfg: DictConfig) -> float | None:
    """One run: resume if asked, train, report; SystemExit(130/143) when interrupted by a
    signal (`main` returns that code).

    Returns the run's score (gdlab.rules.score; infinity when diverged): what a sweeper such
    as Optuna minimises, so its best is gdlab's rank 1."""
    from gdlab.experiment import run_experiment  # after Hydra has parsed the command line

    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode == RunMode.MULTIRUN and cfg.trainer.resume is not None:
        raise GdlabError(MULTIRUN_RESUME)
    # A plain run has taken its lock while Hydra prepared its directory
    # (config.output_subdir_for); a sweep job, or a run with hydra.output_subdir=null, here.
    if rundir.lock(run_dir) and hydra_cfg.mode == RunMode.RUN and cfg.trainer.resume is None:
        rundir.refuse_other_run(run_dir)
    state = None
    if cfg.trainer.resume is not None:
        # On resume Hydra writes no .hydra/ (config.yaml: output_subdir); once the command is
        # accepted (every check made), record the config that runs, composed from the run's
        # own overrides. A refused resume leaves .hydra/ as it was.
        try:
            cfg, state, overrides = prepare_resume(Path(cfg.trainer.resume), overrides)
        except AlreadyFinished as done:
            log.info("gdlab: %s", done)
            return None
        saved = run_dir / OUTPUT_SUBDIR
        saved.mkdir(exist_ok=True)
        write_bytes_atomic(saved / "config.yaml", OmegaConf.to_yaml(cfg).encode("utf-8"))
        overrides_yaml = OmegaConf.to_yaml(OmegaConf.create(overrides)).encode("utf-8")
        write_bytes_atomic(saved / "overrides.yaml", overrides_yaml)
    with GracefulInterrupt() as interrupt:
        result = run_experiment(
            cfg, run_dir, resume_state=state, overrides=overrides, interrupt=interrupt
        )
    log.info("gdlab: %s", summary_line(result))
    log.info("gdlab: run directory %s", display_path(run_dir))
    if result.status == "interrupted":
        # quoted for the shell and for Hydra: a sweep job's directory holds '=' and ','
        log.info("gdlab: continue with: %s", resume_command(run_dir))
        sys.exit(interrupt.exit_code)  # 130 after Ctrl-C, 143 after SIGTERM
    return objective_value(result)


def explain_for_resume(message: str) -> str:
    """A resume command is composed on the defaults first, where the run's own objective may
    not be selected: say why an objective field is then unknown."""
    resuming = any(arg.startswith("trainer.resume=") for arg in sys.argv[1:])
    if resuming and message.startswith("unknown key objective."):
        return f"{message} (a resumed run keeps its objective; its fields can't be changed)"
    return message


def forget_last_sweep() -> None:
    """Clear the summary the sweep callback keeps of the last multirun (a module global in the
    module that defines `last_sweep_failed`), so each call of `main` starts without one."""
    module = sys.modules[last_sweep_failed.__module__]
    module._last_summary, module._summary_lost = None, False


def main(argv: Sequence[str] | None = None, *, raise_errors: bool = False) -> int:
    """Run `gdlab` in this process; return its exit code, never exit the interpreter.

    `argv` is the command line without the program name (default: sys.argv[1:], which Hydra
    reads). 0: done; 1: a multirun with a failed job; 2: a user mistake, printed in one line;
    130/143: interrupted by SIGINT/SIGTERM (the run saved a checkpoint to resume from).
    `raise_errors`: raise a user mistake as a GdlabError with that line instead (`gdlab.api`).

    Whatever happens, the run directory's lock is released when the command ends, and a
    directory the command created but left holding nothing (a refused input) is removed.
    """
    forget_last_sweep()
    rundir.forget_dirs()
    try:
        try:
            check_command_line(sys.argv[1:] if argv is None else list(argv))
        except GdlabError as err:
            if raise_errors:
                raise
            print(f"gdlab: error: {err}", file=sys.stderr)
            return USAGE_ERROR
        code = run_app(app, "gdlab", explain_for_resume, argv, raise_errors=raise_errors)
        if code == 0 and last_sweep_failed():  # set by the sweep summary callback
            code = SWEEP_FAILED
    finally:
        rundir.release_all()
        rundir.remove_leftovers()
        forget_last_sweep()
    return code


def check_command_line(args: Sequence[str]) -> None:
    """Refuse, before Hydra creates any directory, what the command line alone shows is
    wrong: a multirun of resumes, a resume into another directory. Note the run's (or the
    sweep's) directory as it is now, so that a refused command puts it back as it was."""
    multirun = any(arg in ("-m", "--multirun") for arg in args)
    values: dict[str, Any] = {}
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if "=" in arg and not arg.startswith("-") and key in PREFLIGHT_KEYS:
            values[key] = override_value(arg)
    multirun = multirun or str(values.get("hydra.mode", "")).upper() == "MULTIRUN"
    resume = values.get("trainer.resume")
    new_dir = values.get("hydra.sweep.dir" if multirun else "hydra.run.dir")
    if multirun and resume is not None:
        raise GdlabError(MULTIRUN_RESUME)
    elsewhere = isinstance(resume, str) and isinstance(new_dir, str)
    if elsewhere and os.path.realpath(new_dir) != os.path.realpath(resume):
        raise GdlabError(
            f"trainer.resume={resume} continues that run in its own directory; "
            f"leave out hydra.run.dir={new_dir}"
        )
    if isinstance(new_dir, str) and "${" not in new_dir:
        rundir.note_dir(new_dir)


#: the overrides `check_command_line` reads
PREFLIGHT_KEYS = ("trainer.resume", "hydra.run.dir", "hydra.sweep.dir", "hydra.mode")


def override_value(arg: str) -> Any:
    """The value of one `key=value` override as Hydra parses it; None if it doesn't parse
    (Hydra then says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(arg).value()
    except Exception:
        return None


def console_main() -> None:
    """Console-script entry point (`gdlab`, `python -m gdlab`): `main`, then a quick exit."""
    exit_quickly(main())
