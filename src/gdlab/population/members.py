"""A population's members: one column per batchable hyperparameter, row i is member i.

The columns are the settings table's batchable rows (`gdlab.settings.BATCHABLE`), named by
the key's last part (`lr`, `momentum`, ..., `seed`), held as plain lists so a million members
stay cheap. Their checks are the table's, so a member is refused exactly when its plain run
would be, with the same message.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from gdlab.errors import GdlabError
from gdlab.optim import RULES, Hyper
from gdlab.settings import BY_KEY, MEMBER_KEYS, coerce, member_keys, member_problems


class Members:
    """Columns of per-member hyperparameters of the update rule `rule`; `members.lr` is the
    lr column."""

    def __init__(self, columns: Mapping[str, Sequence[Any]], rule: str = "sgd") -> None:
        keys = member_keys(rule)
        unknown = set(columns) - set(keys)
        if unknown:
            names = ", ".join(sorted(MEMBER_KEYS.get(u, u) for u in unknown))
            raise GdlabError(f"optimizer={rule} has no {names}")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"member columns differ in length: {sorted(lengths)}")
        self.rule = rule
        self.columns: dict[str, list[Any]] = {k: list(columns[k]) for k in keys}
        #: every member passed `problems()` already (see `select`)
        self.checked = False

    @classmethod
    def build(
        cls, count: int, base: Mapping[str, Any], rule: str = "sgd", **columns: Sequence[Any]
    ) -> Members:
        """`count` members: `columns` give per-member values, `base` the shared rest."""
        full: dict[str, Sequence[Any]] = {}
        keys = member_keys(rule)
        for name in columns:
            if name not in keys:
                raise GdlabError(f"optimizer={rule} has no {MEMBER_KEYS.get(name, name)}")
        for name in keys:
            if name in columns:
                if len(columns[name]) != count:
                    raise ValueError(f"column {name} has {len(columns[name])} values, not {count}")
                full[name] = columns[name]
            else:
                full[name] = [base[name]] * count
        return cls(full, rule)

    @classmethod
    def from_rows(
        cls, rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any], rule: str = "sgd"
    ) -> Members:
        """Members from dicts of field -> value; missing fields come from `base`."""
        return cls({n: [row.get(n, base[n]) for row in rows] for n in member_keys(rule)}, rule)

    def __getattr__(self, name: str) -> list[Any]:
        columns = self.__dict__.get("columns", {})
        if name in columns:
            return columns[name]
        raise AttributeError(name)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def row(self, i: int) -> dict[str, Any]:
        return {name: column[i] for name, column in self.columns.items()}

    def select(self, rows: Sequence[int], checked: bool = False) -> Members:
        """Members `rows`; `checked`: they passed `problems()` against the same settings, so
        `validate` need not judge them again (a million members: seconds)."""
        if len(rows) == len(self) and list(rows) == list(range(len(self))):
            columns = {name: list(column) for name, column in self.columns.items()}
        else:
            columns = {name: [column[i] for i in rows] for name, column in self.columns.items()}
        selected = Members(columns, self.rule)
        selected.checked = checked
        return selected

    def problems(self, shared: Mapping[str, Any] | None = None) -> dict[int, str]:
        """Member index -> why a plain run with its settings would refuse to start.

        `shared` holds the other keys' values (e.g. the schedule, which bounds lr); a
        population job leaves those members out (reported as failed) and trains the rest.
        """
        return member_problems(self.columns, shared or {}, len(self))

    def validate(self, shared: Mapping[str, Any] | None = None) -> None:
        """Refuse the first member a plain run would refuse (same message), and convert the
        columns to the types the update needs (ints to floats)."""
        problems = {} if self.checked else self.problems(shared)
        if problems:
            raise GdlabError(problems[min(problems)])
        for name, column in self.columns.items():
            key = MEMBER_KEYS[name]
            kind = BY_KEY[key].kind
            if kind in (float, int) and all(type(v) is kind for v in column):
                continue  # already what the update needs (the common case: no copy)
            self.columns[name] = [coerce(key, v) for v in column]

    def hyperparameters(
        self, device: torch.device, shared: Mapping[str, Any] | None = None
    ) -> dict[str, Hyper]:
        """The update rule's arguments for every member at once.

        A feature no member uses is passed as its off value (momentum 0, no clipping...), so
        the update skips it; a value every member shares is passed as that number, exactly
        as a plain run passes it; otherwise a tensor of per-member values (float64 as the
        config holds them, bool for flags, +inf for a member that does not clip). lr is
        always a tensor: the schedule scales it every step. `shared` (config key -> value)
        gives the rule's settings that are not member columns (e.g. `amsgrad`).
        """
        out: dict[str, Hyper] = {}
        for name in (f.name for f in dataclasses.fields(RULES[self.rule][1])):
            if name not in self.columns:
                key = f"optimizer.{name}"
                out[name] = (shared or {}).get(key, BY_KEY[key].default_for(self.rule))
                continue
            column = self.columns[name]
            if name != "lr" and not any(v for v in column):
                out[name] = None if name == "clip_norm" else column[0]
            elif name != "lr" and name not in _ALWAYS_PER_MEMBER and len(set(column)) == 1:
                out[name] = column[0]
            elif name == "nesterov":
                out[name] = torch.tensor(column, dtype=torch.bool, device=device)
            else:
                values = [math.inf if v is None else v for v in column]
                out[name] = torch.tensor(values, dtype=torch.float64, device=device)
        return out


#: SGD's settings keep their per-member form even when shared, as populations always ran them
_ALWAYS_PER_MEMBER = frozenset({"momentum", "dampening", "nesterov", "weight_decay", "clip_norm"})


def member_base(values: Mapping[str, Any], rule: str = "sgd") -> dict[str, Any]:
    """The batchable values a plain run with these table `values` would use: every member's
    default (member column name -> value)."""
    return {name: values[key] for name, key in member_keys(rule).items()}
