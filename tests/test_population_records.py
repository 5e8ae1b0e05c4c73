"""A population's records as columns: members.parquet beside population.json for large
populations, the same records inline for small ones and for files written before; the
summary of a large population (top rows, counts, every row in summary.csv) read and ranked as
arrays, in `gdlab.rules.rank_key`'s order."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from gdlab.population.engine import PopulationResult
from gdlab.results import (
    MEMBERS_PARQUET,
    POPULATION_JSON,
    population_records,
    read_population,
    read_population_records,
    write_population,
)
from gdlab.rules import RANKED, rank_key
from gdlab.sweeps.jobs import JobRow
from gdlab.sweeps.summary import (
    MD_ROWS,
    SweepTable,
    _number_strings,
    _text_strings,
    collect_jobs,
    collect_table,
    rank_jobs,
    rank_order,
    summary_csv,
    write_summary,
)

STOP = 'loss rose from 14 to 7.45e+08, "fast"\nthen ∞'  # a comma, quotes, a newline, unicode


def synthetic_result(count: int, seed: int = 0, sharpness: bool = False) -> PopulationResult:
    """A PopulationResult of `count` members of the regression: a lr sweep crossing 2/L,
    with converged, finished and diverged members and non-finite values where they diverged."""
    rng = np.random.default_rng(seed)
    lrs = np.linspace(1e-4, 1.2, count)
    diverged = lrs > 0.957
    converged = ~diverged & (rng.random(count) < 0.6)
    status = np.where(diverged, "diverged", np.where(converged, "converged", "finished"))
    steps = np.where(diverged, rng.integers(5, 50, count), rng.integers(50, 200, count))
    excess = np.where(diverged, np.nan, rng.random(count) * 1e-3)
    final = 0.25 + excess
    final[diverged & (rng.random(count) < 0.5)] = np.inf
    w = torch.from_numpy(rng.standard_normal((count, 2)))
    w[torch.from_numpy(diverged), 0] = math.nan
    b = torch.from_numpy(rng.standard_normal(count))
    m = torch.from_numpy(rng.standard_normal((count, 2, 2)))
    big = torch.zeros(count, 3, 3)  # 9 numbers: not kept
    reason = np.where(diverged, STOP, np.where(converged, "gradient norm below tol", None))
    result = PopulationResult(
        status=status.tolist(),
        steps=steps.tolist(),
        final_loss=torch.from_numpy(final),
        grad_norm=torch.from_numpy(np.where(diverged, np.inf, rng.random(count) * 1e-5)),
        params={"w": w, "b": b, "m": m, "big": big},
        stop_reason=reason.tolist(),
        distance_to_minimizer=torch.from_numpy(np.where(diverged, np.nan, rng.random(count))),
        minimum=0.25,
        wall_time_s=60.0,
        strategy="broadcast",
        chunk_size=65536,
        steps_run=200,
        excess_loss=[None if math.isnan(x) else x for x in excess.tolist()],
        score=np.where(diverged, np.inf, 2 + excess).tolist(),
        lr_limit=[0.957] * count,
        initial_loss=torch.full((count,), 14.0, dtype=torch.float64),
    )
    if sharpness:
        points = [
            {"step": 200, "lambda_max": 2.09, "lambda_min": 0.1, "lr_limit": 0.957,
             "ratio": lr / 0.957, "preconditioned": None}
            for lr in lrs.tolist()
        ]  # fmt: skip
        points[count // 2] = None  # a member that was never measured
        result.sharpness_final, result.sharpness_initial = points, points
    return result


def make_population(
    job_dir: Path, count: int, refused: int = 0, inline: bool | None = None, **kwargs: Any
) -> dict[str, Any]:
    """A population job's directory as the sweeper lays it out, `refused` members refused
    (the first ones); returns the arguments its records were built from."""
    (job_dir / ".hydra").mkdir(parents=True)
    dump = yaml.safe_dump
    (job_dir / ".hydra" / "overrides.yaml").write_text(dump(["objective=quadratic", "+p=0"]))
    hydra = {"hydra": {"job": {"num": 0}, "runtime": {"choices": {"objective": "quadratic"}}}}
    (job_dir / ".hydra" / "hydra.yaml").write_text(dump(hydra))
    (job_dir / ".hydra" / "config.yaml").write_text(dump({"optimizer": {"momentum": 0.0}}))
    lrs = np.linspace(1e-4, 1.2, count).tolist()
    overrides = [["objective=quadratic", f"optimizer.lr={lr!r}"] for lr in lrs]
    trained = list(range(refused, count))
    result = synthetic_result(count, **kwargs)
    for name, column in vars(result).items():  # keep the trained members' rows
        if isinstance(column, list | torch.Tensor) and len(column) == count:
            setattr(result, name, column[refused:])
    result.params = {k: v[refused:] for k, v in result.params.items()}
    problems = {i: "optimizer.nesterov=true needs momentum, > 0" for i in range(refused)}
    info = {"objective": "quadratic", "problem": {"name": "quadratic", "fields": {"a": 1.0}},
            "device": "cpu", "dtype": "float64"}  # fmt: skip
    args = (count, overrides, lrs, result, trained, problems, info, {"curvature": 2.09})
    write_population(job_dir, population_records(*args), inline=inline)
    return {"args": args}


# ------------------------------------------------------------------------------ the records


def test_parquet_records_read_back_as_the_inline_document(tmp_path: Path) -> None:
    made = make_population(tmp_path / "big", 50, refused=3, inline=False, sharpness=True)
    make_population(tmp_path / "small", 50, refused=3, inline=True, sharpness=True)
    assert (tmp_path / "big" / MEMBERS_PARQUET).is_file()
    assert not (tmp_path / "small" / MEMBERS_PARQUET).exists()
    inline = json.loads((tmp_path / "small" / POPULATION_JSON).read_text())
    pointer = json.loads((tmp_path / "big" / POPULATION_JSON).read_text())
    assert pointer["members_file"] == MEMBERS_PARQUET and "status" not in pointer
    assert pointer["param_shapes"] == {"w": [2], "b": [], "m": [2, 2]}  # big: 9 numbers

    records = read_population_records(tmp_path / "big")
    assert records is not None and len(records) == 50
    assert records.document() == inline  # columns, strings, nulls, nested params: as JSON's
    document = read_population(tmp_path / "big")
    assert document is not None and dict(document) == inline | {
        "version": 2,
        "members_file": MEMBERS_PARQUET,
        "param_shapes": pointer["param_shapes"],
    }
    # what JSON cannot hold is null, as in JSON; text survives whole
    assert inline["status"][:3] == ["failed"] * 3
    assert inline["error"][0] == "optimizer.nesterov=true needs momentum, > 0"
    assert inline["final_loss"][-1] is None and inline["grad_norm"][-1] is None
    assert inline["stop_reason"][-1] == STOP
    assert inline["params"]["w"][-1][0] is None and isinstance(inline["params"]["w"][-1][1], float)
    assert inline["params"]["m"][5] == made["args"][3].params["m"][2].tolist()
    assert inline["params"]["b"][0] is None  # refused: never trained
    assert inline["sharpness_step"][:4] == [None, None, None, 200]
    assert inline["sharpness_step"][25] is None and inline["sharpness_lambda_max"][26] == 2.09

    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(tmp_path / "big" / MEMBERS_PARQUET)  # the one line
    assert len(frame) == 50 and frame["stop_reason"].iloc[-1] == STOP
    assert frame["final_loss"].isna().iloc[-1]


def test_records_of_older_population_json_files_still_read(tmp_path: Path) -> None:
    """A population.json from before gdlab kept scores (columns inline, no score)."""
    job_dir = tmp_path / "job"
    make_population(job_dir, 6, inline=True)
    old = json.loads((job_dir / POPULATION_JSON).read_text())
    for key in ("score", "excess_loss", "lr_limit", "initial_loss", "grad_norm"):
        del old[key]
    (job_dir / POPULATION_JSON).write_text(json.dumps(old))
    records = read_population_records(job_dir)
    assert records is not None and records.document()["status"] == old["status"]
    rows = collect_jobs(tmp_path)
    assert len(rows) == 6 and rows[0].rank == 1 and rows[0].score is not None
    assert {r.job for r in rows} == {f"job#{i}" for i in range(6)}
    member = read_population_records(job_dir).member(0)
    assert member["status"] == old["status"][0] and member["objective"] == "quadratic"
    (job_dir / POPULATION_JSON).write_text("{not json")
    assert read_population_records(job_dir) is None and read_population(job_dir) is None


# ------------------------------------------------------------------------------ the ranking


def reference_order(rows: list[JobRow]) -> tuple[list[int], list[int | None]]:
    """The order and ranks `rank_key` gives row by row (the summary's ranking before it
    was vectorised)."""
    first: dict[str, tuple[int, int]] = {}
    for i, row in enumerate(rows):
        order = row.num if row.num is not None else len(rows) + i
        first[row.problem] = min(first.get(row.problem, (1, order)), (1, order))
    for row in rows:
        if row.status in RANKED:
            first[row.problem] = (0, first[row.problem][1])

    def key(i: int) -> tuple[Any, ...]:
        row = rows[i]
        order = (row.num if row.num is not None else 1 << 30, i)
        return (first[row.problem], *rank_key(row.status, row.score, row.steps, order))

    ordered = sorted(range(len(rows)), key=key)
    ranks: list[int | None] = [None] * len(rows)
    positions: dict[str, int] = {}
    for i in ordered:
        if rows[i].status in RANKED:
            positions[rows[i].problem] = positions.get(rows[i].problem, 0) + 1
            ranks[i] = positions[rows[i].problem]
    return ordered, ranks


def mixed_rows(rng: random.Random, count: int) -> list[JobRow]:
    statuses = ["finished", "converged", "diverged", "interrupted", "failed", "running"]
    scores = [None, math.nan, math.inf, 0.0, -0.0, 0.5, 0.5, 1.25, 2.0, 1e-300]
    rows = []
    for i in range(count):
        num = rng.choice([None, rng.randrange(5), i])
        status = rng.choice(statuses)
        row = JobRow(f"j{i}", num, [], status, steps=rng.choice([None, 3, 3, 7, 100]))
        row.score = rng.choice(scores)
        row.problem = rng.choice(["a", "b", "c"]) if i % 7 else "never ranked"
        if row.problem == "never ranked":
            row.status = rng.choice(statuses[2:])
        rows.append(row)
    return rows


def test_the_vectorised_ranking_is_rank_keys() -> None:
    rng = random.Random(0)
    for trial in range(300):
        rows = mixed_rows(rng, rng.randrange(1, 60))
        order, rank = rank_order(SweepTable.from_rows(rows))
        expected, ranks = reference_order(rows)
        assert order.tolist() == expected, trial
        assert [None if r != r else int(r) for r in rank.tolist()] == ranks, trial
    rows = mixed_rows(rng, 40)
    expected, ranks = reference_order(rows)
    assert [r.job for r in rank_jobs(rows)] == [rows[i].job for i in expected]
    assert [r.rank for r in rows] == ranks


def test_a_population_and_plain_jobs_rank_as_rank_key_orders_them(tmp_path: Path) -> None:
    make_population(tmp_path / "p", 40, refused=2)
    for num, (status, loss) in enumerate([("converged", 0.25), ("diverged", None)], start=1):
        job = tmp_path / f"plain{num}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={num}"]))
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
        metrics = {"status": status, "final_loss": loss, "steps": 9, "score": loss}
        (job / "metrics.json").write_text(json.dumps(metrics))
    rows = collect_jobs(tmp_path)
    found = sorted(rows, key=lambda r: (r.job.partition("#")[0], int(r.job.partition("#")[2] or 0)))
    expected, ranks = reference_order(found)  # from the order the jobs are found in
    assert [found[i].job for i in expected] == [r.job for r in rows]
    assert [ranks[i] for i in expected] == [r.rank for r in rows]


# ------------------------------------------------------------------------------ the files


def reference_csv(rows: list[JobRow]) -> str:
    """summary.csv as the csv module writes it, row by row (the writer before it went
    column by column)."""
    from gdlab.sweeps.jobs import override_keys
    from gdlab.sweeps.summary import (
        CSV_COLUMNS,
        CSV_LEADING,
        LR_COLUMN,
        SHARPNESS_COLUMNS,
        WALL_TIME_FORMAT,
        _fmt,
    )

    keys = [k for k in override_keys(rows) if k != LR_COLUMN]  # the lr has its own column
    sharp = any(r.sharpness_lambda_max is not None for r in rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = [*CSV_COLUMNS[:CSV_LEADING], *keys, *CSV_COLUMNS[CSV_LEADING:]]
    writer.writerow([*header, *(SHARPNESS_COLUMNS * sharp)])
    for row in rows:
        numbers = [row.final_loss, row.excess_loss, row.distance_to_minimizer, row.score]
        writer.writerow(
            [row.rank or "", row.job, " ".join(row.overrides), _fmt(row.lr, "r"),
             *(row.values.get(k, "") for k in keys), row.problem, row.status,
             "" if row.steps is None else row.steps, *(_fmt(v, "r") for v in numbers),
             _fmt(row.wall_time_s, WALL_TIME_FORMAT), _fmt(row.lr_limit, "r"),
             "; ".join(x for x in (row.error, row.note) if x),
             *([_fmt(row.sharpness_lambda_max, "r"), _fmt(row.sharpness_lr_limit, "r")] * sharp)]
        )  # fmt: skip
    return out.getvalue()


def test_summary_csv_is_the_csv_modules(tmp_path: Path) -> None:
    make_population(tmp_path / "p", 300, refused=5, sharpness=True)
    rows = collect_jobs(tmp_path)
    rows[3].note, rows[4].error = "last logged point", 'a "quoted", odd\r\nerror'
    assert summary_csv(rows) == reference_csv(rows)


def test_numbers_and_text_are_written_as_python_and_csv_write_them() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.integers(0, 2**63 - 1, 50_000).view(np.float64),  # every bit pattern
            10.0 ** rng.uniform(-20, 20, 50_000) * rng.choice([-1, 1], 50_000),
            [0.0, -0.0, 1e-4, 9.9e-5, 1e-5, 1e-7, 1e15, 1e16, 9999999999999998.0, 2.0],
            [np.inf, -np.inf, np.nan, 5e-324, 1.7976931348623157e308, 0.1, 1 / 3],
        ]
    )
    assert _number_strings(values).to_pylist() == [
        "" if v != v else repr(v) for v in values.tolist()
    ]
    texts = ["plain", "a,b", 'say "hi"', "two\nlines", "cr\ronly", "", None, "tab\there", "∞"]
    cells = _text_strings(np.array(texts, dtype=object)).to_pylist()
    for text, cell in zip(texts, cells, strict=True):
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow([text or "", "x"])
        assert f"{cell},x\n" == out.getvalue()


def test_summary_of_a_large_population_shows_the_top_and_the_counts(tmp_path: Path) -> None:
    count = 200_000
    make_population(tmp_path / "job", count, refused=10)
    start = time.perf_counter()
    summary = write_summary(tmp_path, plot=False)
    took = time.perf_counter() - start
    assert took < 8.0, f"summary of {count} members took {took:.1f} s"
    assert len(summary.rows) == count and len(summary.failed) == 10
    md = summary.md_path.read_text()
    assert f"The top {MD_ROWS} of {count} rows; summary.csv has every row." in md
    assert "| failed | 10 |" in md and f"{count} runs: " in md
    assert f"| … {count - MD_ROWS} more in summary.csv |" in md
    table_lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table_lines) < MD_ROWS + 20  # not a line per member
    assert "and 9 more (failed): optimizer.nesterov=true needs momentum, > 0" in md
    with open(summary.csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == count and table[0]["rank"] == "1"
    assert [r["status"] for r in table[-10:]] == ["failed"] * 10
    assert summary.rows[0].job == table[0]["job"] and summary.rows[0].rank == 1
    assert summary.failed[0].status == "failed"
    # the same summary from the API, without a JobRow per member
    import gdlab

    sweep = gdlab.load_sweep(tmp_path)
    assert sweep.best is not None and sweep.best["job"] == table[0]["job"]
    assert len(sweep.rows) == count and sweep.rows[-1]["status"] == "failed"
    assert float(sweep.rows[0]["final_loss"]) == pytest.approx(float(table[0]["final_loss"]))
    member = sweep.runs[0]
    assert member.metrics["status"] == table[0]["status"] and set(member.params) == {"w", "b", "m"}


def test_a_table_of_rows_is_the_rows_again(tmp_path: Path) -> None:
    make_population(tmp_path / "p", 30, refused=2)
    table = collect_table(tmp_path)
    rows = table.rows()
    again = SweepTable.from_rows(rows).rows()
    assert again == rows
    assert table.rows([4, 2]) == [rows[4], rows[2]]
