"""Update rules and schedules equal torch.optim's, step for step, in float64."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gdlab.errors import GdlabError
from gdlab.optim import SGDSettings, UpdateRule
from gdlab.schedules import ScheduleSpec, make_schedule
from gdlab.settings import BATCHABLE, SETTINGS, UPDATE_RULES, check_values, member_problems


def loss_of(params: list[torch.Tensor], A: torch.Tensor) -> torch.Tensor:
    """A non-trivial smooth loss over two tensors (matrix-vector product plus a quartic)."""
    W, x = params
    y = W @ x
    return (y * y).sum() + 0.01 * (x**4).sum() + (A * W).sum()


def assert_steps_equal(rule: UpdateRule, make_reference: Any, lr: float, steps: int) -> None:
    """Train the same start with our rule and torch.optim's, step for step, float64."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    start = [
        torch.randn(3, 4, generator=gen, dtype=torch.float64),
        torch.randn(4, generator=gen, dtype=torch.float64),
    ]
    ours = [t.clone().requires_grad_(True) for t in start]
    theirs = [t.clone().requires_grad_(True) for t in start]
    reference = make_reference(theirs)
    for _ in range(steps):
        loss_of(ours, A).backward()
        with torch.no_grad():
            rule.step(ours, lr)
        for p in ours:
            p.grad.zero_()
        reference.zero_grad()
        loss_of(theirs, A).backward()
        reference.step()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "settings",
    [
        {"lr": 0.01},
        {"lr": 0.01, "momentum": 0.9},
        {"lr": 0.01, "momentum": 0.9, "dampening": 0.3},
        {"lr": 0.01, "momentum": 0.9, "nesterov": True},
        {"lr": 0.01, "weight_decay": 0.01},
        {"lr": 0.01, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05},
    ],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_update_rule_equals_torch_sgd(settings: dict) -> None:
    rule = UpdateRule(SGDSettings(**settings))
    assert_steps_equal(rule, lambda ps: torch.optim.SGD(ps, **settings), settings["lr"], 25)


ADAPTIVE = [
    ("adam", {}, torch.optim.Adam, {}),
    ("adam", {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6}, torch.optim.Adam, {}),
    ("adam", {"weight_decay": 0.1}, torch.optim.Adam, {}),
    ("adam", {"amsgrad": True, "weight_decay": 0.05}, torch.optim.Adam, {}),
    ("adamw", {}, torch.optim.AdamW, {}),
    ("adamw", {"weight_decay": 0.2, "amsgrad": True}, torch.optim.AdamW, {}),
    ("rmsprop", {}, torch.optim.RMSprop, {}),
    ("rmsprop", {"momentum": 0.9}, torch.optim.RMSprop, {}),
    ("rmsprop", {"centered": True, "alpha": 0.9, "eps": 1e-6}, torch.optim.RMSprop, {}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.1}, torch.optim.RMSprop, {}),
    ("adagrad", {}, torch.optim.Adagrad, {}),
    ("adagrad", {"lr_decay": 0.1, "weight_decay": 0.05}, torch.optim.Adagrad, {}),
    ("adagrad", {"initial_accumulator_value": 0.5, "eps": 1e-6}, torch.optim.Adagrad, {}),
]


def torch_arguments(rule: str, settings: dict) -> dict:
    """torch.optim's arguments for our settings: Adam's betas are one tuple."""
    args = dict(settings)
    if rule in ("adam", "adamw"):
        args["betas"] = (args.pop("beta1", 0.9), args.pop("beta2", 0.999))
    return args


@pytest.mark.parametrize(
    ("rule", "settings", "reference_class", "_"),
    ADAPTIVE,
    ids=[f"{r}-" + ",".join(f"{k}={v}" for k, v in s.items()) for r, s, _, _ in ADAPTIVE],
)
def test_adaptive_rules_equal_torch_optim_step_for_step(
    rule: str, settings: dict, reference_class: type, _: dict
) -> None:
    from gdlab.optim import RULES

    lr = 0.01
    update = UpdateRule(RULES[rule][1](lr=lr, **settings))
    arguments = torch_arguments(rule, settings)
    assert_steps_equal(update, lambda ps: reference_class(ps, lr=lr, **arguments), lr, 30)


def test_clipping_equals_clip_grad_norm() -> None:
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    start = [
        torch.randn(3, 4, generator=gen, dtype=torch.float64) * 3,
        torch.randn(4, generator=gen, dtype=torch.float64),
    ]
    ours = [t.clone().requires_grad_(True) for t in start]
    theirs = [t.clone().requires_grad_(True) for t in start]
    rule = UpdateRule(SGDSettings(lr=0.01, momentum=0.5, clip_norm=1.0))
    reference = torch.optim.SGD(theirs, lr=0.01, momentum=0.5)
    for _ in range(10):
        loss_of(ours, A).backward()
        with torch.no_grad():
            rule.step(ours, 0.01)
        for p in ours:
            p.grad = None
        reference.zero_grad()
        loss_of(theirs, A).backward()
        torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        reference.step()
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "kwargs", "make_reference"),
    [
        ("constant", {}, lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)),
        (
            "step",
            {"step_size": 7, "gamma": 0.5},
            lambda opt: torch.optim.lr_scheduler.StepLR(opt, 7, 0.5),
        ),
        (
            "exponential",
            {"gamma": 0.97},
            lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.97),
        ),
        (
            "cosine",
            {"min_lr": 0.01},
            lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 40, eta_min=0.01),
        ),
    ],
)
def test_schedules_equal_torch_schedulers(name: str, kwargs: dict, make_reference) -> None:
    ours = make_schedule(ScheduleSpec(name, **kwargs), 0.3, 40)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    reference = make_reference(opt)
    for t in range(40):
        assert ours(t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        opt.step()
        reference.step()


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"lr": 0.0}, "optimizer.lr"),
        ({"lr": float("nan")}, "optimizer.lr"),
        ({"lr": float("inf")}, "optimizer.lr"),
        ({"lr": 0.1, "momentum": 1.0}, "optimizer.momentum"),
        ({"lr": 0.1, "momentum": -0.1}, "optimizer.momentum"),
        ({"lr": 0.1, "nesterov": True}, "optimizer.nesterov"),
        ({"lr": 0.1, "weight_decay": -1.0}, "optimizer.weight_decay"),
        ({"lr": 0.1, "clip_norm": 0.0}, "optimizer.clip_norm"),
    ],
)
def test_bad_settings_name_the_key(settings: dict, key: str) -> None:
    defaults = {s.key: s.default for s in SETTINGS}
    values = {**defaults, **{f"optimizer.{name}": value for name, value in settings.items()}}
    with pytest.raises(GdlabError, match=key.replace(".", r"\.")):
        check_values(values)
    # a population member with the same values is refused with the same line
    columns = {name: [value] for name, value in settings.items()}
    problems = member_problems(columns, defaults, 1)
    assert problems[0].startswith(key)


def test_unknown_schedule_lists_the_allowed_ones() -> None:
    with pytest.raises(GdlabError, match="one of: constant, step, cosine, exponential"):
        check_values({"optimizer.schedule.name": "linear"})


def test_settings_table_builds_the_schema_and_the_member_columns() -> None:
    """One row per key: the schema's fields, defaults and batchable columns come from it."""
    from dataclasses import fields

    from gdlab.config import OptimizerConfig, TrainerConfig
    from gdlab.population.members import Members

    rows = {s.key: s for s in SETTINGS}
    for prefix, schema in (("optimizer", OptimizerConfig), ("trainer", TrainerConfig)):
        for f in fields(schema):
            key = f"{prefix}.{f.name}"
            if key in rows:
                assert f.default == rows[key].default, key
            else:
                assert key == "optimizer.schedule", key
    for rule in UPDATE_RULES:
        base = {n: rows[k].default_for(rule) for k, n in BATCHABLE.items()}
        assert set(Members.build(1, base, rule).columns) == {
            s.name for s in SETTINGS if s.batchable and s.applies(rule)
        }


@pytest.mark.parametrize("rule", ["adam", "adamw", "rmsprop", "adagrad"])
def test_a_parameter_whose_first_gradient_comes_late_gets_its_state_then(rule: str) -> None:
    from gdlab.optim import RULES

    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    update = UpdateRule(RULES[rule][1](lr=0.01))
    for step in range(4):
        loss = (a**2).sum() + ((b**2).sum() if step >= 2 else 0.0)  # b joins at step 2
        loss.backward()
        with torch.no_grad():
            update.step([a, b], 0.01)
        a.grad = b.grad = None
    assert float(b.detach()) < 3.0 and torch.isfinite(b).all()
