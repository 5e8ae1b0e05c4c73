"""Inputs that still slipped through (issue 15), and sizes that can't fit in memory.

Each class of input gets one line naming the key and what is allowed, before anything runs:
seeds beyond a 64-bit generator (trainer.seed and an objective's data seed, in plain runs and
in population sweeps), NaN and infinite floats the settings table must refuse, empty or
zero-step ranges under the population sweeper, Optuna's `n_trials`/`n_jobs` and joblib's
`n_jobs` below 1, an Optuna search whose every trial failed (no failed trial presented as the
best), a Ctrl-C in a population job (which has no checkpoint), broken plugins in `--help`, and
a run or population too large for the memory there is (`gdlab.memory`, GDLAB_MEMORY_LIMIT).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import distributions, entry_points
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from gdlab import memory
from gdlab.config import config_dir
from gdlab.errors import GdlabError
from gdlab.objectives import nodes
from gdlab.objectives.linear_regression import LinearRegression
from gdlab.objectives.mlp import MLP
from gdlab.objectives.registry import Registry, discover
from gdlab.objectives.rosenbrock import Rosenbrock
from gdlab.problem import build_problem, check_population_memory
from gdlab.settings import SEED_MAX, SEED_MIN, SETTINGS, check_values, member_problems
from gdlab.sweeps import failures
from hydra_plugins.gdlab_launchers.joblib_launcher import check_n_jobs
from hydra_plugins.gdlab_population._plan import plan_sweep
from tests.conftest import compose_config
from tests.plugin_kit import write_broken_plugins


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text and text, text
    return text


def plan(*arguments: str, max_members: int | None = None) -> list:
    return plan_sweep(OverridesParser.create().parse_overrides(list(arguments)), max_members)


def gdlab(*args: str, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`gdlab ARGS` in this process (no interpreter start-up): exit code and stderr."""
    from gdlab import cli

    code = cli.main(list(args))
    return code, capfd.readouterr().err


# ---------------------------------------------------------------- 1. seeds


@pytest.mark.parametrize("seed", [SEED_MAX + 1, SEED_MIN - 1, 10**30])
def test_a_trainer_seed_beyond_64_bits_is_one_line(seed: int) -> None:
    with pytest.raises(GdlabError) as err:
        check_values({"trainer.seed": seed})
    line = one_line(err)
    assert line.startswith(f"trainer.seed={seed}") and "2**64-1" in line and "-2**63" in line


def test_the_ends_of_the_seed_range_seed_a_generator() -> None:
    check_values({"trainer.seed": SEED_MAX})
    check_values({"trainer.seed": SEED_MIN})
    for seed in (SEED_MIN, SEED_MAX):  # what torch takes, so nothing in between overflows
        torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("objective", "seed"),
    [("linear_regression", SEED_MAX + 1), ("mlp", SEED_MIN - 1), ("linear_regression", 10**25)],
)
def test_an_objective_data_seed_beyond_64_bits_is_one_line(objective: str, seed: int) -> None:
    cfg = compose_config([f"objective={objective}", f"objective.data_seed={seed}"])
    with pytest.raises(GdlabError) as err:
        build_problem(cfg)
    assert one_line(err).startswith(f"objective.data_seed={seed} must be an integer from")


def test_a_population_member_with_a_seed_beyond_64_bits_is_refused_alone() -> None:
    found = member_problems({"seed": [0, SEED_MAX + 1, 7]}, {}, 3)
    assert list(found) == [1] and found[1].startswith(f"trainer.seed={SEED_MAX + 1} must be")


@pytest.mark.slow
def test_seeds_beyond_64_bits_in_real_commands(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    big = "99999999999999999999"
    code, err = gdlab("trainer.seed=" + big, f"hydra.run.dir={tmp_path / 'a'}", capfd=capfd)
    assert code == 2 and err.strip().splitlines() == [
        f"gdlab: error: trainer.seed={big} must be an integer from -2**63 to 2**64-1 "
        "(a 64-bit generator seed)"
    ]
    # a population sweep over seeds: the bad member is failed with that line, the others train
    code, err = gdlab(
        "-m",
        "hydra/sweeper=population",
        f"trainer.seed=0,{big}",
        "trainer.steps=5",
        "logger=none",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        capfd=capfd,
    )
    assert code == 1 and "Traceback" not in err and "Overflow" not in err
    (record,) = (tmp_path / "sweep").glob("*/population.json")
    members = json.loads(record.read_text())
    assert members["status"] == ["finished", "failed"]
    assert members["error"][1].startswith(f"trainer.seed={big} must be an integer from")


# ---------------------------------------------------------------- 2. NaN and infinite floats


FLOAT_ROWS = [s for s in SETTINGS if s.kind is float and s.valid is not None]
#: rows where an infinity means something (no bound)
INFINITY_ALLOWED = {"trainer.divergence_bound"}


@pytest.mark.parametrize("setting", FLOAT_ROWS, ids=lambda s: s.key)
def test_no_float_setting_takes_nan(setting) -> None:
    message = setting.problem(math.nan)
    assert message is not None and message.startswith(f"{setting.key}=nan must be ")


@pytest.mark.parametrize("setting", FLOAT_ROWS, ids=lambda s: s.key)
def test_only_bounds_take_an_infinity(setting) -> None:
    allowed = setting.problem(math.inf) is None
    assert allowed == (setting.key in INFINITY_ALLOWED), setting.key
    assert setting.problem(-math.inf) is not None


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_trainer_tol_nan_or_inf_is_refused_not_convergence_off(value: str) -> None:
    with pytest.raises(GdlabError) as err:
        build_problem(compose_config([f"trainer.tol={value}"]))
    assert one_line(err) == (
        f"trainer.tol={value} must be a finite number >= 0 (0 turns convergence off)"
    )


# ---------------------------------------------------------------- 3. empty ranges


@pytest.mark.parametrize(
    "override",
    [
        "optimizer.lr=range(1,1)",  # batchable, empty
        "optimizer.lr=range(1,0,0.1)",  # counts away from stop
        "trainer.seed=range(5,2)",
        "trainer.steps=range(5,5)",  # fanned out: would launch no job
        "optimizer.momentum=shuffle(range(0.5,0.5,0.1))",
    ],
)
def test_an_empty_range_under_the_population_sweeper_is_one_line(override: str) -> None:
    with pytest.raises(GdlabError) as err:
        plan(override, "optimizer.lr=0.1,0.2" if "lr" not in override else "trainer.steps=3")
    line = one_line(err)
    assert line.startswith(f"hydra/sweeper=population: {override} is empty: range(start, stop")


@pytest.mark.parametrize("override", ["optimizer.lr=range(0.1,1,0)", "trainer.steps=range(1,9,0)"])
def test_a_zero_step_range_under_the_population_sweeper_is_one_line(override: str) -> None:
    with pytest.raises(GdlabError) as err:
        plan(override)
    assert (
        one_line(err) == f"hydra/sweeper=population: {override}: a range needs a non-zero step, "
        "range(start, stop, step)"
    )


def test_ranges_that_are_not_empty_still_plan_as_before() -> None:
    (job,) = plan("optimizer.lr=range(0.1,0.35,0.1)", "trainer.seed=range(3)")
    assert job.count == 9 and job.axes[0].values == pytest.approx([0.1, 0.2, 0.3])


@pytest.mark.slow
def test_an_empty_range_in_a_real_population_sweep(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, err = gdlab(
        "-m", "hydra/sweeper=population", "optimizer.lr=range(0.1,1,0)",
        f"hydra.sweep.dir={tmp_path / 's'}", capfd=capfd,
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "non-zero step" in err


# ---------------------------------------------------------------- 4. n_trials, n_jobs

OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
JOBLIB = "hydra_plugins.gdlab_launchers.joblib_launcher.JoblibLauncher"


def sweep_config(sweeper: dict | None = None, launcher: dict | None = None, **hydra) -> object:
    return OmegaConf.create(
        {"hydra": {"sweeper": sweeper or {}, "launcher": launcher or {}, **hydra}}
    )


@pytest.mark.parametrize(
    ("key", "value"), [("n_trials", 0), ("n_trials", -3), ("n_jobs", 0), ("n_trials", None)]
)
def test_optuna_n_trials_and_n_jobs_below_one_are_one_line(key: str, value: object) -> None:
    sweeper = {"_target_": OPTUNA, "n_trials": 20, "n_jobs": 1, key: value}
    with pytest.raises(GdlabError) as err:
        failures.check_sweep(sweep_config(sweeper))
    line = one_line(err)
    assert line.startswith(f"hydra.sweeper.{key}={value!r} is not allowed: ") and ">= 1" in line


def test_good_sweep_settings_and_other_sweepers_pass() -> None:
    failures.check_sweep(sweep_config({"_target_": OPTUNA, "n_trials": 1, "n_jobs": 4}))
    failures.check_sweep(sweep_config({"_target_": "BasicSweeper", "n_trials": 0}))
    for n_jobs in (None, 1, 2, -1, -2):
        check_n_jobs(n_jobs)
        failures.check_sweep(sweep_config(launcher={"_target_": JOBLIB, "n_jobs": n_jobs}))


@pytest.mark.parametrize("n_jobs", [0, "two", True])
def test_joblib_n_jobs_zero_is_one_line(n_jobs: object) -> None:
    with pytest.raises(GdlabError) as err:
        check_n_jobs(n_jobs)
    assert one_line(err).startswith(f"hydra.launcher.n_jobs={n_jobs!r} is not allowed: ")
    with pytest.raises(GdlabError):
        failures.check_sweep(sweep_config(launcher={"_target_": JOBLIB, "n_jobs": n_jobs}))


@pytest.mark.slow
def test_joblib_n_jobs_zero_in_a_real_sweep(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, err = gdlab(
        "-m", "optimizer.lr=0.1,0.2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0",
        f"hydra.sweep.dir={tmp_path / 's'}", capfd=capfd,
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err, err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("gdlab: error: hydra.launcher.n_jobs=0 is not allowed: ")
    )
    assert not list(tmp_path.glob("s/*/metrics.json"))  # no job ran


@pytest.mark.slow
def test_optuna_n_trials_zero_in_a_real_search(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Needs the sweep callback to call failures.optuna_start (on_multirun_start)."""
    code, err = gdlab(
        "hparams_search=optuna", "hydra.sweeper.n_trials=0", f"hydra.sweep.dir={tmp_path / 's'}",
        capfd=capfd,
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [
        "gdlab: error: hydra.sweeper.n_trials=0 is not allowed: the number of trials to run, "
        "an integer >= 1"
    ]


# ---------------------------------------------------------------- 5. an all-failed Optuna search


def optuna_records(*messages: str) -> list[logging.LogRecord]:
    """What the Optuna sweeper's logger lets through, in order, with gdlab's filter on it."""
    logger = logging.getLogger(failures.OPTUNA_LOGGER)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep, best = Keep(), failures.OptunaBest()
    logger.addHandler(keep)
    logger.addFilter(best)
    level, logger.level = logger.level, logging.INFO
    try:
        for message in messages:
            logger.info(message)
    finally:
        logger.removeFilter(best)
        logger.removeHandler(keep)
        logger.level = level
    return seen


def test_a_best_with_a_finite_value_is_logged_as_optuna_logs_it() -> None:
    lines = ["Study name: s", "Best parameters: {'optimizer.lr': 0.1}", "Best value: 0.25"]
    assert [r.getMessage() for r in optuna_records(*lines)] == lines


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_best_that_failed_is_not_logged_as_the_best(value: str) -> None:
    records = optuna_records("Study name: s", "Best parameters: {'a': 1}", f"Best value: {value}")
    assert [r.getMessage() for r in records] == ["Study name: s"]


def test_the_results_file_of_an_all_failed_search_says_there_is_no_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / failures.OPTUNA_RESULTS
    results.write_text("name: optuna\nbest_params:\n  optimizer.lr: 0.5\nbest_value: .inf\n")
    rows = [type("Row", (), {"status": "failed"})()] * 3
    summary = type("Summary", (), {"rows": rows})()
    config = sweep_config({"_target_": OPTUNA}, sweep={"dir": str(tmp_path)})
    line = failures.optuna_end(config, summary)
    assert (
        line == "gdlab: Optuna has no best trial: none of its 3 trials finished or converged "
        "(3 failed)"
    )
    assert capsys.readouterr().err.strip() == line
    written = yaml.safe_load(results.read_text())
    assert written["best_params"] is None and written["best_value"] is None
    # a search with a best keeps Optuna's file as it is
    results.write_text("name: optuna\nbest_params:\n  optimizer.lr: 0.5\nbest_value: 0.1\n")
    assert failures.optuna_end(config, summary) is None
    assert yaml.safe_load(results.read_text())["best_params"] == {"optimizer.lr": 0.5}


@pytest.mark.slow
def test_a_real_all_failed_search_reports_no_best(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Needs the sweep callback to call failures.optuna_start and optuna_end."""
    code, err = gdlab(
        "hparams_search=optuna", "hydra.sweeper.n_trials=2", "objective=linear_regression",
        "objective.batch_size=500", "logger=none", f"hydra.sweep.dir={tmp_path}", capfd=capfd,
    )  # fmt: skip
    assert code == 1, err  # failed jobs
    assert "Best parameters" not in err and "Best value" not in err
    assert (
        "gdlab: Optuna has no best trial: none of its 2 trials finished or converged "
        "(2 failed)" in err
    )
    results = yaml.safe_load((tmp_path / failures.OPTUNA_RESULTS).read_text())
    assert results["best_params"] is None and results["best_value"] is None


# ---------------------------------------------------------------- 6. Ctrl-C in a population job


def test_a_population_job_says_it_has_no_checkpoint_on_a_signal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gdlab.population.job import PopulationInterrupt

    interrupt = PopulationInterrupt()
    interrupt._handle(signal.SIGINT, None)
    err = capsys.readouterr().err
    assert interrupt.requested == signal.SIGINT and interrupt.exit_code == 130
    assert "saving a checkpoint" not in err
    assert "population jobs have no checkpoint" in err and "run the sweep again" in err


@pytest.mark.slow
def test_ctrl_c_in_a_real_population_job(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gdlab", "-m", "hydra/sweeper=population",
            "optimizer.lr=0.001,0.002", "trainer.steps=100000000", "logger=none",
            "hydra.sweeper.compile=false", f"hydra.sweep.dir={tmp_path}",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))
    reader.start()
    deadline = time.monotonic() + 60
    while not any("population of 2 on" in line for line in lines):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    reader.join(timeout=10)
    text = "".join(lines)
    assert "saving a checkpoint" not in text and "Traceback" not in text, text
    assert text.count("population jobs have no checkpoint") == 2  # on the signal, at the end
    (record,) = tmp_path.glob("*/population.json")
    assert json.loads(record.read_text())["status"] == ["interrupted"] * 2
    assert not list(tmp_path.glob("*/checkpoint.pt"))


# ---------------------------------------------------------------- 7. broken plugins in --help


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """gdlab's objectives plus the fake broken packages of tests/plugin_kit.py, and a preset
    of a plugin that selects a broken objective."""
    site = write_broken_plugins(tmp_path_factory.mktemp("broken-site"))
    preset = site / "broken_plugins" / "configs" / "objective" / "bad_far.yaml"
    preset.write_text("defaults:\n  - bad_import\n  - _self_\nx0: 3.0\n")
    sys.path.insert(0, str(site))

    def eps(group: str) -> list:
        found = distributions(path=[str(site)])
        return [ep for d in found for ep in d.entry_points if ep.group == group]

    own = [ep for ep in entry_points(group="gdlab.objectives") if ep.dist.name == "gdlab"]
    yield discover(own + eps("gdlab.objectives"), eps("gdlab.configs"))
    sys.path.remove(str(site))
    for name in [m for m in sys.modules if m.startswith(("broken_plugins", "twin_plugin"))]:
        del sys.modules[name]


def test_help_lists_broken_plugins_only_among_those_that_cannot_be_used(broken: Registry) -> None:
    text = nodes.objectives_help(config_dir(), broken)
    usable, unusable = text.split("== Objectives that cannot be used ==")
    for name in ("bad_import", "no_loss", "not_a_class", "twin", "bad_far"):
        assert f"  {name} " not in usable and name not in usable.split("presets (YAML):")[-1]
        assert f"objective {name!r}" in unusable or f"objective preset {name!r}" in unusable
    assert "  good " in usable and "good_far" in usable  # what works stays listed
    assert "objective preset 'bad_far'" in unusable and "cannot import it" in unusable
    for line in filter(None, unusable.splitlines()):  # one line each, with the reason
        assert line.startswith(("  objective ", "  config folder ")), line
    assert nodes.unusable_names(config_dir(), broken) >= {"bad_import", "no_loss", "bad_far"}
    assert not nodes.unusable_names(config_dir(), broken) & {"good", "good_far", "quadratic"}


# ---------------------------------------------------------------- 8. memory


def test_sizes_in_words_and_back() -> None:
    assert memory.parse_size("3G") == 3 * 2**30
    assert memory.parse_size("512MiB") == 512 * 2**20
    assert memory.parse_size("1.5k") == 1536 and memory.parse_size("1000") == 1000
    with pytest.raises(GdlabError) as err:
        memory.parse_size("lots")
    assert one_line(err).startswith("GDLAB_MEMORY_LIMIT='lots' is not a size")
    assert memory.format_bytes(1536) == "1.5 KiB" and memory.format_bytes(5 * 2**40) == "5 TiB"


def test_meminfo_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683584 kB\nMemAvailable:    1048576 kB\n")
    assert memory.meminfo_available(meminfo).bytes == 2**30
    monkeypatch.setenv(memory.ENV, "3G")
    assert memory.available() == memory.Available(3 * 2**30, "GDLAB_MEMORY_LIMIT=3G")
    monkeypatch.setenv(memory.ENV, "off")
    assert memory.available() is None and memory.available_bytes() is None
    monkeypatch.delenv(memory.ENV)
    assert memory.available_bytes() > 0  # this machine's own


def write_files(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)


def test_a_cgroup_v2_limit_counts_minus_its_usage(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice/job\n")
    write_files(
        tmp_path / "fs",
        {
            "cgroup.controllers": "memory",
            "user.slice/memory.max": "max\n",
            "user.slice/job/memory.max": str(3 * 2**30),
            "user.slice/job/memory.current": str(2**30 + 2**28),
            "user.slice/job/memory.stat": f"anon 1\ninactive_file {2**28}\n",
        },
    )
    found = memory.cgroup_available(proc, tmp_path / "fs")
    assert found.bytes == 2 * 2**30  # 3 GiB - (1.25 GiB - 0.25 GiB of droppable cache)
    assert "cgroup limit 3 GiB" in found.source and "memory.max" in found.source
    # inside a container the cgroup's path does not exist below the mount: the root counts
    proc.write_text("0::/elsewhere\n")
    write_files(tmp_path / "fs", {"memory.max": str(2**30), "memory.current": "0"})
    assert memory.cgroup_available(proc, tmp_path / "fs").bytes == 2**30


def test_a_cgroup_v1_limit_and_no_limit(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("9:name=systemd:/\n4:memory:/box\n0::/\n")
    write_files(
        tmp_path / "fs",
        {
            "memory/memory.limit_in_bytes": "9223372036854771712",  # no limit
            "memory/box/memory.limit_in_bytes": str(2**31),
            "memory/box/memory.usage_in_bytes": str(2**30),
            "memory/box/memory.stat": "cache 5\ntotal_inactive_file 0\n",
        },
    )
    assert memory.cgroup_available(proc, tmp_path / "fs").bytes == 2**30
    (tmp_path / "fs" / "memory" / "box" / "memory.limit_in_bytes").write_text("9223372036854771712")
    assert memory.cgroup_available(proc, tmp_path / "fs") is None


def test_footprints_come_from_the_config_before_the_objective_exists() -> None:
    big = LinearRegression.memory_footprint({"n_samples": 10**10}, 4)
    assert big.data == 10**10 * 2 * 4 and big.params == 2 and big.n_samples == 10**10
    assert Rosenbrock.memory_footprint({"n": 10**11}, 8).params == 10**11
    assert Rosenbrock.memory_footprint({"x0": [0.0] * 5}, 8).params == 5
    net = MLP.memory_footprint({"widths": [128, 128]}, 4)  # the class's defaults fill the rest
    assert net.params == MLP().n_params
    # a field the constructor will refuse: no estimate, the constructor's own line instead
    assert memory.footprint(LinearRegression, {"n_samples": "many"}, 4) is None
    assert memory.footprint(object, {}, 4) is None  # a plugin that declares nothing


def test_a_run_that_cannot_fit_is_one_line_before_anything_is_allocated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(memory.ENV, "1M")
    cfg = compose_config(["objective=linear_regression", "objective.n_samples=1000000"])
    with pytest.raises(GdlabError) as err:
        build_problem(cfg)
    line = one_line(err)
    assert line.startswith(
        "objective=linear_regression (objective.n_samples=1000000, objective.n_features=1, "
        "float32) needs about "
    )
    assert "more than the 1 MiB available (GDLAB_MEMORY_LIMIT=1M)" in line
    monkeypatch.setenv(memory.ENV, "off")
    assert build_problem(cfg).objective.X.shape == (10**6, 1)


def test_a_population_that_cannot_fit_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(memory.ENV, "64M")
    cfg = compose_config(["objective=rosenbrock", "objective.n=10000"])
    check_population_memory(cfg, 10)  # 10 members of 10,000 numbers: a few MiB
    with pytest.raises(GdlabError) as err:
        check_population_memory(cfg, 1000)
    assert one_line(err).startswith(
        "a population of 1,000 members of objective=rosenbrock (objective.n=10000, float32) "
        "needs about "
    )
    with pytest.raises(GdlabError):  # members alone, whatever the objective
        check_population_memory(compose_config(), 10**6)


def test_a_population_sweep_too_large_to_list_is_refused_before_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(memory.ENV, "1G")
    start = time.perf_counter()
    with pytest.raises(GdlabError) as err:
        plan("optimizer.lr=range(1e-12,1,1e-12)", "trainer.seed=0,1")
    assert time.perf_counter() - start < 5  # no trillion values were listed
    line = one_line(err)  # Hydra's float range: ~10^12 values, counted in decimals
    assert line.startswith("hydra/sweeper=population: 2,000,000,000,000 settings need about ")
    assert "PiB of memory" in line and "GDLAB_MEMORY_LIMIT=1G" in line


def test_a_cuda_run_is_checked_against_the_devices_free_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(memory.ENV, "100G")
    monkeypatch.setattr(
        memory, "device_available", lambda device: memory.Available(2**30, "free on cuda")
    )
    need = memory.Need(host=2**20, device=2**31)
    with pytest.raises(GdlabError) as err:
        memory.check("objective=x (float32)", need, torch.device("cuda"))
    assert "needs about 2 GiB of cuda memory, more than the 1 GiB available (free on cuda)" in (
        one_line(err)
    )
    memory.check("objective=x (float32)", need, torch.device("cpu"))  # 2 GiB < 100 GiB


def run_measured(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[int, str, int]:
    """`gdlab ARGS` in a subprocess: exit code, stderr and its peak resident memory in KiB
    (os.wait4: that process alone)."""
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gdlab", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **env},
            cwd=tmp_path,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err_path.read_text(), usage.ru_maxrss


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "limit", "expected"),
    [
        (("objective=linear_regression", "objective.n_samples=10000000000"), None,
         "objective=linear_regression (objective.n_samples=10000000000, objective.n_features=1, "
         "float32) needs about "),
        (("objective=rosenbrock", "objective.n=100000000000"), None,
         "objective=rosenbrock (objective.n=100000000000, float32) needs about "),
        # about 5 GiB of data in a 3 GiB limit
        (("objective=linear_regression", "objective.n_samples=130000000"), "3G",
         "objective=linear_regression (objective.n_samples=130000000, objective.n_features=1, "
         "float32) needs about "),
    ],
)  # fmt: skip
def test_the_memory_examples_end_in_one_line_at_once(
    tmp_path: Path, args: tuple[str, ...], limit: str | None, expected: str
) -> None:
    env = {memory.ENV: limit} if limit else {}
    start = time.monotonic()
    code, err, peak_kib = run_measured(tmp_path, *args, "hydra.run.dir=run", env=env)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"gdlab: error: {expected}") and "GiB" in lines[0]
    assert time.monotonic() - start < 30  # no hang
    assert peak_kib < 1024 * 1024  # under 1 GiB: Python, torch and Hydra, nothing allocated
