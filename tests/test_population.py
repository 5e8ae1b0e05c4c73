"""A population of K settings gives each member the result of its own plain run.

Every built-in objective (those gdlab registers itself: quadratic, multivariate and its saddle
preset, matrix, the classic test functions and the regression, full and mini-batch) is trained
as one population over a grid that includes diverging learning rates, and each member is
compared with `experiment.build(cfg).trainer.run()` for the same settings: status, stop step
and reason, final parameters and loss (float64: 1e-12 relative; float32: 1e-5).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from gdlab.errors import GdlabError
from gdlab.events import RunResult
from gdlab.experiment import build
from gdlab.objectives.base import Objective, Params
from gdlab.population import (
    MEMBER_KEYS,
    BatchedLoss,
    Members,
    PopulationResult,
    ScheduleSpec,
    auto_chunk_size,
    from_config,
)
from gdlab.schedules import lr_at, make_schedule
from tests.conftest import compose_config

#: (relative tolerance, whether stop reasons must match word for word) per dtype
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}


def grid(**axes: Sequence[Any]) -> dict[str, list[Any]]:
    """Member columns for the cartesian product of the axes (field -> values); the axis
    `heavy_ball` holds (momentum, nesterov) pairs, as Nesterov needs momentum."""
    combos = list(itertools.product(*axes.values()))
    columns = {name: [c[i] for c in combos] for i, name in enumerate(axes)}
    if "heavy_ball" in columns:
        pairs = columns.pop("heavy_ball")
        columns["momentum"] = [m for m, _ in pairs]
        columns["nesterov"] = [n for _, n in pairs]
    return columns


def plain_run(cfg: Any, member: Mapping[str, Any]) -> RunResult:
    """The plain trainer on `cfg` with one member's batchable values."""
    cfg = copy.deepcopy(cfg)
    for name, value in member.items():
        OmegaConf.update(cfg, MEMBER_KEYS[name], value)
    return build(cfg).trainer.run()


def assert_same(plain: RunResult, member: RunResult, dtype: str, scale: float) -> None:
    """Equal up to `TOLERANCE[dtype]` relative to the value, or to the problem's scale for
    values that approach zero (a coordinate that converges to 1e-9 from a start near 1 keeps
    rounding errors of the start's size)."""
    rtol = TOLERANCE[dtype]
    assert member.status == plain.status
    assert member.steps == plain.steps
    if dtype == "float64":  # in float32 a converged gradient norm is rounding noise
        assert member.stop_reason == plain.stop_reason
        if math.isfinite(plain.grad_norm):
            assert member.grad_norm == pytest.approx(plain.grad_norm, rel=rtol, abs=rtol * scale)
    for name, value in plain.params.items():
        torch.testing.assert_close(
            member.params[name].double(),
            value.double(),
            rtol=rtol,
            atol=rtol * scale,
            equal_nan=True,
        )
    for a, b in [
        (member.final_loss, plain.final_loss),
        (member.distance_to_minimizer, plain.distance_to_minimizer),
    ]:
        if b is None or not math.isfinite(b):
            assert a == b or (a is not None and math.isnan(a) and math.isnan(b))
        else:
            assert a == pytest.approx(b, rel=rtol, abs=rtol * scale)


def check_population(
    overrides: list[str], columns: dict[str, list[Any]], **kwargs: Any
) -> PopulationResult:
    cfg = compose_config(["trainer.progress=false", *overrides])
    dtype = str(cfg.device.dtype.value)
    result = from_config(cfg, columns, **kwargs).run()
    count = len(next(iter(columns.values())))
    assert len(result) == count
    for i in range(count):
        member = {name: column[i] for name, column in columns.items()}
        plain = plain_run(cfg, member)
        start = max(1.0, *(float(v.detach().abs().max()) for v in build(cfg).params.values()))
        scale = max(start, abs(plain.final_loss) if math.isfinite(plain.final_loss) else 0.0)
        try:
            assert_same(plain, result.member(i), dtype, scale)
        except AssertionError as err:
            raise AssertionError(f"member {i} {member}: {err}") from None
    return result


DIVERGING = [0.01, 0.1, 0.45, 0.9, 1.05, 2.5]  # 2/L is 1 for f = (x-3)^2 + 5
CASES = {
    "quadratic": (
        ["objective=quadratic", "trainer.steps=60"],
        grid(lr=DIVERGING, heavy_ball=[(0.0, False), (0.9, False), (0.9, True)]),
    ),
    "multivariate": (
        ["objective=multivariate", "trainer.steps=60", "trainer.log_every=4"],
        grid(lr=[0.01, 0.1, 0.3, 0.5], weight_decay=[0.0, 0.1], clip_norm=[None, 1.0]),
    ),
    "saddle": (
        ["objective=saddle", "trainer.steps=40"],
        grid(lr=[0.001, 0.05, 0.5], momentum=[0.0, 0.5]),
    ),
    "matrix": (
        ["objective=matrix", "trainer.steps=60", "optimizer.dampening=0.2"],
        grid(lr=[0.001, 0.05, 0.5], momentum=[0.0, 0.5], seed=[0, 1]),
    ),
    "rosenbrock": (
        ["objective=rosenbrock", "trainer.steps=150"],
        grid(lr=[1e-4, 1e-3, 2e-3, 0.01], momentum=[0.0, 0.9]),
    ),
    "himmelblau": (
        ["objective=himmelblau", "trainer.steps=150"],
        grid(lr=[0.001, 0.01, 0.03, 0.1], momentum=[0.0, 0.9]),
    ),
    "rastrigin": (
        ["objective=rastrigin", "trainer.steps=150"],
        grid(lr=[0.001, 0.01, 0.05, 1.5], momentum=[0.0, 0.9]),
    ),
    "beale": (
        ["objective=beale", "trainer.steps=150"],
        grid(lr=[1e-4, 1e-3, 0.01, 0.1], momentum=[0.0, 0.9]),
    ),
    "linear_regression": (
        ["experiment=linear_regression"],
        grid(lr=[0.001, 0.1, 0.9, 1.1], momentum=[0.0, 0.9], seed=[0, 3]),
    ),
    "mlp": (
        ["objective=mlp", "objective.n_samples=40", "objective.widths=[8]", "trainer.steps=25"],
        grid(lr=[0.1, 1.0, 200.0], momentum=[0.0, 0.9]),
    ),
    "linear_regression_minibatch": (
        ["experiment=linear_regression", "objective.batch_size=16", "trainer.steps=120"],
        grid(lr=[0.01, 0.3, 1.5], seed=[0, 1, 2]),
    ),
}


def _status_cases() -> list[Any]:
    return [
        pytest.param(name, dtype, id=f"{name}-{dtype}")
        for name in CASES
        for dtype in ("float64", "float32")
    ]


@pytest.mark.parametrize(("name", "dtype"), _status_cases())
def test_each_member_equals_its_plain_run(name: str, dtype: str) -> None:
    overrides, columns = CASES[name]
    if dtype == "float32":
        # A float32 gradient norm near 1e-6 is rounding noise: which step first reads below the
        # default tol depends on summation order (batched or not), so test at a tol above it.
        overrides = [*overrides, "trainer.tol=1e-4"]
    result = check_population([*overrides, f"device.dtype={dtype}"], columns)
    statuses = set(result.status)
    # The grids are chosen so that the comparison covers descent that works and that fails.
    assert "diverged" in statuses or name == "linear_regression_minibatch"
    assert statuses & {"finished", "converged"}


#: a per-member grid of each adaptive rule's own hyperparameters (lrs include diverging ones)
RULE_GRIDS = {
    "adam": grid(lr=[0.01, 0.3, 3.0], beta1=[0.8, 0.9]),
    "adamw": grid(lr=[0.01, 0.3], weight_decay=[0.0, 0.1], eps=[1e-8, 1e-3]),
    "rmsprop": grid(lr=[0.001, 0.01, 0.1], momentum=[0.0, 0.5], alpha=[0.9, 0.99]),
    "adagrad": grid(lr=[0.05, 0.5], lr_decay=[0.0, 0.1], initial_accumulator_value=[0.0, 0.5]),
}


@pytest.mark.parametrize("rule", sorted(RULE_GRIDS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_member_equals_its_plain_run_for_every_rule(rule: str, name: str) -> None:
    overrides, _ = CASES[name]
    overrides = [o for o in overrides if not o.startswith("optimizer.")]  # SGD's own keys
    overrides = [o for o in overrides if not o.startswith("trainer.steps")]
    check_population(
        [*overrides, f"optimizer={rule}", "trainer.steps=40", "device.dtype=float64"],
        RULE_GRIDS[rule],
    )


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["linear_regression", "linear_regression_minibatch", "matrix"])
def test_members_equal_plain_runs_on_cuda(name: str) -> None:
    overrides, columns = CASES[name]
    result = check_population([*overrides, "device=cuda", "device.dtype=float64"], columns)
    assert result.params[next(iter(result.params))].device.type == "cpu"  # results come back


def test_every_objective_gdlab_ships_is_compared() -> None:
    from gdlab.objectives.registry import GDLAB_PACKAGE, registry

    shipped = {e.name for e in registry().entries.values() if e.package == GDLAB_PACKAGE}
    assert shipped and shipped <= set(CASES)


def test_minibatch_order_follows_each_members_seed() -> None:
    overrides = CASES["linear_regression_minibatch"][0]
    cfg = compose_config(["trainer.progress=false", *overrides, "device.dtype=float64"])
    result = from_config(cfg, {"lr": [0.01] * 3, "seed": [0, 1, 0]}).run()
    same, other = result.member(0).params["w"], result.member(1).params["w"]
    assert torch.equal(same, result.member(2).params["w"])
    assert not torch.equal(same, other)


@pytest.mark.parametrize(
    "schedule",
    [
        ["optimizer.schedule.name=step", "optimizer.schedule.step_size=7"],
        ["optimizer.schedule.name=cosine", "optimizer.schedule.min_lr=0.005"],
        ["optimizer.schedule.name=exponential", "optimizer.schedule.gamma=0.97"],
    ],
    ids=["step", "cosine", "exponential"],
)
def test_schedules_per_member(schedule: list[str]) -> None:
    check_population(
        ["objective=multivariate", "trainer.steps=50", "device.dtype=float64", *schedule],
        grid(lr=[0.01, 0.2, 0.45], momentum=[0.0, 0.8]),
    )


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "exponential"])
def test_batched_schedule_is_bitwise_make_schedule(name: str) -> None:
    lrs = [0.013, 0.1, 0.7, 1.9]
    spec = ScheduleSpec(name, step_size=5, gamma=0.9, min_lr=0.01)
    table = torch.tensor(lrs, dtype=torch.float64)
    for t in range(0, 60, 3):
        batched = lr_at(spec, table, t, 40).tolist()
        plain = [make_schedule(spec, lr, 40)(t) for lr in lrs]
        assert batched == plain


def test_members_stop_independently_and_the_job_ends_when_all_have() -> None:
    cfg = compose_config(
        ["trainer.progress=false", "objective=quadratic", "trainer.steps=500", "trainer.tol=1e-4"]
    )
    result = from_config(cfg, {"lr": [0.5, 0.2, 1.5]}).run()
    assert result.status == ["converged", "converged", "diverged"]
    assert result.steps[0] < result.steps[1] < 500  # lr 0.5 jumps straight to the minimum
    assert result.steps_run == max(result.steps) < 500  # nobody was left to train
    assert math.isfinite(result.final_loss[2])  # frozen at the log point that caught it


def test_divergence_between_log_points_is_caught_at_the_next_one() -> None:
    check_population(
        ["objective=quadratic", "trainer.steps=700", "trainer.log_every=100"],
        grid(lr=[0.1, 40.0, 1e6]),  # these reach inf and then nan between two log points
    )


class StopAfter:
    """A StopRequest that turns true once it has been asked `reads` times (once per step)."""

    def __init__(self, reads: int) -> None:
        self.reads = reads

    @property
    def requested(self) -> bool:
        self.reads -= 1
        return self.reads < 0


def test_an_interrupt_stops_every_running_member_like_a_plain_run() -> None:
    overrides = ["experiment=linear_regression", "objective.batch_size=10", "device.dtype=float64"]
    cfg = compose_config(["trainer.progress=false", *overrides])
    trainer = from_config(cfg, {"lr": [0.01, 0.3, 500.0]})
    trainer.interrupt = StopAfter(7)
    result = trainer.run()
    assert result.status == ["interrupted", "interrupted", "diverged"]
    for i, lr in enumerate([0.01, 0.3]):
        member_cfg = copy.deepcopy(cfg)
        member_cfg.optimizer.lr = lr
        plain = build(member_cfg, interrupt=StopAfter(7)).trainer.run()
        assert plain.status == "interrupted" and plain.steps == result.steps[i] == 7
        assert plain.stop_reason == result.stop_reason[i]
        assert result.final_loss[i].item() == pytest.approx(plain.final_loss, rel=1e-12)
        torch.testing.assert_close(result.member(i).params["w"], plain.params["w"])


# --- choosing how to batch ------------------------------------------------------------------


class ScalarBranch(Objective):
    """A loss that reads a value back to Python: vmap cannot trace it, a loop can."""

    name = "scalar_branch"

    def init_params(self, generator: torch.Generator, device: Any, dtype: Any) -> Params:
        return {"x": torch.tensor([2.0, -1.0], device=device, dtype=dtype)}

    def loss(self, params: Params) -> torch.Tensor:
        x = params["x"]
        if float(x.detach().sum()) > 0:  # data-dependent control flow
            return (x * x).sum()
        return (x * x).sum() * 2.0


class MixesMembers(Objective):
    """Broadcasts to one loss per member, but its mean runs over every member: wrong."""

    name = "mixes_members"

    def init_params(self, generator: torch.Generator, device: Any, dtype: Any) -> Params:
        return {"x": torch.tensor(1.0, device=device, dtype=dtype)}

    def loss(self, params: Params) -> torch.Tensor:
        x = params["x"]
        return (x - 3.0) ** 2 + x.mean()


def test_strategy_is_chosen_per_objective() -> None:
    expected = {"quadratic": "broadcast", "multivariate": "vmap", "linear_regression": "vmap"}
    for name, strategy in expected.items():
        cfg = compose_config(["trainer.progress=false", f"objective={name}", "trainer.steps=2"])
        assert from_config(cfg, {"lr": [0.1, 0.2]}).run().strategy == strategy


@pytest.mark.parametrize(
    ("objective", "strategy", "rejected"),
    [(ScalarBranch(), "loop", {"broadcast", "vmap"}), (MixesMembers(), "vmap", {"broadcast"})],
)
def test_probe_rejects_wrong_batching(
    objective: Objective, strategy: str, rejected: set[str]
) -> None:
    params = {
        k: torch.stack([v, v + 0.5, v - 0.5, v * 2])
        for k, v in objective.init_params(torch.Generator(), "cpu", torch.float64).items()
    }
    batched = BatchedLoss(objective.loss)
    assert batched.choose(params) == strategy
    assert set(batched.rejected) == rejected
    losses, grads = batched(params, None)
    for i in range(4):
        leaves = {k: v[i].clone().requires_grad_(True) for k, v in params.items()}
        objective.loss(leaves).backward()
        expected = float(objective.loss(leaves).detach())
        assert float(losses[i]) == pytest.approx(expected, rel=1e-12)
        for k, leaf in leaves.items():
            torch.testing.assert_close(grads[k][i], leaf.grad, rtol=1e-12, atol=1e-12)


class UnusedParameter(Objective):
    """`z` never enters the loss: it has no gradient and plain SGD leaves it alone."""

    name = "unused_parameter"

    def init_params(self, generator: torch.Generator, device: Any, dtype: Any) -> Params:
        return {
            "x": torch.tensor([1.0, -2.0], device=device, dtype=dtype),
            "z": torch.tensor([5.0], device=device, dtype=dtype),
        }

    def loss(self, params: Params) -> torch.Tensor:
        return ((params["x"] - 1.5) ** 2).sum()


def test_a_parameter_without_gradient_is_left_alone_as_in_a_plain_run() -> None:
    from gdlab.optim import SGDSettings, UpdateRule
    from gdlab.population import PopulationTrainer
    from gdlab.schedules import make_schedule
    from gdlab.trainer import Trainer, TrainerSettings

    objective, settings = UnusedParameter(), TrainerSettings(steps=20, tol=0.0)
    rows = [{"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}, {"lr": 0.2, "weight_decay": 0.3}]
    members = Members.from_rows(rows, {"lr": 0.1, **_defaults()})
    trainer = PopulationTrainer(
        objective, members, settings, ScheduleSpec(), torch.device("cpu"), torch.float64
    )
    result = trainer.run()
    assert trainer.batched.unused == {"z"}
    for i, row in enumerate(rows):
        start = objective.init_params(torch.Generator(), "cpu", torch.float64)
        params = {k: v.requires_grad_(True) for k, v in start.items()}
        rule = UpdateRule(SGDSettings(**row))
        # zero_grad=set_to_none: with `zero`, trainer.py calls .zero_() on z's None gradient
        plain_settings = TrainerSettings(steps=20, tol=0.0, set_to_none=True)
        schedule = make_schedule(ScheduleSpec(), row["lr"], 20)
        plain = Trainer(objective.loss, params, rule, schedule, plain_settings).run()
        assert plain.params["z"].tolist() == result.member(i).params["z"].tolist() == [5.0]
        torch.testing.assert_close(result.member(i).params["x"], plain.params["x"])


def test_chunks_give_the_same_results() -> None:
    overrides = ["experiment=linear_regression", "device.dtype=float64", "trainer.steps=30"]
    cfg = compose_config(["trainer.progress=false", *overrides])
    columns = grid(lr=[0.01, 0.1, 0.5, 1.2], seed=[0, 1, 2])
    whole = from_config(cfg, columns).run()
    chunked = from_config(cfg, columns, chunk_size=5).run()
    assert chunked.chunk_size == 5 and whole.chunk_size >= 12
    assert chunked.status == whole.status
    torch.testing.assert_close(chunked.params["w"], whole.params["w"], rtol=1e-13, atol=1e-13)


class ShapeRecorder(Objective):
    """Records how many members each batched call sees (broadcast strategy)."""

    name = "shape_recorder"

    def __init__(self) -> None:
        self.data = torch.zeros(1000)  # 1000 data values: few members per chunk
        self.seen: list[int] = []

    def init_params(self, generator: torch.Generator, device: Any, dtype: Any) -> Params:
        return {"x": torch.tensor(0.0, device=device, dtype=dtype)}

    def loss(self, params: Params) -> torch.Tensor:
        x = params["x"]
        if x.dim():
            self.seen.append(x.shape[0])
        return (x - 1.0) ** 2 + self.data.sum()


def test_chunk_size_bounds_the_members_per_call() -> None:
    objective = ShapeRecorder()
    chunk = auto_chunk_size(objective, torch.device("cpu"))
    assert chunk * 4 * 1000 <= 1 << 22 < (chunk + 1) * 4 * 1000
    from gdlab.population import PopulationTrainer
    from gdlab.trainer import TrainerSettings

    count = 3 * chunk + 7
    members = Members.build(count, {"lr": 0.1, **_defaults()})
    trainer = PopulationTrainer(
        objective,
        members,
        TrainerSettings(steps=3, tol=0.0),
        ScheduleSpec(),
        torch.device("cpu"),
        torch.float64,
    )
    result = trainer.run()
    assert result.strategy == "broadcast"
    assert max(objective.seen) == chunk
    assert set(result.status) == {"finished"}


def _defaults() -> dict[str, Any]:
    return {
        "momentum": 0.0,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "clip_norm": None,
        "seed": 0,
    }


# --- the members' settings are checked like a plain run's ----------------------------------


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"lr": [0.1, 0.0]}, "optimizer.lr=0.0 must be a finite number > 0"),
        ({"lr": [0.1, 0.2], "momentum": [0.5, 1.0]}, "optimizer.momentum=1.0"),
        ({"lr": [0.1, 0.2], "nesterov": [True, False]}, "optimizer.nesterov=true needs"),
        ({"lr": [0.1, "fast"]}, "optimizer.lr='fast' is not a number"),
        ({"lr": [0.1, 0.2], "seed": [0, 1.5]}, "trainer.seed=1.5 is not an integer"),
        ({"lr": [0.1, 0.2], "clip_norm": [None, -1.0]}, "optimizer.clip_norm=-1.0"),
    ],
)
def test_bad_member_settings_are_refused(columns: dict[str, list[Any]], message: str) -> None:
    cfg = compose_config(["trainer.progress=false"])
    with pytest.raises(GdlabError, match=message.replace("(", r"\(").replace(".", r"\.")):
        from_config(cfg, columns)


def test_members_from_rows_fill_in_the_base() -> None:
    members = Members.from_rows([{"lr": 0.1}, {"lr": 0.2, "seed": 4}], {"lr": 1.0, **_defaults()})
    assert members.lr == [0.1, 0.2] and members.seed == [0, 4]
    assert members.row(1) == {"lr": 0.2, **_defaults(), "seed": 4}
    assert members.rule == "sgd" and set(members.columns) == set(_defaults()) | {"lr", "seed"}


# --- memory grows with K x parameter size, not K x data size -------------------------------

MEASURE = """
import resource, sys
from tests.conftest import compose_config
from gdlab.population import from_config
n, k = int(sys.argv[1]), int(sys.argv[2])
cfg = compose_config(["trainer.progress=false", "experiment=linear_regression",
                      "trainer.steps=2", f"objective.n_samples={n}"])
trainer = from_config(cfg, {"lr": [0.5 * (i + 1) / k for i in range(k)]})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
trainer.run()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def peak_growth(n_samples: int, members: int) -> int:
    """Bytes the peak resident memory grows by while training, in a fresh process."""
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(n_samples), str(members)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


def test_memory_does_not_grow_with_the_data() -> None:
    # Unbatched per member, 50 times the data would add 4000 x 5000 x 4 bytes = 80 MB per
    # temporary (several per step); chunking keeps the temporaries to a few MB either way.
    small, large = peak_growth(100, 4000), peak_growth(5000, 4000)
    assert large < small + 40 * 2**20, (small, large)
