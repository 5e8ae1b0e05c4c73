"""The hyperparameter table: every optimizer and trainer key, written once.

Each row says a key's type, default, allowed range (as a check and in words) and whether a
population can batch it (one value per member). Everything else is derived from this table:

- the config schema (`gdlab.config` builds its dataclasses from it), so Hydra refuses a wrong
  type or an unknown key while composing;
- the range checks of a plain run (`check_values`) and of each population member
  (`member_problems`), with the same one-line messages;
- the population's member columns and batchable keys (`BATCHABLE`), the sweep planner's
  conversion of swept values (`coerce`), the HParams columns every run reports (`HPARAM_KEYS`).

Adding a batchable hyperparameter is one row here plus its use in the update formula
(`gdlab.optim`). No torch here: the sweeper's planner imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from gdlab.errors import GdlabError


class ZeroGrad(Enum):
    zero = "zero"  # p.grad.zero_(), as the tutorial does
    set_to_none = "set_to_none"  # p.grad = None: frees the gradient between steps


SCHEDULES = ("constant", "step", "cosine", "exponential")
UPDATE_RULES = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
ADAM = ("adam", "adamw")


def _finite(v: float) -> bool:
    return math.isfinite(v)


#: the seeds a torch.Generator takes (manual_seed): a 64-bit number, negative ones wrapping
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
SEED_RANGE = "an integer from -2**63 to 2**64-1 (a 64-bit generator seed)"


def valid_seed(value: object) -> bool:
    """Whether `value` can seed a torch.Generator (an int in [SEED_MIN, SEED_MAX])."""
    return isinstance(value, int) and not isinstance(value, bool) and SEED_MIN <= value <= SEED_MAX


def seed_problem(key: str, value: object) -> str | None:
    """Why `value` can't be the seed `key` (one line naming it), or None."""
    return None if valid_seed(value) else f"{key}={value!r} must be {SEED_RANGE}"


@dataclass(frozen=True)
class Setting:
    """One row of the table: a config key and everything gdlab knows about its values."""

    key: str  # the full config key, e.g. "optimizer.lr"
    kind: type  # float, int, bool, str or an Enum
    default: Any
    allowed: str = ""  # the allowed values in words: "must be <allowed>"
    #: the range check (None: any value of `kind`); for numbers, the allowed values must form
    #: one interval (a column of members is judged at its two ends: `member_problems`)
    valid: Callable[[Any], bool] | None = None
    nullable: bool = False  # null is allowed (and passes the range check)
    batchable: bool = False  # a population member may have its own value
    hparam: bool = False  # every run reports it in TensorBoard's HParams
    doc: str = ""
    #: the update rules that have this key (optimizer keys); () means every rule
    rules: tuple[str, ...] = ()
    #: a rule's own default where it differs from `default` (torch.optim's defaults)
    defaults: tuple[tuple[str, Any], ...] = ()

    def applies(self, rule: str) -> bool:
        return not self.rules or rule in self.rules

    def default_for(self, rule: str) -> Any:
        return dict(self.defaults).get(rule, self.default)

    @property
    def name(self) -> str:
        """The key's last part: the update formula's argument and a member column's name."""
        return self.key.rsplit(".", 1)[1]

    @property
    def group(self) -> str:
        return self.key.rsplit(".", 1)[0]

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed (one line naming the key), or None."""
        if value is None and self.nullable:
            return None
        if self.valid is not None and not self.valid(value):
            return f"{self.key}={value!r} must be {self.allowed}"
        return None


@dataclass(frozen=True)
class Constraint:
    """A rule over several keys (each single key being valid); `message` names them."""

    keys: tuple[str, ...]
    holds: Callable[..., bool]
    message: str  # formatted with the values as {0}, {1}, ... in `keys` order

    def problem(self, values: Sequence[Any]) -> str | None:
        return None if self.holds(*values) else self.message.format(*values)


# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # ---- the update rule (optimizer group): torch.optim's argument names and defaults
    Setting("optimizer.name", str, "sgd", "one of: " + ", ".join(UPDATE_RULES),
            lambda v: v in UPDATE_RULES, hparam=True,
            doc="the update rule (choose it with optimizer=NAME)"),
    Setting("optimizer.lr", float, 0.1, "a finite number > 0", lambda v: _finite(v) and v > 0,
            batchable=True, hparam=True, doc="learning rate",
            defaults=(("adam", 1e-3), ("adamw", 1e-3), ("rmsprop", 1e-2), ("adagrad", 1e-2))),
    Setting("optimizer.momentum", float, 0.0, "in [0, 1)", lambda v: 0.0 <= v < 1.0,
            batchable=True, hparam=True, doc="heavy-ball momentum", rules=("sgd", "rmsprop")),
    Setting("optimizer.dampening", float, 0.0, "in [0, 1]", lambda v: 0.0 <= v <= 1.0,
            batchable=True, doc="momentum dampening", rules=("sgd",)),
    Setting("optimizer.nesterov", bool, False, batchable=True, doc="Nesterov momentum",
            rules=("sgd",)),
    Setting("optimizer.beta1", float, 0.9, "in [0, 1)", lambda v: 0.0 <= v < 1.0,
            batchable=True, doc="decay of the first-moment average", rules=ADAM),
    Setting("optimizer.beta2", float, 0.999, "in [0, 1)", lambda v: 0.0 <= v < 1.0,
            batchable=True, doc="decay of the second-moment average", rules=ADAM),
    Setting("optimizer.alpha", float, 0.99, "in [0, 1)", lambda v: 0.0 <= v < 1.0,
            batchable=True, doc="decay of the squared-gradient average", rules=("rmsprop",)),
    Setting("optimizer.lr_decay", float, 0.0, ">= 0", lambda v: _finite(v) and v >= 0.0,
            batchable=True, doc="lr / (1 + (t - 1) lr_decay)", rules=("adagrad",)),
    Setting("optimizer.initial_accumulator_value", float, 0.0, ">= 0",
            lambda v: _finite(v) and v >= 0.0, batchable=True,
            doc="start of the squared-gradient sum", rules=("adagrad",)),
    Setting("optimizer.eps", float, 1e-8, "a finite number > 0", lambda v: _finite(v) and v > 0,
            batchable=True, doc="added to the denominator", rules=(*ADAM, "rmsprop", "adagrad"),
            defaults=(("adagrad", 1e-10),)),
    Setting("optimizer.weight_decay", float, 0.0, ">= 0", lambda v: _finite(v) and v >= 0.0,
            batchable=True, doc="L2 penalty (adamw: decoupled decay)", defaults=(("adamw", 1e-2),)),
    Setting("optimizer.amsgrad", bool, False, doc="keep the largest second moment", rules=ADAM),
    Setting("optimizer.centered", bool, False, doc="normalise by the gradient's variance",
            rules=("rmsprop",)),
    Setting("optimizer.clip_norm", float, None, "null or > 0", lambda v: _finite(v) and v > 0,
            nullable=True, batchable=True, doc="clip the total gradient norm (null: off)"),
    # ---- the learning-rate schedule
    Setting("optimizer.schedule.name", str, "constant", "one of: " + ", ".join(SCHEDULES),
            lambda v: v in SCHEDULES, doc="constant, step, cosine or exponential"),
    Setting("optimizer.schedule.step_size", int, 100, ">= 1", lambda v: v >= 1,
            doc="step: multiply by gamma every step_size steps"),
    Setting("optimizer.schedule.gamma", float, 0.1, "in (0, 1]", lambda v: 0.0 < v <= 1.0,
            doc="step and exponential decay factor"),
    Setting("optimizer.schedule.min_lr", float, 0.0, "a finite number >= 0",
            lambda v: _finite(v) and v >= 0.0,
            doc="cosine: the lr reached at the last step"),
    # ---- the loop (trainer group)
    Setting("trainer.steps", int, 50, ">= 1", lambda v: v >= 1, hparam=True,
            doc="updates to apply"),
    Setting("trainer.seed", int, 0, SEED_RANGE, valid_seed, batchable=True,
            doc="draws the initial parameters and the mini-batch order"),
    Setting("trainer.tol", float, 1e-6, "a finite number >= 0 (0 turns convergence off)",
            lambda v: _finite(v) and v >= 0,
            doc="converged when the gradient norm falls below this"),
    Setting("trainer.log_every", int, None, ">= 1 (or null for automatic)", lambda v: v >= 1,
            nullable=True, doc="null: every step up to 1000 steps, ~1000 points beyond"),
    Setting("trainer.divergence_bound", float, 1e8, "> 0 (inf: no bound)", lambda v: v > 0,
            doc="diverged when a parameter's norm exceeds this"),
    Setting("trainer.zero_grad", ZeroGrad, ZeroGrad.zero, doc="zero or set_to_none"),
    Setting("trainer.progress", bool, None, nullable=True,
            doc="null: a progress bar only on a terminal"),
    Setting("trainer.checkpoint_every", int, 1000, ">= 1 (or null: at the end only)",
            lambda v: v >= 1, nullable=True, doc="also at the end and on Ctrl-C/SIGTERM"),
    Setting("trainer.resume", str, None, nullable=True, doc="a run directory to continue"),
    Setting("trainer.chunk_rows", int, None, ">= 1 (or null: one pass)", lambda v: v >= 1,
            nullable=True, doc="full-batch gradients accumulated over row chunks"),
    # ---- sharpness: the Hessian's extreme eigenvalues along the run (gdlab.curvature)
    Setting("sharpness.every", int, 0, ">= 0 (0 turns it off)", lambda v: v >= 0,
            doc="measure at step 0, every N steps and at the end"),
    Setting("sharpness.tol", float, 1e-3, "in (0, 0.1]", lambda v: 0.0 < v <= 0.1,
            doc="Lanczos: lambda_max to tol x |lambda_max| (lambda_min to 10 x that)"),
    Setting("sharpness.dense_max", int, 2000, ">= 0", lambda v: v >= 0,
            doc="up to this many parameter numbers: the dense Hessian and eigvalsh"),
    Setting("sharpness.max_iter", int, 100, ">= 2", lambda v: v >= 2,
            doc="Lanczos iterations at most"),
)
# fmt: on

CONSTRAINTS: tuple[Constraint, ...] = (
    Constraint(
        ("optimizer.nesterov", "optimizer.momentum", "optimizer.dampening"),
        lambda nesterov, momentum, dampening: not nesterov or (momentum > 0 and dampening == 0),
        "optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0",
    ),
    Constraint(
        ("optimizer.schedule.min_lr", "optimizer.lr", "optimizer.schedule.name"),
        lambda min_lr, lr, name: name != "cosine" or min_lr <= lr,
        "optimizer.schedule.min_lr={0} must be in [0, optimizer.lr]",
    ),
)

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
#: config key -> member column name, for the keys a population batches
BATCHABLE: dict[str, str] = {s.key: s.name for s in SETTINGS if s.batchable}
#: member column name -> config key
MEMBER_KEYS: dict[str, str] = {name: key for key, name in BATCHABLE.items()}
#: keys every run reports in HParams, whatever was swept
HPARAM_KEYS: tuple[str, ...] = tuple(s.key for s in SETTINGS if s.hparam)


def settings_of(group: str, rule: str = "sgd") -> list[Setting]:
    """The rows directly under `group` ("optimizer", "optimizer.schedule", "trainer") that
    the update rule `rule` has."""
    return [s for s in SETTINGS if s.group == group and s.applies(rule)]


def member_keys(rule: str = "sgd") -> dict[str, str]:
    """Member column name -> config key: the batchable keys of the update rule `rule`."""
    return {s.name: s.key for s in SETTINGS if s.batchable and s.applies(rule)}


def rule_of(cfg: Any) -> str:
    """The update rule a composed config chose."""
    from omegaconf import OmegaConf

    return str(OmegaConf.select(cfg, "optimizer.name", default="sgd"))


def plain_value(value: Any) -> Any:
    """A config value as the formulas use it: enums as their string."""
    return value.value if isinstance(value, Enum) else value


def read_values(cfg: Any) -> dict[str, Any]:
    """The value of every table key the config's update rule has (enums as strings).

    A key of another rule that the config holds (`optimizer.name=adam` with the keys of
    `optimizer=sgd`) or a key of its own rule that it lacks is refused in one line.
    """
    from omegaconf import OmegaConf

    rule = rule_of(cfg)
    if rule not in UPDATE_RULES:
        check_values({"optimizer.name": rule})
    values = {}
    for s in SETTINGS:
        if not s.applies(rule):
            continue
        value = OmegaConf.select(cfg, s.key, default=_MISSING)
        if value is _MISSING:
            raise GdlabError(
                f"optimizer.name={rule} does not match the optimizer group's keys ({s.key} is "
                f"missing): choose the update rule with optimizer={rule}"
            )
        values[s.key] = plain_value(value)
    return values


_MISSING = object()


def check_values(values: Mapping[str, Any]) -> None:
    """Refuse the first value (in table order, then the constraints) a run can't use."""
    for setting in SETTINGS:
        if setting.key in values:
            message = setting.problem(values[setting.key])
            if message is not None:
                raise GdlabError(message)
    for constraint in CONSTRAINTS:
        if all(k in values for k in constraint.keys):
            message = constraint.problem([values[k] for k in constraint.keys])
            if message is not None:
                raise GdlabError(message)


def coerce(key: str, value: Any) -> Any:
    """A value converted as the config schema converts it (ints to floats for float keys),
    or one line naming the key; cheap enough for a million swept values."""
    setting = BY_KEY[key]
    if value is None and setting.nullable:
        return None
    kind = setting.kind
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    words = {float: "a number", int: "an integer", bool: "a boolean (true or false)"}
    raise GdlabError(f"{key}={value!r} is not {words.get(kind, kind.__name__)}")


def member_problems(
    columns: Mapping[str, Sequence[Any]], shared: Mapping[str, Any], count: int
) -> dict[int, str]:
    """Member index -> why its plain run would refuse to start (the first problem found).

    `columns` are the members' own values (member column name -> values), `shared` every
    other key's value. Each check runs once per distinct value of the keys it reads, so a
    million members with distinct learning rates stay cheap.
    """
    keyed = {MEMBER_KEYS[name]: list(values) for name, values in columns.items()}
    found: dict[int, str] = {}
    checks: list[tuple[tuple[str, ...], Callable[[Sequence[Any]], str | None]]] = []
    for setting in SETTINGS:
        if setting.key in keyed and _all_in_range(setting, keyed[setting.key]):
            continue  # a million distinct learning rates, judged at their two ends
        checks.append(((setting.key,), lambda vs, s=setting: _typed_problem(s, vs[0])))
    for constraint in CONSTRAINTS:
        checks.append((constraint.keys, constraint.problem))
    for keys, problem in checks:
        if not any(k in keyed for k in keys):
            if all(k in shared for k in keys):
                message = problem([shared[k] for k in keys])
                if message is not None:  # every member shares the problem
                    for i in range(count):
                        found.setdefault(i, message)
            continue
        verdicts: dict[tuple[Any, ...], str | None] = {}
        for i, values in enumerate(_member_values(keys, keyed, shared, count)):
            if values not in verdicts:
                verdicts[values] = problem(values)
            message = verdicts[values]
            if message is not None and i not in found:
                found[i] = message
    return found


def _all_in_range(setting: Setting, column: Sequence[Any]) -> bool:
    """Whether every value of `column` passes `setting`'s check, judged at the column's
    smallest and largest value: a numeric row's allowed values form one interval. False
    (judge each value) unless every value is a finite number of the row's own type."""
    kind = setting.kind
    if kind not in (float, int) or not column or not all(type(v) is kind for v in column):
        return False
    if kind is float and not math.isfinite(sum(column)):  # a NaN or an infinity somewhere
        return False
    return setting.problem(min(column)) is None and setting.problem(max(column)) is None


def _typed_problem(setting: Setting, value: Any) -> str | None:
    try:
        value = coerce(setting.key, value) if setting.kind in (float, int, bool) else value
    except GdlabError as err:
        return str(err)
    return setting.problem(value)


def _member_values(
    keys: Sequence[str], keyed: Mapping[str, list[Any]], shared: Mapping[str, Any], count: int
) -> Iterable[tuple[Any, ...]]:
    columns = [keyed[k] if k in keyed else [shared.get(k)] * count for k in keys]
    return zip(*columns, strict=True)
