"""One population job: read its members from the plan, train them at once, write the results.

The launcher calls `population_task(cfg)` with the job's composed config (its non-batchable
overrides plus `+population=<n>`). The job builds the shared problem exactly as a plain run
would (`gdlab.problem.build_problem`), trains every member in one batched program
(`gdlab.population.engine`) and writes `population.json` (`gdlab.results`; the columns in
`members.parquet` beside it for more than `results.INLINE_MEMBERS` members): one entry per
member in a plain run's metrics.json terms, plus the override list the member's own plain job
would have had, so the sweep summary gives each member its row.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from gdlab.errors import GdlabError
from gdlab.interrupts import GracefulInterrupt
from gdlab.settings import BATCHABLE, MEMBER_KEYS
from hydra_plugins.gdlab_population._plan import LABEL_KEY, JobPlan, member_overrides, read_plan

log = logging.getLogger("gdlab")


def population_task(cfg: DictConfig) -> float:
    """The task function the population sweeper hands to the launcher."""
    from gdlab.sweeps.failures import job_failed

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        plan = read_plan(hydra_cfg.sweep.dir, cfg[LABEL_KEY])
        return run_population_job(cfg, plan, run_dir)
    except Exception as err:  # as gdlab's app does in a multirun: record it, let others go on
        return job_failed(run_dir, err)


#: what an interrupted population job leaves (it has no checkpoint to resume from)
NO_CHECKPOINT = (
    "population jobs have no checkpoint: population.json records the running members as "
    "interrupted, with their last losses, and the sweep stops; run the sweep again to train them"
)


class PopulationInterrupt(GracefulInterrupt):
    """`GracefulInterrupt` in the words of a population job: the first signal finishes the
    step and ends the job without a checkpoint (a plain run's words promise one)."""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second signal: exit at once, as a plain run does
            super()._handle(signum, frame)
            return
        self.requested = signum
        sys.stderr.write(
            f"\ngdlab: {signal.Signals(signum).name} received: finishing this step; "
            f"{NO_CHECKPOINT} (send it again to exit at once)\n"
        )


def job_config(cfg: DictConfig, plan: JobPlan, first: int) -> DictConfig:
    """The job's config without the label and with member `first`'s batchable values: the
    config of that member's plain run, from which the shared problem is built and checked."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(cfg):
        cfg.pop(LABEL_KEY, None)
    if cfg.trainer.get("resume") is not None:
        raise GdlabError("trainer.resume: population jobs do not resume runs")
    columns = plan.columns()
    for axis in plan.axes:
        OmegaConf.update(cfg, axis.key, columns[BATCHABLE[axis.key]][first])
    return cfg


def run_population_job(cfg: DictConfig, plan: JobPlan, run_dir: Path) -> float:
    """Train the plan's members; returns the best member's score (inf if none is ranked)."""
    from gdlab.population.engine import PopulationTrainer
    from gdlab.population.members import Members, member_base
    from gdlab.problem import build_problem, check_population_memory
    from gdlab.results import population_records, write_population
    from gdlab.settings import read_values

    check_population_memory(cfg, plan.count)  # before a list of the members is made
    columns = plan.columns()
    values = read_values(cfg)
    rule = values["optimizer.name"]
    members = Members.build(plan.count, member_base(values, rule), rule, **columns)
    problems = members.problems(values)  # refused as their plain runs would be
    valid = [i for i in range(plan.count) if i not in problems]
    run_dir.mkdir(parents=True, exist_ok=True)
    lrs = members.lr
    if not valid:
        records = population_records(
            plan.count, member_overrides(plan), lrs, None, valid, problems, None, {}
        )
        write_population(run_dir, records)
        log.error("gdlab: every member's settings were refused: %s", problems[0])
        return math.inf

    job_cfg = job_config(cfg, plan, valid[0])
    problem = build_problem(job_cfg, members=len(valid))
    trained = members.select(valid, checked=True)  # judged just above, against `values`
    options = plan.options
    with PopulationInterrupt() as interrupt:
        trainer = PopulationTrainer(
            problem.objective,
            trained,
            problem.loop,
            problem.schedule,
            problem.device,
            problem.dtype,
            strategy=str(options.get("strategy", "auto")),
            chunk_size=options.get("chunk_size"),
            interrupt=interrupt,
            shared=problem.values,
            sharpness=problem.sharpness,
            name=problem.name,
            compile=options.get("compile", "auto"),
        )
        log.info(
            "gdlab: population of %d on %s, %s, %d steps, batched by %s",
            len(valid),
            trainer.device,
            problem.dtype_name,
            trainer.settings.steps,
            trainer.batched.strategy if trainer.batched.strategy != "auto" else "probe",
        )
        result = trainer.run()
    info = {
        "objective": problem.name,
        "problem": problem.record(),
        "device": str(problem.device),
        "dtype": problem.dtype_name,
    }
    extra: dict[str, Any] = {"curvature": trainer.curvature}
    if job_cfg.logger.tensorboard and not interrupt.requested:
        from gdlab.population.tensorboard import write_tensorboard

        settings = [trained.row(j) for j in range(len(trained))]
        extra["tensorboard"] = write_tensorboard(
            run_dir,
            job_cfg,
            member_hparams(job_cfg, plan, problem, members, valid),
            result,
            valid,
            settings,
            options.get("hparams_members"),
        )
    records = population_records(
        plan.count, member_overrides(plan), lrs, result, valid, problems, info, extra
    )
    write_population(run_dir, records)
    log.info("gdlab: %s", population_line(result, members, valid))
    log.info("gdlab: run directory %s", run_dir)
    if "interrupted" in result.status:
        log.info("gdlab: %s", NO_CHECKPOINT)
        sys.exit(interrupt.exit_code)  # 130 after Ctrl-C, 143 after SIGTERM, as plain runs do
    return min(result.score, default=math.inf)  # the best member's score: what gdlab ranks by


def member_hparams(
    cfg: DictConfig, plan: JobPlan, problem: Any, members: Any, valid: list[int]
) -> list[dict[str, Any]]:
    """Each trained member's HParams: what its plain job would report (the overridden keys in
    command-line order, then the table's always-reported keys, device and dtype)."""
    from gdlab.experiment import main_hparams
    from gdlab.sweeps.hparams import hparam_value, override_hparams

    shared = override_hparams(cfg, [plan.shared[k] for k in plan.order if k in plan.shared])
    columns = plan.columns()
    out = []
    for i in valid:
        hparams: dict[str, Any] = {}
        for key in plan.order:
            if key in BATCHABLE and BATCHABLE[key] in columns:
                hparams[key] = hparam_value(columns[BATCHABLE[key]][i])
            elif key in shared:
                hparams[key] = shared[key]
        own = {MEMBER_KEYS[name]: value for name, value in members.row(i).items()}
        hparams.update(main_hparams(problem, own))
        out.append(hparams)
    return out


def population_line(result: Any, members: Any, valid: list[int]) -> str:
    """`population of 1000: 745 converged, 255 finished; best lr=0.5 (loss 0.24)`."""
    from gdlab.population.tensorboard import representatives

    tally = ", ".join(f"{n} {status}" for status, n in sorted(result.counts().items()))
    failed = len(members) - len(valid)
    if failed:
        tally += f", {failed} failed"
    best = representatives(result).get("best")
    if best is not None and result.status[best] not in ("finished", "converged"):
        best = None  # nobody finished: no best
    text = f"population of {len(members)}: {tally}"
    if best is not None:
        row = members.row(valid[best])
        text += f"; best lr={row['lr']:g}"
        if any(members.columns.get("momentum", ())):
            text += f", momentum={row['momentum']:g}"
        loss = float(result.final_loss[best])
        text += f" (loss {loss:.6g}, {result.strategy} in {result.wall_time_s:.3g} s)"
    return text
