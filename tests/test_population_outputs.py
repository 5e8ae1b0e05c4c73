"""What a population job leaves behind: population.json, a summary row and an HParams row per
member, curves for the best, median and worst member, the lr plot's stability limit; and that a
population sweep names the same best setting as a plain multirun over the same grid."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata, plugin_data_pb2

from gdlab.population.job import run_population_job
from gdlab.population.tensorboard import (
    CURVE_RUNS,
    MEMBERS_DIR,
    session_start_summary,
    spread,
)
from gdlab.report import report
from gdlab.results import POPULATION_JSON
from gdlab.rules import curvature, lr_limit
from gdlab.sweeps import collect_jobs, write_summary
from hydra_plugins.gdlab_population._plan import plan_sweep
from tests.conftest import compose_config, run_cli

GRID = ("optimizer.lr=0.01,0.1,0.4,0.9,1.5", "optimizer.momentum=0,0.5")


def population_job(
    sweep_dir: Path, overrides: list[str], grid: tuple[str, ...] = GRID, **options: Any
) -> Path:
    """Run one population job in-process, laid out as the sweeper lays it out."""
    parsed = OverridesParser.create().parse_overrides([*overrides, *grid])
    (plan,) = plan_sweep(parsed, None, {"strategy": "auto", "chunk_size": None, **options})
    cfg = compose_config(["trainer.progress=false", *plan.overrides])
    job_dir = sweep_dir / "job"
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(plan.overrides))
    run_population_job(cfg, plan, job_dir)
    return job_dir


def scalars(run_dir: Path) -> dict[str, list[Any]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


def session(run_dir: Path) -> dict[str, Any]:
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert metadata.SESSION_END_INFO_TAG in content
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def hparams_start_summary(hparams: dict[str, Any]) -> Any:
    """The session start torch.utils.tensorboard builds: the reference for ours."""
    from torch.utils.tensorboard.summary import hparams as torch_hparams

    return torch_hparams(hparams, {})[1]


def test_session_proto_is_the_plain_runs() -> None:
    hparams = {"objective": "quadratic", "optimizer.lr": 0.1, "trainer.steps": 50, "flag": True}
    parsed = []
    for summary in (session_start_summary(hparams), hparams_start_summary(hparams)):
        (value,) = summary.value
        assert value.tag == metadata.SESSION_START_INFO_TAG
        assert value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        data.session_start_info.start_time_secs = 0
        parsed.append(data)
    assert parsed[0] == parsed[1]


def test_population_job_writes_a_row_per_member(tmp_path: Path) -> None:
    job_dir = population_job(tmp_path, ["experiment=linear_regression", "logger.plots=false"])
    doc = json.loads((job_dir / POPULATION_JSON).read_text())
    assert doc["members"] == 10 and len(doc["overrides"]) == 10
    assert doc["overrides"][1] == [
        "experiment=linear_regression",
        "logger.plots=False",  # as Hydra's basic sweeper writes a non-swept override
        "optimizer.lr=0.01",
        "optimizer.momentum=0.5",
    ]
    assert doc["lr"][:3] == [0.01, 0.01, 0.1]
    assert 2 / doc["curvature"] == pytest.approx(0.957, abs=1e-3)  # 2/L of the tutorial's data
    # heavy ball 0.5: 2(1 + 0.5)/L
    assert doc["lr_limit"][:2] == pytest.approx([0.957, 1.5 * 0.957], abs=2e-3)
    assert set(doc["status"]) >= {"diverged", "converged"}

    rows = collect_jobs(tmp_path)
    assert len(rows) == 10  # one row per member, ranked like jobs
    assert rows[0].rank == 1 and rows[0].status in ("finished", "converged")
    assert all(r.rank is None for r in rows if r.status == "diverged")
    assert {r.job for r in rows} == {f"job#{i}" for i in range(10)}
    best = min(
        (i for i, s in enumerate(doc["status"]) if s in ("finished", "converged")),
        key=lambda i: doc["score"][i],
    )
    assert rows[0].values == dict(o.split("=") for o in doc["overrides"][best])
    assert [r.lr_limit for r in sorted(rows, key=lambda r: r.job)] == [
        doc["lr_limit"][int(r.job.split("#")[1])] for r in sorted(rows, key=lambda r: r.job)
    ]

    summary = write_summary(tmp_path, plot=True)
    with open(summary.csv_path) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 10 and table[0]["optimizer.lr"] == rows[0].values["optimizer.lr"]
    assert summary.plot_path is not None and summary.plot_path.stat().st_size > 1000
    assert report(tmp_path, plot=False) == 10  # gdlab-report reads it back the same way


def test_hparams_row_per_member_and_three_curves(tmp_path: Path) -> None:
    job_dir = population_job(tmp_path, ["objective=quadratic", "logger.plots=false"])
    doc = json.loads((job_dir / POPULATION_JSON).read_text())
    members = sorted((job_dir / MEMBERS_DIR).iterdir())
    assert [m.name for m in members] == [f"{i:05d}" for i in range(10)]
    for i, member in enumerate(members):
        hparams = session(member)
        lr, momentum = (float(o.split("=")[1]) for o in doc["overrides"][i][-2:])
        assert hparams["optimizer.lr"] == pytest.approx(lr)
        assert hparams["optimizer.momentum"] == pytest.approx(momentum)
        assert hparams["objective"] == "quadratic" and hparams["trainer.steps"] == 50
        final = scalars(member)
        assert final["train_result/steps"][-1].value == doc["steps"][i]
        assert final["train_result/diverged"][-1].value == float(doc["status"][i] == "diverged")
        if doc["final_loss"][i] is not None:
            loss = final["train_result/loss"][-1].value
            assert loss == pytest.approx(doc["final_loss"][i], rel=1e-6)
    picks = doc["tensorboard"]
    assert doc["status"][picks["worst"]] == "diverged"
    assert collect_jobs(tmp_path)[0].job == f"job#{picks['best']}"  # the summary's best
    for which, i in picks.items():
        curve = scalars(job_dir / CURVE_RUNS[which])
        assert len(curve["train/loss"]) == doc["steps"][i] + 1  # every step logged, and the end
        if doc["final_loss"][i] is not None:
            assert curve["train/loss"][-1].value == pytest.approx(doc["final_loss"][i], rel=1e-6)
        events = EventAccumulator(str(job_dir / CURVE_RUNS[which]))
        events.Reload()
        with pytest.raises(KeyError):  # no HParams data at all: not extra rows
            events.PluginTagToContent(metadata.PLUGIN_NAME)


def test_hparams_rows_can_be_capped(tmp_path: Path) -> None:
    job_dir = population_job(
        tmp_path, ["objective=quadratic", "logger.plots=false"], hparams_members=4
    )
    doc = json.loads((job_dir / POPULATION_JSON).read_text())
    kept = {int(p.name) for p in (job_dir / MEMBERS_DIR).iterdir()}
    assert len(kept) == 4 and set(doc["tensorboard"].values()) <= kept
    assert spread(10, 4, [9]) == [0, 3, 6, 9] and spread(3, None, []) == [0, 1, 2]


def test_stability_limit_is_two_over_the_largest_curvature() -> None:
    from gdlab.objectives.multivariate import QuadraticForm
    from gdlab.objectives.quadratic import Quadratic

    assert lr_limit(curvature(Quadratic(a=2.0), False)) == 0.5
    assert lr_limit(curvature(QuadraticForm(), False)) == pytest.approx(2 / (5 + math.sqrt(2)))
    assert curvature(QuadraticForm(A=[[2.0, 3.0], [3.0, 2.0]]), False) is None  # saddle


@pytest.mark.slow
def test_population_and_plain_sweeps_name_the_same_best_setting(tmp_path: Path) -> None:
    grid = ["objective=multivariate", "optimizer.lr=0.02,0.1,0.2,0.3,0.4,0.5", "trainer.steps=40"]
    results = {}
    for name, extra in (("plain", []), ("population", ["hydra/sweeper=population"])):
        sweep_dir = tmp_path / name
        proc = run_cli("-m", *extra, *grid, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        with open(sweep_dir / "summary.csv") as handle:
            results[name] = list(csv.DictReader(handle))
        assert (sweep_dir / "lr.png").exists()
    plain, population = results["plain"], results["population"]
    assert len(plain) == len(population) == 6
    assert [r["optimizer.lr"] for r in population] == [r["optimizer.lr"] for r in plain]
    assert [r["status"] for r in population] == [r["status"] for r in plain]
    for a, b in zip(plain, population, strict=True):
        if a["final_loss"]:
            assert float(b["final_loss"]) == pytest.approx(float(a["final_loss"]), rel=1e-5)
    assert "diverged" in {r["status"] for r in plain}  # 2/L = 0.31: the grid crosses it


class DuckObjective:
    """The objective contract at its smallest: no base class, no data, no minimiser."""

    def init_params(self, generator: Any, device: Any, dtype: Any) -> dict[str, Any]:
        import torch

        return {"x": torch.tensor([0.0, 3.0], device=device, dtype=dtype)}

    def loss(self, params: dict[str, Any]) -> Any:
        x = params["x"]
        return (x[0] - 1.0) ** 2 + 2.0 * (x[1] + 0.5) ** 2


def test_a_duck_typed_objective_trains_as_a_population_and_matches_its_plain_runs(
    tmp_path: Path,
) -> None:
    from omegaconf import OmegaConf, open_dict

    from gdlab.experiment import build

    duck = {"_target_": f"{__name__}.DuckObjective"}
    grid = ("optimizer.lr=0.05,0.2,0.6", "optimizer.momentum=0,0.5", "trainer.seed=0,1")
    parsed = OverridesParser.create().parse_overrides(["trainer.steps=30", *grid])
    (plan,) = plan_sweep(parsed, None, {"strategy": "auto", "chunk_size": None})
    cfg = compose_config(["trainer.progress=false", "logger.plots=false", *plan.overrides])
    with open_dict(cfg):
        cfg.objective = OmegaConf.create(duck)
    job_dir = tmp_path / "job"
    run_population_job(cfg, plan, job_dir)
    doc = json.loads((job_dir / POPULATION_JSON).read_text())
    assert doc["members"] == 12 and doc["distance_to_minimizer"] == [None] * 12
    for i, overrides in enumerate(doc["overrides"]):
        plain_cfg = compose_config(["trainer.progress=false", "trainer.steps=30", *overrides])
        with open_dict(plain_cfg):
            plain_cfg.objective = OmegaConf.create(duck)
        plain = build(plain_cfg).trainer.run()
        assert doc["status"][i] == plain.status and doc["steps"][i] == plain.steps
        assert doc["final_loss"][i] == pytest.approx(plain.final_loss, rel=1e-5, abs=1e-12)
        assert doc["params"]["x"][i] == pytest.approx(plain.params["x"].tolist(), rel=1e-5)
