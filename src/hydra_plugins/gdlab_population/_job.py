"""One population job: read its members from the plan, train them at once, write the results.

The launcher calls `population_task(cfg)` with the job's composed config (its non-batchable
overrides plus `+population=<n>`). The job builds the shared part exactly as a plain run would
(`gdlab.population.from_config` -> `experiment.build`), trains every member in one batched
program, and writes `population.json`: one entry per member in a plain run's metrics.json
terms, plus the override list the member's own plain job would have had, so the sweep summary
gives each member its row.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from gdlab.errors import GdlabError
from hydra_plugins.gdlab_population._plan import (
    BATCHABLE,
    LABEL_KEY,
    JobPlan,
    member_overrides,
    read_plan,
)

log = logging.getLogger("gdlab")
POPULATION_JSON = "population.json"


def population_task(cfg: DictConfig) -> float:
    """The task function the population sweeper hands to the launcher."""
    from gdlab.sweep import job_failed

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        plan = read_plan(hydra_cfg.sweep.dir, cfg[LABEL_KEY])
        return run_population_job(cfg, plan, run_dir)
    except Exception as err:  # as gdlab's app does in a multirun: record it, let others go on
        return job_failed(run_dir, err)


def job_config(cfg: DictConfig, plan: JobPlan, first: int) -> DictConfig:
    """The job's config without the label and with member `first`'s batchable values: the
    config of that member's plain run, from which the shared part is built and checked."""
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
    """Train the plan's members; returns the best member's final loss (inf if none finished)."""
    from gdlab.interrupts import GracefulInterrupt
    from gdlab.population import Members, ScheduleSpec, from_config, member_base

    columns = plan.columns()
    base = member_base(cfg)
    members = Members.build(plan.count, base, **columns)
    problems = members.problems()
    sched = cfg.optimizer.schedule
    spec = ScheduleSpec(sched.name, sched.step_size, sched.gamma, sched.min_lr)
    # The schedule's checks depend on lr only through cosine's min_lr <= lr: per distinct lr.
    steps, refused = int(cfg.trainer.steps), {}
    for lr in set(members.lr) if spec.name == "cosine" else {members.lr[0]}:
        try:
            spec.check([float(lr)], steps)
        except GdlabError as err:
            refused[lr] = str(err)
    for i, lr in enumerate(members.lr):
        if i not in problems and (lr in refused or (refused and spec.name != "cosine")):
            problems[i] = refused.get(lr) or next(iter(refused.values()))
    valid = [i for i in range(plan.count) if i not in problems]
    run_dir.mkdir(parents=True, exist_ok=True)
    if not valid:
        write_population(run_dir, plan, members, None, valid, problems, info=None, extra={})
        log.error("gdlab: every member's settings were refused: %s", problems[0])
        return math.inf

    job_cfg = job_config(cfg, plan, valid[0])
    options = plan.options
    with GracefulInterrupt() as interrupt:
        trainer = from_config(
            job_cfg,
            {k: [v[i] for i in valid] for k, v in columns.items()},
            strategy=str(options.get("strategy", "auto")),
            chunk_size=options.get("chunk_size"),
        )
        trainer.interrupt = interrupt
        log.info(
            "gdlab: population of %d on %s, %s, %d steps, batched by %s",
            len(valid),
            trainer.device,
            str(trainer.dtype).replace("torch.", ""),
            trainer.settings.steps,
            trainer.batched.strategy if trainer.batched.strategy != "auto" else "probe",
        )
        result = trainer.run()
    info = {
        "objective": objective_label(trainer.objective),
        "device": str(trainer.device),
        "dtype": str(trainer.dtype).replace("torch.", ""),
    }
    extra: dict[str, Any] = {"stability_lr": stability_lr(trainer.objective, trainer.mini_batch)}
    if job_cfg.logger.tensorboard and not interrupt.requested:
        from hydra_plugins.gdlab_population._tensorboard import write_tensorboard

        settings = [{k: v[i] for k, v in columns.items()} for i in valid]
        extra["tensorboard"] = write_tensorboard(
            run_dir,
            job_cfg,
            member_hparams(job_cfg, plan, members, valid, info["objective"]),
            result,
            valid,
            settings,
            options.get("hparams_members"),
        )
    write_population(run_dir, plan, members, result, valid, problems, info, extra)
    log.info("gdlab: %s", population_line(result, members, valid))
    log.info("gdlab: run directory %s", run_dir)
    if "interrupted" in result.status:
        sys.exit(interrupt.exit_code)  # 130 after Ctrl-C, 143 after SIGTERM, as plain runs do
    ranked = [
        float(result.final_loss[j])
        for j, s in enumerate(result.status)
        if s in ("finished", "converged") and math.isfinite(float(result.final_loss[j]))
    ]
    return min(ranked, default=math.inf)


def member_hparams(
    cfg: DictConfig, plan: JobPlan, members: Any, valid: list[int], objective: str
) -> list[dict[str, Any]]:
    """Each trained member's HParams: what its plain job would report (the overridden keys in
    command-line order, then objective, lr, momentum, steps, device, dtype)."""
    from gdlab.experiment import main_hparams
    from gdlab.sweep import hparam_value, override_hparams

    shared = override_hparams(cfg, [plan.shared[k] for k in plan.order if k in plan.shared])
    main = main_hparams(cfg, objective)
    columns = plan.columns()
    out = []
    for i in valid:
        hparams: dict[str, Any] = {}
        for key in plan.order:
            if key in BATCHABLE and BATCHABLE[key] in columns:
                hparams[key] = hparam_value(columns[BATCHABLE[key]][i])
            elif key in shared:
                hparams[key] = shared[key]
        hparams.update(main)
        hparams["optimizer.lr"] = members.lr[i]
        hparams["optimizer.momentum"] = members.momentum[i]
        out.append(hparams)
    return out


def objective_label(objective: Any) -> str:
    from gdlab.experiment import objective_name

    return objective_name(objective)


def stability_lr(objective: Any, mini_batch: bool) -> float | None:
    """2/L, the largest learning rate at which plain gradient descent converges on a quadratic
    (L the largest Hessian eigenvalue); None where the objective is not a convex quadratic."""
    import torch

    from gdlab.objectives.linear_regression import LinearRegression
    from gdlab.objectives.multivariate import QuadraticForm
    from gdlab.objectives.quadratic import Quadratic

    hessian_max: float | None = None
    if isinstance(objective, Quadratic):
        hessian_max = 2.0 * objective.a if objective.a > 0 else None
    elif isinstance(objective, QuadraticForm):
        hessian_max = objective.lipschitz if objective.positive_definite else None
    elif isinstance(objective, LinearRegression) and not mini_batch:
        # MSE is the quadratic (1/n)|D theta - y|^2 in theta = (w, b), D = [X, 1]: H = 2 D^T D / n
        design = torch.cat([objective.X, torch.ones_like(objective.X[:, :1])], dim=1).double()
        hessian = 2.0 * design.T @ design / design.shape[0]
        hessian_max = float(torch.linalg.eigvalsh(hessian.cpu()).max())
    elif isinstance(getattr(objective, "lipschitz", None), int | float):
        hessian_max = float(objective.lipschitz)  # a plugin that states its curvature bound
    if hessian_max is None or not hessian_max > 0:
        return None
    return 2.0 / hessian_max


def population_line(result: Any, members: Any, valid: list[int]) -> str:
    """`population of 1000: 745 converged, 255 finished; best optimizer.lr=0.5 (loss 0.24)`."""
    tally = ", ".join(f"{n} {status}" for status, n in sorted(result.counts().items()))
    failed = len(members) - len(valid)
    if failed:
        tally += f", {failed} failed"
    from hydra_plugins.gdlab_population._tensorboard import representatives

    best = representatives(result).get("best")
    if best is not None and result.status[best] not in ("finished", "converged"):
        best = None  # nobody finished: no best
    text = f"population of {len(members)}: {tally}"
    if best is not None:
        row = members.row(valid[best])
        text += f"; best lr={row['lr']:g}"
        if any(members.momentum):
            text += f", momentum={row['momentum']:g}"
        loss = float(result.final_loss[best])
        text += f" (loss {loss:.6g}, {result.strategy} in {result.wall_time_s:.3g} s)"
    return text


def write_population(
    run_dir: Path,
    plan: JobPlan,
    members: Any,
    result: Any,
    valid: list[int],
    problems: dict[int, str],
    info: dict[str, Any] | None,
    extra: dict[str, Any],
) -> None:
    """population.json: columns of per-member results, in metrics.json's terms."""
    import json

    from gdlab.atomic import write_atomic
    from gdlab.events import SMALL_PARAM_NUMEL
    from gdlab.sinks.metrics import json_number

    count = plan.count
    status = ["failed"] * count
    steps: list[int | None] = [None] * count
    final_loss: list[float | None] = [None] * count
    grad_norm: list[float | None] = [None] * count
    distance: list[float | None] = [None] * count
    stop_reason: list[str | None] = [None] * count
    error: list[str | None] = [problems.get(i) for i in range(count)]
    params: dict[str, list[Any]] = {}
    wall = per_member = None
    if result is not None:
        wall = result.wall_time_s
        per_member = wall / max(1, count)
        losses = result.final_loss.tolist()
        norms = result.grad_norm.tolist()
        dist = None if result.distance_to_minimizer is None else result.distance_to_minimizer
        dist_list = None if dist is None else dist.tolist()
        small = {
            k: v.double().reshape(v.shape[0], -1)
            for k, v in result.params.items()
            if v[0].numel() <= SMALL_PARAM_NUMEL
        }
        for k, v in small.items():
            params[k] = [None] * count
            shape = tuple(result.params[k].shape[1:])
            rows = v.tolist()
            for j, i in enumerate(valid):
                values = [json_number(x) for x in rows[j]]
                params[k][i] = values[0] if shape == () else _nest(values, shape)
        for j, i in enumerate(valid):
            status[i] = result.status[j]
            steps[i] = result.steps[j]
            final_loss[i] = json_number(losses[j])
            grad_norm[i] = json_number(norms[j])
            distance[i] = None if dist_list is None else json_number(dist_list[j])
            stop_reason[i] = result.stop_reason[j]
    document = {
        "kind": "gdlab.population",
        "version": 1,
        "members": count,
        **(info or {"objective": None, "device": None, "dtype": None}),
        "strategy": None if result is None else result.strategy,
        "chunk_size": None if result is None else result.chunk_size,
        "wall_time_s": wall,
        "wall_time_per_member_s": per_member,
        "steps_run": None if result is None else result.steps_run,
        "minimum": None if result is None else json_number(result.minimum),
        **extra,
        "overrides": member_overrides(plan),
        "lr": [json_number(_float(v)) for v in members.lr],
        "status": status,
        "steps": steps,
        "final_loss": final_loss,
        "grad_norm": grad_norm,
        "distance_to_minimizer": distance,
        "stop_reason": stop_reason,
        "error": error,
        "params": params,
    }
    # Compact, one member per column entry: json's C encoder (indentation would take the
    # pure-Python one, seconds per 100,000 members).
    text = json.dumps(document, allow_nan=False, separators=(",", ":")) + "\n"
    write_atomic(run_dir / POPULATION_JSON, lambda handle: handle.write(text.encode("utf-8")))


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _nest(values: list[Any], shape: tuple[int, ...]) -> list[Any]:
    if len(shape) == 1:
        return values
    size = len(values) // shape[0]
    return [_nest(values[i * size : (i + 1) * size], shape[1:]) for i in range(shape[0])]
