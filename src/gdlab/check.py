"""The `gdlab-check` command: are an objective's gradients right?

A Hydra app on gdlab's own config tree (its primary config `check.yaml` is `config.yaml` plus
the `check.*` settings), so it selects and configures objectives exactly as `gdlab` does:

    gdlab-check objective=rosenbrock objective.n=5 check.points=5

It builds the objective in float64 on the configured device, takes the run's starting point
(`trainer.seed`) and `check.points` seeded random points around it, compares autograd with the
analytic `grad` (when the class has one) and with finite differences
(`torch.autograd.gradcheck`), prints a table, and exits 1 naming the parameter and the point
of each mismatch (2 for a user mistake, 0 when everything agrees). A loss that is NaN or
infinite at a point is not a gradient mismatch: one line says so, naming the points, and the
exit code is 1. `gdlab-check --help` (configs/check.yaml) lists the check.* keys.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from gdlab.config import GdlabConfig, config_dir
from gdlab.devices import resolve_device
from gdlab.entry import USAGE_ERROR, exit_quickly, run_app
from gdlab.errors import GdlabError
from gdlab.gradcheck import Row, Tolerances, check_objective, random_points
from gdlab.objectives.instantiate import (
    build_objective,
    check_loss,
    checked_init_params,
    entry_for,
    registered_name,
    setup_objective,
)
from gdlab.problem import objective_choice

MISMATCH = 1  # a gradient mismatch, or a loss that is not finite at a point
#: points named in the line about a loss that is not finite; the rest are counted
NAMED_POINTS = 3


@dataclass
class CheckConfig:
    points: int = 3  # seeded random points besides the start
    seed: int = 0  # draws the random points
    scale: float = 1.0  # random point = start + scale * N(0, 1)
    rtol: float = 1e-6  # analytic grad vs autograd
    atol: float = 1e-8
    fd_eps: float = 1e-6  # finite differences: step, and gradcheck's tolerances
    fd_rtol: float = 1e-3
    fd_atol: float = 1e-5


@dataclass
class CheckAppConfig(GdlabConfig):
    check: CheckConfig = field(default_factory=CheckConfig)


ConfigStore.instance().store(name="gdlab_check_schema", node=CheckAppConfig)


def tolerances(c: DictConfig) -> Tolerances:
    if c.points < 0:
        raise GdlabError(f"check.points={c.points} must be >= 0")
    for key in ("scale", "fd_eps"):
        if not c[key] > 0:
            raise GdlabError(f"check.{key}={c[key]} must be > 0")
    for key in ("rtol", "atol", "fd_rtol", "fd_atol"):
        if c[key] < 0:
            raise GdlabError(f"check.{key}={c[key]} must be >= 0")
    return Tolerances(c.rtol, c.atol, c.fd_eps, c.fd_rtol, c.fd_atol)


def short(value: torch.Tensor, limit: int = 4) -> str:
    if value.numel() == 1:
        return f"{value.item():.4g}"
    if value.numel() <= limit:
        return "[" + ", ".join(f"{v:.4g}" for v in value.reshape(-1).tolist()) + "]"
    return f"tensor of shape {tuple(value.shape)}"


def diff_cell(diff: float | None, ok: bool | None, note: str) -> str:
    if ok is None:
        return "-"
    if diff is None:
        return "MISMATCH"
    return f"{diff:.2e}" + ("" if ok else " MISMATCH")


def table(rows: list[Row]) -> str:
    header = (
        "point",
        "parameter",
        "loss",
        "|autograd-analytic|",
        "|autograd-fd|",
        "gradcheck",
        "value",
    )
    body = [
        (
            r.point,
            r.parameter,
            f"{r.loss:.6g}",
            diff_cell(r.analytic_diff, r.analytic_ok, r.analytic_note),
            f"{r.fd_diff:.2e}" if r.loss_finite else "-",
            ("pass" if r.fd_ok else "FAIL") if r.loss_finite else "-",
            short(r.value),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    )


def point_values(rows: list[Row], point: str) -> str:
    """`x=1, y=[1, 2]`: every parameter's value at `point`."""
    return ", ".join(f"{r.parameter}={short(r.value)}" for r in rows if r.point == point)


def loss_line(rows: list[Row]) -> str | None:
    """One line naming the points where the loss itself is NaN or infinite (no gradient was
    compared there); None when it is finite everywhere."""
    losses = {r.point: f"{r.loss:g}" for r in rows if not r.loss_finite}
    if not losses:
        return None
    shown = list(losses)[:NAMED_POINTS]
    by_value: dict[str, list[str]] = {}
    for point in shown:
        by_value.setdefault(losses[point], []).append(f"{point!r} ({point_values(rows, point)})")
    parts = [
        f"{value} at point{'s' if len(named) > 1 else ''} {', '.join(named)}"
        for value, named in by_value.items()
    ]
    more = len(losses) - len(shown)
    text = "; ".join(parts) + (f"; and so at {more} more point{'s' * (more > 1)}" if more else "")
    return (
        f"gdlab-check: the loss itself is {text}: loss(params) must return a finite number, so "
        "no gradient was compared there"
    )


def mismatch_lines(rows: list[Row], tol: Tolerances) -> list[str]:
    line = loss_line(rows)
    lines = [] if line is None else [line]
    for r in rows:
        if not r.loss_finite:
            continue  # said once, above
        where = f"parameter {r.parameter!r} at point {r.point!r} ({r.parameter}={short(r.value)})"
        if not r.grad_finite:  # a difference from NaN would say "by nan": say what it is
            lines.append(
                f"gdlab-check: mismatch: {where}: autograd's gradient is not finite (NaN or "
                f"infinite) there, though the loss is {r.loss:.6g}"
            )
            continue
        if not r.fd_finite:
            lines.append(
                f"gdlab-check: mismatch: {where}: the loss is NaN or infinite a finite-difference "
                f"step away (check.fd_eps={tol.fd_eps:g}), though it is {r.loss:.6g} there"
            )
            continue
        if r.analytic_ok is False:
            what = r.analytic_note or (
                f"analytic grad differs from autograd by {r.analytic_diff:.3g} "
                f"(rtol {tol.rtol:g}, atol {tol.atol:g})"
            )
            lines.append(f"gdlab-check: mismatch: {where}: {what}")
        if not r.fd_ok:
            lines.append(
                f"gdlab-check: mismatch: {where}: autograd differs from finite differences by "
                f"{r.fd_diff:.3g} (torch.autograd.gradcheck, eps {tol.fd_eps:g}, "
                f"rtol {tol.fd_rtol:g}, atol {tol.fd_atol:g})"
            )
    return lines


def run_check(cfg: DictConfig) -> int:
    """Check the configured objective, print the table; the exit code (0 or MISMATCH)."""
    tol = tolerances(cfg.check)
    device, device_note = resolve_device(str(getattr(cfg.device.type, "value", cfg.device.type)))
    dtype = torch.float64
    from gdlab.problem import preflight
    from gdlab.settings import seed_problem

    message = seed_problem("trainer.seed", cfg.trainer.seed)
    if message is not None:
        raise GdlabError(message)
    preflight(cfg, device, dtype)  # objective seeds and memory, before the objective is built
    objective = build_objective(cfg.objective)
    setup_objective(objective, device, dtype)
    generator = torch.Generator(device=device).manual_seed(int(cfg.trainer.seed))
    start = {
        k: v.detach().to(device=device, dtype=dtype)
        for k, v in checked_init_params(objective, generator, device, dtype).items()
    }
    check_loss(objective, {k: v.clone().requires_grad_(True) for k, v in start.items()}, device)
    points = random_points(start, cfg.check.points, cfg.check.seed, cfg.check.scale)
    rows = check_objective(objective, points, tol)

    entry = entry_for(objective)
    where = f" ({entry.where})" if entry is not None else ""
    has_grad = getattr(objective, "grad", None) is not None
    name = objective_label(cfg, objective)
    print(f"gdlab-check: {name}{where}, float64 on {device_note}")
    print(
        f"gradients at the start (trainer.seed={cfg.trainer.seed}) and {cfg.check.points} "
        f"random points (start + {cfg.check.scale:g} * N(0, 1), check.seed={cfg.check.seed})"
        + ("" if has_grad else "; the class has no analytic grad")
    )
    print()
    print(table(rows))
    print()
    problems = mismatch_lines(rows, tol)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return MISMATCH
    compared = "the analytic grad and finite differences" if has_grad else "finite differences"
    print(f"gdlab-check: OK: autograd agrees with {compared} at {len(points)} points")
    print_curvature(objective, start, name=objective_choice(cfg) or registered_name(objective))
    return 0


def objective_label(cfg: DictConfig, objective: object) -> str:
    """The objective as the command named it: a preset by its own name, and what it is a
    preset of (`booth_far_start, a preset of booth`)."""
    name = registered_name(objective)
    choice = objective_choice(cfg)
    if choice is None or choice == name:
        return name
    return f"{choice}, a preset of {name}"


def print_curvature(
    objective: object, start: dict[str, torch.Tensor], name: str | None = None
) -> None:
    """The Hessian's extreme eigenvalues at the start and each update rule's local lr limit
    there (gdlab.curvature): the principled answer to "what lr should I try?"."""
    from gdlab.curvature import start_limits
    from gdlab.settings import UPDATE_RULES, settings_of

    defaults = {
        rule: {
            s.name: s.default_for(rule) for s in settings_of("optimizer", rule) if s.name != "name"
        }
        for rule in UPDATE_RULES
    }
    try:
        loss = objective.loss  # type: ignore[attr-defined]
        points = start_limits(loss, start, defaults, name=name or registered_name(objective))
    except GdlabError as err:
        print(f"gdlab-check: {err}")
        return
    print()
    print("curvature at the start (Hessian of the full loss; lr_limit: the largest stable lr")
    print("of each update rule there, at its default settings; docs/sharpness.md):")
    width = max(len(rule) for rule in points)
    for rule, p in points.items():
        line = f"  optimizer={rule:<{width}}  lambda_max={p.lambda_max:.6g}"
        line += f" lambda_min={p.lambda_min:.6g}"
        if p.preconditioned is not None:
            line += f" preconditioned={p.preconditioned:.6g}"
        if p.lr_limit is not None:
            line += f" lr_limit={p.lr_limit:.5g} (default lr {p.lr:g}: {p.ratio:.3g} x the limit)"
        else:
            line += " lr_limit=none (no limit at this curvature)"
        print(line)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="check")
def app(cfg: DictConfig) -> None:
    try:
        code = run_check(cfg)
    except GdlabError as err:
        print(f"gdlab-check: error: {err}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    if code:
        sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gdlab-check` in this process and return its exit code (`argv`: default sys.argv[1:]).

    A bad override (`objective=nope`, `check.points=abc`) is one line and exit code 2, as in
    `gdlab`, so exit code 1 always means a gradient mismatch; HYDRA_FULL_ERROR=1 shows tracebacks.
    """
    return run_app(app, "gdlab-check", argv=argv)


def console_main() -> None:
    """Console-script entry point (`gdlab-check`, `python -m gdlab.check`)."""
    from gdlab.entry import console_streams

    console_streams()
    exit_quickly(main())


if __name__ == "__main__":
    console_main()
