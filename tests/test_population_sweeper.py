"""`hydra/sweeper=population`: the plan (what batches, what fans out) and real sweeps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper

from gdlab.errors import GdlabError
from gdlab.settings import BATCHABLE, MEMBER_KEYS
from hydra_plugins.gdlab_population._plan import (
    coerce,
    member_overrides,
    plan_sweep,
    read_plan,
    write_plans,
)
from tests.conftest import run_cli


def plan(*arguments: str, max_members: int | None = None) -> list[Any]:
    overrides = OverridesParser.create().parse_overrides(list(arguments))
    return plan_sweep(overrides, max_members)


def basic_jobs(*arguments: str) -> list[list[str]]:
    """The jobs Hydra's basic sweeper would run for the same command line."""
    overrides = OverridesParser.create().parse_overrides(list(arguments))
    return BasicSweeper.split_arguments(overrides, None)[0]


def test_batchable_keys_are_the_population_members_fields() -> None:
    assert {v: k for k, v in BATCHABLE.items()} == MEMBER_KEYS


SWEEP = (
    "objective=quadratic,multivariate",
    "optimizer.lr=0.01,0.1,1.5",
    "trainer.steps=20",
    "optimizer.momentum=0,0.9",
    "device.dtype=float32,float64",
)


def test_groups_differ_only_in_batchable_keys_and_cover_the_basic_sweep() -> None:
    plans = plan(*SWEEP)
    assert len(plans) == 4  # objective x dtype fan out; lr x momentum are 6 members each
    assert [p.count for p in plans] == [6] * 4
    assert [p.overrides for p in plans][:2] == [
        ["objective=quadratic", "trainer.steps=20", "device.dtype=float32", "+population=0"],
        ["objective=quadratic", "trainer.steps=20", "device.dtype=float64", "+population=1"],
    ]
    members = [o for p in plans for o in member_overrides(p)]
    assert sorted(members) == sorted(basic_jobs(*SWEEP))  # the same jobs, as members
    for p in plans:  # within a job, members come in the basic sweeper's order
        rows = member_overrides(p)
        assert rows == [r for r in basic_jobs(*SWEEP) if r in rows]


def test_max_members_splits_a_population_into_several_jobs() -> None:
    plans = plan("optimizer.lr=range(0.01,0.11,0.01)", "trainer.seed=0,1", max_members=8)
    assert [(p.start, p.stop) for p in plans] == [(0, 8), (8, 16), (16, 20)]
    assert [p.overrides for p in plans] == [[f"+population={i}"] for i in range(3)]
    columns = [p.columns() for p in plans]
    assert sum(len(c["lr"]) for c in columns) == 20
    assert columns[0]["seed"][:4] == [0, 1, 0, 1]
    assert columns[2]["lr"][-1] == pytest.approx(0.1)


def test_values_are_converted_as_the_schema_converts_them() -> None:
    (p,) = plan("optimizer.nesterov=true,false", "optimizer.clip_norm=null,1", "optimizer.lr=1")
    assert p.columns() == {
        "nesterov": [True, True, False, False],
        "clip_norm": [None, 1.0, None, 1.0],
    }
    assert p.shared == {"optimizer.lr": "optimizer.lr=1"}  # not swept: part of the job
    assert coerce("optimizer.lr", "0.5") == 0.5 and coerce("trainer.seed", 3) == 3


def test_plans_round_trip_through_the_sweep_directory(tmp_path: Path) -> None:
    plans = plan(
        "objective=quadratic,matrix",
        "optimizer.lr=range(0.1,0.6,0.1)",
        "optimizer.clip_norm=null,1",
        "optimizer.nesterov=false",
        max_members=4,
    )
    write_plans(tmp_path, plans)
    assert len(list((tmp_path / ".population").glob("*.json"))) == len(plans) + 1  # + axes
    for original in plans:
        loaded = read_plan(tmp_path, original.label)
        assert loaded == original
        assert loaded.columns() == original.columns()
        assert member_overrides(loaded) == member_overrides(original)
    with pytest.raises(GdlabError, match="started by the population sweeper"):
        read_plan(tmp_path, 99)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["optimizer.lr=interval(0.1,1.0)"], "cannot sweep optimizer.lr=interval"),
        (["hydra/launcher=basic,joblib"], "configures the sweep itself"),
        (["hydra.launcher.n_jobs=1,2"], "configures the sweep itself"),
        (["trainer.resume=a,b"], "population jobs do not resume"),
        (["optimizer.lr=0.1,fast"], "optimizer.lr='fast' is not allowed"),
        (["trainer.seed=1,1.5"], "trainer.seed=1.5 is not allowed"),
        (["+population=1,2"], "the population sweeper's own key"),
    ],
)
def test_keys_that_can_be_neither_batched_nor_fanned_out_are_refused(
    arguments: list[str], message: str
) -> None:
    with pytest.raises(GdlabError, match=message.replace("(", r"\(")):
        plan(*arguments)
    with pytest.raises(GdlabError, match="max_members=0"):
        plan("optimizer.lr=0.1,0.2", max_members=0)


def test_hydra_discovers_the_sweeper_and_its_config() -> None:
    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "PopulationSweeper" in names
    node = ConfigStore.instance().load("hydra/sweeper/population.yaml").node
    assert node._target_.endswith("PopulationSweeper")
    assert "max_members" in node


# --- real sweeps --------------------------------------------------------------------------


def read_population(sweep_dir: Path) -> list[tuple[Path, dict]]:
    return [
        (path.parent, json.loads(path.read_text()))
        for path in sorted(sweep_dir.glob("*/population.json"))
    ]


@pytest.mark.slow
def test_population_sweep_runs_each_group_as_one_job(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/sweeper=population",
        "objective=quadratic,multivariate",
        "optimizer.lr=0.01,0.3,1.5",
        "optimizer.momentum=0,0.9",
        "optimizer.nesterov=false,true",
        "trainer.steps=30",
        "hydra.sweeper.max_members=8",
        "logger.plots=false",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    # nesterov=true with momentum=0 is refused, as its plain job would be: a failed member
    assert proc.returncode == 1, proc.stderr
    jobs = read_population(sweep_dir)
    assert len(jobs) == 4  # 12 members per objective, at most 8 per job
    assert sorted(doc["members"] for _, doc in jobs) == [4, 4, 8, 8]
    statuses = [s for _, doc in jobs for s in doc["status"]]
    assert statuses.count("failed") == 6  # 3 lrs x 2 objectives with nesterov and no momentum
    assert "diverged" in statuses and "finished" in statuses
    for _job_dir, doc in jobs:
        for overrides, status, error in zip(
            doc["overrides"], doc["status"], doc["error"], strict=True
        ):
            if "optimizer.nesterov=True" in overrides and "optimizer.momentum=0" in overrides:
                assert status == "failed" and "nesterov=true needs" in error
            else:
                assert status != "failed" and error is None
    # a member's result is its plain run's: check one diverging and one converging member
    for _job_dir, doc in jobs:
        if doc["objective"] != "quadratic":
            continue
        for i, overrides in enumerate(doc["overrides"]):
            if doc["status"][i] == "failed" or "optimizer.momentum=0.9" in overrides:
                continue
            plain_dir = tmp_path / f"p{len(list(tmp_path.glob('p*')))}"  # a new run, a new dir
            plain = run_cli(*overrides, "logger.plots=false", f"hydra.run.dir={plain_dir}")
            assert plain.returncode == 0, plain.stderr
            metrics = json.loads((plain_dir / "metrics.json").read_text())
            assert doc["status"][i] == metrics["status"]
            assert doc["steps"][i] == metrics["steps"]
            assert doc["params"]["x"][i] == pytest.approx(metrics["params"]["x"], rel=1e-5)


@pytest.mark.slow
def test_population_jobs_through_the_joblib_launcher(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/sweeper=population",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "experiment=linear_regression",
        "optimizer.lr=range(0.05,1.25,0.05)",
        "hydra.sweeper.max_members=6",
        "logger.plots=false",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    jobs = read_population(sweep_dir)
    assert len(jobs) == 4 and all(doc["members"] == 6 for _, doc in jobs)
    lrs = sorted(lr for _, doc in jobs for lr in doc["lr"])
    assert lrs == pytest.approx([0.05 * (i + 1) for i in range(24)])
    statuses = {s for _, doc in jobs for s in doc["status"]}
    assert "diverged" in statuses and statuses & {"finished", "converged"}
    assert all(math.isfinite(doc["wall_time_s"]) for _, doc in jobs)


@pytest.mark.slow
def test_a_key_that_cannot_be_swept_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("-m", "hydra/sweeper=population", "optimizer.lr=interval(0.1,1)", cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "gdlab: error: hydra/sweeper=population cannot sweep optimizer.lr=interval(0.1,1)"
        )
    )
    assert "Traceback" not in proc.stderr
