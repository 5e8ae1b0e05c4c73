"""Races on one landscape (issue 12, part 5): paths.png, paths.gif, losses.png and the race's
TensorBoard images of a sweep whose runs share one objective of one or two numbers; the race
presets (part 6)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from gdlab.config import config_dir
from gdlab.sweeps import race
from gdlab.sweeps.jobs import JobRow
from gdlab.sweeps.summary import collect_jobs, write_summary
from tests.conftest import run_cli, run_sweep
from tests.test_sweep import make_job

RULES = ("sgd", "adam", "rmsprop", "adagrad")
PICTURES = (race.PATHS_PNG, race.PATHS_GIF, race.LOSSES_PNG)


def rule_sweep(sweep_dir: Path, objective: str, steps: int = 15, extra: tuple = ()) -> Path:
    """A sweep of the four rules on one objective, as a multirun leaves it (in-process)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for num, rule in enumerate(RULES):
        overrides = [f"optimizer={rule}", f"objective={objective}", "optimizer.lr=0.01"]
        make_job(sweep_dir, [*overrides, f"trainer.steps={steps}", "logger.plots=false", *extra],
                 num)  # fmt: skip
    return sweep_dir


def legend_texts(figure) -> list[str]:
    return [t.get_text() for t in figure.axes[0].get_legend().get_texts()]


def gif_frames(path: Path) -> int:
    with Image.open(path) as gif:
        return gif.n_frames


def race_images(sweep_dir: Path) -> dict[str, tuple[int, int]]:
    """The race run's TensorBoard images, read back as TensorBoard reads them: tag -> size."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(sweep_dir / race.RACE_RUN), size_guidance={"images": 0})
    accumulator.Reload()
    return {
        tag: (accumulator.Images(tag)[-1].width, accumulator.Images(tag)[-1].height)
        for tag in accumulator.Tags()["images"]
    }


# --------------------------------------------------------------------------- in-process sweeps


def test_a_two_number_race(tmp_path: Path) -> None:
    sweep_dir = rule_sweep(tmp_path / "sweep", "himmelblau")
    summary = write_summary(sweep_dir)
    written = [sweep_dir / name for name in PICTURES] + [sweep_dir / race.RACE_RUN]
    assert sorted(summary.race_paths) == sorted(written)
    assert all(p.exists() for p in written)
    assert (sweep_dir / race.PATHS_PNG).read_bytes()[:4] == b"\x89PNG"

    gif = sweep_dir / race.PATHS_GIF
    assert 2 <= gif_frames(gif) <= 100
    assert gif.stat().st_size < 3_000_000

    loaded = race.load_race(sweep_dir, collect_jobs(sweep_dir))
    assert loaded is not None and loaded.dim == 2 and len(loaded.racers) == 4
    texts = legend_texts(race.paths_figure(loaded))
    for rule in RULES:  # what differs between the runs: the rule (the lr is the same)
        assert any(t.startswith(f"{rule} lr=0.01 (") for t in texts), texts
    assert {"minimiser", "start"} <= set(texts)
    for racer in loaded.racers:  # every logged point: the start, 15 steps, the end
        assert racer.steps == list(range(16))
        assert math.isclose(racer.losses[-1], racer.row.final_loss, rel_tol=1e-6)
    assert len(legend_texts(race.losses_figure(loaded))) >= 4

    images = race_images(sweep_dir)  # the same pictures, as TensorBoard images
    assert sorted(tag.rsplit("/", 1)[-1] for tag in images) == ["losses", "paths"]
    with Image.open(sweep_dir / race.PATHS_PNG) as png:
        paths_tag = next(tag for tag in images if tag.endswith("paths"))
        assert images[paths_tag] == png.size


def test_a_redrawn_race_keeps_one_event_file(tmp_path: Path) -> None:
    sweep_dir = rule_sweep(tmp_path / "sweep", "quadratic", steps=5)
    write_summary(sweep_dir)
    write_summary(sweep_dir)  # gdlab-report, later
    assert len(list((sweep_dir / race.RACE_RUN).glob("events.out.tfevents.*"))) == 1


def test_a_one_number_race_is_drawn_on_the_curve(tmp_path: Path) -> None:
    sweep_dir = rule_sweep(tmp_path / "sweep", "quadratic", steps=10)
    loaded = race.load_race(sweep_dir, collect_jobs(sweep_dir))
    assert loaded is not None and loaded.dim == 1
    ax = race.paths_figure(loaded).axes[0]
    assert ax.get_ylabel() == "loss"
    assert "f" in legend_texts(ax.get_figure())  # the curve itself


def test_paths_from_event_files_equal_a_replay(tmp_path: Path) -> None:
    (job_dir,) = [
        make_job(tmp_path, ["objective=himmelblau", "optimizer.lr=0.01", "trainer.steps=12"], 0)
    ]
    loaded = race.load_race(tmp_path, collect_jobs(tmp_path))
    assert loaded is not None
    logged = race.logged_path(job_dir, loaded.template)
    replayed = race.replayed_path(job_dir, {})
    assert logged[0] == replayed[0] == list(range(13))
    for a, b in zip(logged[2], replayed[2], strict=True):  # event files hold float32
        assert a == pytest.approx(b, rel=1e-6)


def test_a_job_without_event_files_is_replayed(tmp_path: Path) -> None:
    rule_sweep(tmp_path, "himmelblau", steps=8, extra=("logger.tensorboard=false",))
    loaded = race.load_race(tmp_path, collect_jobs(tmp_path))
    assert loaded is not None and len(loaded.racers) == 4
    assert all(len(r.points) == 9 for r in loaded.racers)


def test_no_race_for_different_problems(tmp_path: Path) -> None:
    for num, objective in enumerate(("himmelblau", "beale")):
        make_job(tmp_path, [f"objective={objective}", "trainer.steps=5", "logger.plots=false"],
                 num)  # fmt: skip
    summary = write_summary(tmp_path)
    assert summary.race_paths == []
    assert not any((tmp_path / name).exists() for name in PICTURES)


def test_no_race_for_more_than_two_numbers(tmp_path: Path) -> None:
    for num, lr in enumerate(("0.001", "0.002")):
        overrides = ["objective=rosenbrock", "objective.n=3", f"optimizer.lr={lr}"]
        make_job(tmp_path, [*overrides, "trainer.steps=5", "logger.plots=false"], num)
    summary = write_summary(tmp_path)
    assert summary.race_paths == []
    assert not any((tmp_path / name).exists() for name in PICTURES)


def test_no_race_without_plots(tmp_path: Path) -> None:
    rule_sweep(tmp_path, "quadratic", steps=5)
    assert write_summary(tmp_path, plot=False).race_paths == []
    assert not (tmp_path / race.PATHS_PNG).exists()


# --------------------------------------------------------------------------- choosing runs


def row(job: str, rank: int | None, **values: str) -> JobRow:
    out = JobRow(job=job, num=rank, overrides=[f"{k}={v}" for k, v in values.items()],
                 status="finished" if rank else "diverged", rank=rank)  # fmt: skip
    out.values = dict(values)
    out.problem = "p"
    return out


def test_a_large_plain_sweep_draws_the_best_of_each_line() -> None:
    rows = [
        row(f"j{i}", i + 1, optimizer=rule, **{"optimizer.lr": f"0.0{i}"})
        for i, rule in enumerate(RULES * 6)
    ]
    assert race.choose(rows[:20]) == rows[:20]  # up to MAX_PATHS: every job
    chosen = race.choose(rows)
    assert [r.job for r in chosen] == ["j0", "j1", "j2", "j3"]  # the best of each rule


def test_a_population_draws_the_best_member_of_each_line() -> None:
    rows = [
        row(f"pop#{i}", i + 1, **{"optimizer.lr": f"0.0{i}", "optimizer.beta1": beta})
        for i, beta in enumerate(["0.8", "0.9"] * 3)
    ]
    assert [r.job for r in race.choose(rows)] == ["pop#0", "pop#1"]
    many = [row(f"pop#{i}", i + 1, **{"trainer.seed": str(i)}) for i in range(50)]
    assert len(race.choose(many)) == race.MAX_PATHS


def test_the_ranked_runs_must_share_one_problem() -> None:
    a, b, c = row("a", 1), row("b", 2), row("c", None)
    c.problem = "q"  # an unranked run of another problem is left out, not a reason to refuse
    assert race.race_rows([a, b, c]) == [a, b]
    b.problem = "q"
    assert race.race_rows([a, b, c]) == []


def test_the_gif_has_at_most_max_frames_of_race() -> None:
    loaded = race.Race("p", None, {}, ["x"], None, None, None, [])
    loaded.racers = [race.Racer(row("a", 1), "a", steps=list(range(5001)))]
    steps = race.frame_steps(loaded)
    assert len(steps) <= race.MAX_FRAMES and steps[0] == 0 and steps[-1] == 5000
    assert race.MAX_FRAMES + race.HOLD_FRAMES <= 100


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", ["race_rosenbrock", "race_himmelblau"])
def test_the_race_presets_sweep_the_four_rules(name: str) -> None:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", [f"experiment={name}"], return_hydra_config=True)
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        options = str(cfg.hydra.sweeper.params.optimizer).split(",")
        assert options == [f"{name}_{rule}" for rule in RULES]
        for option, rule in zip(options, RULES, strict=True):
            job = compose("config", [f"experiment={name}", f"optimizer={option}"])
            assert job.optimizer.name == rule
            assert job.objective._target_.endswith(name.removeprefix("race_").capitalize())


# --------------------------------------------------------------------------- the real CLI


@pytest.mark.slow
def test_a_race_from_the_command_line(tmp_path: Path) -> None:
    proc, sweep_dir = run_sweep(
        "optimizer=sgd,adam,rmsprop,adagrad", "objective=himmelblau", "optimizer.lr=0.01",
        "trainer.steps=10", cwd=tmp_path,
    )  # fmt: skip
    wrote = next(line for line in proc.stdout.splitlines() if line.startswith("gdlab: wrote"))
    for name in (*PICTURES, race.RACE_RUN):
        assert f"{sweep_dir.name}/{name}" in wrote
    assert gif_frames(sweep_dir / race.PATHS_GIF) <= 100
    assert len(race_images(sweep_dir)) == 2


@pytest.mark.slow
def test_a_population_race_draws_one_path_per_line(tmp_path: Path) -> None:
    _, sweep_dir = run_sweep(
        "hydra/sweeper=population", "optimizer=adam", "objective=himmelblau",
        "optimizer.lr=0.01,0.05,0.1", "optimizer.beta1=0.8,0.9", "trainer.steps=10",
        cwd=tmp_path,
    )  # fmt: skip
    assert (sweep_dir / race.PATHS_GIF).exists()
    rows = collect_jobs(sweep_dir)
    assert len(rows) == 6
    loaded = race.load_race(sweep_dir, rows)
    assert loaded is not None and loaded.population and len(loaded.racers) == 2
    betas = sorted(r.row.values["optimizer.beta1"] for r in loaded.racers)
    assert betas == ["0.8", "0.9"]
    for racer in loaded.racers:  # the best of its line, replayed as the member trained
        line = [
            r for r in rows if r.values["optimizer.beta1"] == racer.row.values["optimizer.beta1"]
        ]
        assert racer.row is min(line, key=lambda r: r.rank)
        assert f"beta1={racer.row.values['optimizer.beta1']}" in racer.label
        assert math.isclose(racer.losses[-1], racer.row.final_loss, rel_tol=1e-5)


@pytest.mark.slow
def test_a_race_preset_runs_without_dash_m(tmp_path: Path) -> None:
    proc = run_cli("experiment=race_himmelblau", "trainer.steps=20", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    rows = collect_jobs(sweep_dir)
    assert sorted(r.values["optimizer"] for r in rows) == sorted(
        f"race_himmelblau_{rule}" for rule in RULES
    )
    assert (sweep_dir / race.PATHS_PNG).exists()
