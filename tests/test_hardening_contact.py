"""First contact (issue 15): gdlab's own --help, gdlab-check's help and its NaN losses,
gdlab-report on files, read-only sweeps and folders of sweeps, the plugin page's pyproject, and
outputs that say the same thing everywhere."""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gdlab.errors import GdlabError
from gdlab.experiment import run_experiment
from gdlab.sinks.console import display_path, summary_line
from gdlab.sweeps.summary import SweepTable, markdown_table
from tests.conftest import REPO, compose_config, run_cli
from tests.plugin_kit import env_with, write_broken_plugins
from tests.test_sweep import make_job

# --------------------------------------------------------------------------- gdlab --help


def gdlab_help(capsys: pytest.CaptureFixture[str]) -> str:
    from gdlab import cli

    assert cli.main(["--help"]) == 0
    return capsys.readouterr().out


def group_lines(text: str) -> dict[str, str]:
    """The `== Config groups ==` section: group -> its options (wrapped lines joined)."""
    section = text.split("== Config groups ==")[1].split("\n\n")[0]
    groups: dict[str, str] = {}
    last = None
    for line in section.splitlines()[1:]:
        match = re.match(r"  (\S+)\s+(.*)", line)
        if match and not line.startswith("   "):
            last = match.group(1)
            groups[last] = match.group(2)
        elif last is not None:
            groups[last] += " " + line.strip()
    return groups


def test_gdlab_help_is_gdlabs_own(capsys: pytest.CaptureFixture[str]) -> None:
    text = gdlab_help(capsys)
    assert "is powered by Hydra" not in text and "== Config ==" not in text  # Hydra's generic
    intro = text.split("== Examples ==")[0].strip().splitlines()
    assert len(intro) == 2 and "gradient descent" in intro[0]
    examples = text.split("== Examples ==")[1].split("== Config groups ==")[0]
    commands = [line.split("#")[0].strip() for line in examples.splitlines() if line[:8].strip()]
    commands = [c for c in commands if c.startswith(("gdlab", "tensorboard"))]
    assert len(commands) >= 5
    assert any(c.startswith("gdlab -m") for c in commands)
    assert any("hydra/sweeper=population" in c for c in commands)
    assert any(c.startswith("tensorboard --logdir") for c in commands)
    groups = group_lines(text)
    assert {"objective", "optimizer", "trainer", "device", "logger", "experiment"} <= set(groups)
    assert groups["optimizer"] == "adagrad, adam, adamw, rmsprop, sgd"  # no schemas, no race parts
    assert "rosenbrock" in groups["objective"] and "saddle" in groups["objective"]
    assert "optuna" in groups["hparams_search"] and "sharpness.every" in groups["sharpness"]
    sweeps = text.split("== Sweeps ==")[1].split("== Outputs ==")[0]
    for option in ("basic", "population", "optuna"):
        assert f"hydra/sweeper={option} " in sweeps
    assert "hparams_search=optuna" in sweeps
    for launcher in ("basic", "joblib", "ray", "slurm", "submitit_local"):
        assert f"hydra/launcher={launcher} " in sweeps
    outputs = text.split("== Outputs ==")[1]
    assert "outputs/<date>/<time>-<pid>/" in outputs and "outputs/multirun/" in outputs
    docs = text.split("== Docs ==")[1].split("\n")[0].strip()
    assert Path(docs).is_dir() and (Path(docs) / "plugins.md").is_file()
    assert "plugins.md" in text and "sweeps.md" in text
    assert "== Objectives ==" in text and "[gdlab]" in text  # the objectives section, as before
    assert len(text.splitlines()) < 90  # about a screen and a half


@pytest.mark.slow
def test_gdlab_help_lists_plugins_among_the_options_and_broken_ones_apart(
    tmp_path: Path,
) -> None:
    site = write_broken_plugins(tmp_path / "site")
    proc = run_cli("--help", env=env_with(site))
    assert proc.returncode == 0, proc.stderr
    objectives = group_lines(proc.stdout)["objective"].split(", ")
    assert {"good", "good_far", "quadratic"} <= set(objectives)  # a plugin and its preset
    for broken in ("bad_import", "no_loss", "not_a_class"):
        assert broken not in objectives
        assert f"objective {broken!r}" in proc.stdout.split("cannot be used")[1]


# --------------------------------------------------------------------------- gdlab-check


def check_main(*argv: str) -> int:
    from gdlab.check import main

    return main(list(argv))


def test_gdlab_check_help_explains_its_keys_and_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert check_main("--help", "check.points=7") == 0
    text = capsys.readouterr().out
    for key in ("points", "seed", "scale", "rtol", "atol", "fd_eps", "fd_rtol", "fd_atol"):
        assert f"  check.{key} " in text
    assert "(now 7)" in text  # the value this command line gives
    codes = text.split("== Exit codes ==")[1]
    for code in ("0", "1", "2"):
        assert re.search(rf"^  {code}  \S", codes, re.M), codes
    # not gdlab's whole config: no trainer or optimizer settings dumped
    for unrelated in ("divergence_bound", "momentum", "checkpoint_every", "== Config =="):
        assert unrelated not in text
    assert len(text.splitlines()) < 60


class NanLoss:
    def init_params(self, generator, device, dtype):
        return {"x": torch.ones(2, device=device, dtype=dtype)}

    def loss(self, params):
        return (params["x"] * float("nan")).sum()


class InfAwayFromStart:
    """Finite at the start, infinite at every random point."""

    def init_params(self, generator, device, dtype):
        return {"x": torch.zeros(1, device=device, dtype=dtype)}

    def loss(self, params):
        x = params["x"]
        if bool((x == 0).all()):
            return (x**2).sum()
        return (x.abs() * math.inf).sum()

    def grad(self, params):
        return {"x": 2 * params["x"]}


class SqrtAtZero:
    """A finite loss whose gradient is infinite at the start."""

    def init_params(self, generator, device, dtype):
        return {"x": torch.zeros(1, device=device, dtype=dtype)}

    def loss(self, params):
        return params["x"].abs().sqrt().sum() + 1.0


def check_target(target: str, *overrides: str) -> list[str]:
    return ["~objective", f"+objective._target_=tests.test_hardening_contact.{target}", *overrides]


@pytest.mark.parametrize(("target", "value"), [("NanLoss", "nan"), ("InfAwayFromStart", "inf")])
def test_gdlab_check_says_the_loss_itself_is_not_finite(
    capsys: pytest.CaptureFixture[str], target: str, value: str
) -> None:
    assert check_main(*check_target(target, "check.points=2")) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"gdlab-check: the loss itself is {value} at point")
    assert "'random 1'" in lines[0] and "'random 2'" in lines[0] and "x=" in lines[0]
    assert "by nan" not in err and "Traceback" not in err
    if target == "NanLoss":
        assert "'start'" in lines[0] and len(lines) == 1, err
    else:  # finite at the start, but not a finite-difference step away: said as such
        assert "'start'" not in lines[0] and len(lines) == 2, err
        assert "point 'start'" in lines[1] and "a finite-difference step away" in lines[1]
    assert "OK" not in out


def test_gdlab_check_names_a_gradient_that_is_not_finite(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert check_main(*check_target("SqrtAtZero", "check.points=1")) == 1
    err = capsys.readouterr().err
    assert "autograd's gradient is not finite" in err and "point 'start'" in err
    assert "by nan" not in err


def test_gdlab_check_names_a_preset_by_its_own_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main("objective=saddle", "check.points=0") == 0
    assert capsys.readouterr().out.startswith("gdlab-check: saddle, a preset of multivariate (")


# --------------------------------------------------------------------------- gdlab-report


def report_main(*argv: str) -> int:
    from gdlab.report import main

    return main(list(argv))


QUICK = ["logger.plots=false", "logger.tensorboard=false", "trainer.steps=5"]


def make_sweep(sweep_dir: Path, lrs: tuple[str, ...], marker: bool = True) -> Path:
    sweep_dir.mkdir(parents=True)
    if marker:  # as Hydra's sweepers leave a sweep directory
        OmegaConf.save(OmegaConf.create({"hydra": {}}), sweep_dir / "multirun.yaml")
    for num, lr in enumerate(lrs):
        make_job(sweep_dir, [f"optimizer.lr={lr}", *QUICK], num)
    return sweep_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path / "sweep", ("0.1", "0.5"))


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_report_on_a_file_says_it_is_a_file(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_main(str(sweep), "--no-plot")
    capsys.readouterr()
    other = tmp_path / "notes.txt"
    other.write_text("x")
    for path, hint in ((other, "give a sweep directory"), (sweep / "summary.csv", str(sweep))):
        assert report_main(str(path)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert f"{path} is a file, not a sweep directory" in lines[0] and hint in lines[0]
        assert "no such directory" not in lines[0]


def test_report_where_summary_csv_is_a_folder_prints_the_table(
    sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (sweep / "summary.csv").mkdir()
    assert report_main(str(sweep), "--no-plot") == 1
    out, err = capsys.readouterr()
    assert "| rank |" in out and "2 runs" in out  # the table, all the same
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "could not write" in lines[0] and "summary.csv" in lines[0] and str(sweep) in lines[0]
    assert (sweep / "summary.csv").is_dir() and (sweep / "summary.md").is_file()
    assert not [p for p in sweep.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def read_only_copy(sweep: Path, tmp_path: Path):
    """The sweep on a tmpfs remounted read-only; skipped where the tests cannot mount one."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a read-only tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)])
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        shutil.copytree(sweep, mount / "sweep")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount / "sweep"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_report_on_a_read_only_sweep_prints_the_table(
    read_only_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report_main(str(read_only_copy)) == 1
    out, err = capsys.readouterr()
    assert "| rank |" in out and "| 0.1 |" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "could not write" in lines[0] and "Read-only file system" in lines[0]
    assert "summary.csv" in lines[0] and "summary.md" in lines[0]


@pytest.mark.parametrize("marker", [True, False])
def test_report_on_a_folder_of_sweeps_reports_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], marker: bool
) -> None:
    day = tmp_path / "multirun" / "2026-11-26"
    first = make_sweep(day / "08-00-00-1", ("0.1", "0.5"), marker)
    second = make_sweep(day / "09-00-00-2", ("0.2", "0.3", "0.4"), marker)
    if marker:  # a merged table an older gdlab-report left there changes nothing
        (day / "summary.csv").write_text("stale\n")
    assert report_main(str(day), "--no-plot") == 0
    out = capsys.readouterr().out
    assert "holds 2 sweeps" in out
    assert f"gdlab: sweep {first}: 2 runs" in out and f"gdlab: sweep {second}: 3 runs" in out
    # never one merged table
    assert not (day / "summary.md").exists()
    if marker:
        assert (day / "summary.csv").read_text() == "stale\n"
    else:
        assert not (day / "summary.csv").exists()
    for folder, lrs in ((first, {0.1, 0.5}), (second, {0.2, 0.3, 0.4})):
        rows = read_csv(folder / "summary.csv")
        assert {float(r["optimizer.lr"]) for r in rows} == lrs
        assert all("/" not in r["job"] for r in rows)

    import gdlab

    with pytest.raises(GdlabError, match="holds 2 sweeps, not one") as err:
        gdlab.load_sweep(day)
    assert str(first) in str(err.value) and str(second) in str(err.value)
    assert len(gdlab.load_sweep(first).rows) == 2


# --------------------------------------------------------------------------- docs/plugins.md

PLUGINS_MD = REPO / "docs" / "plugins.md"


def fenced_after(text: str, marker: str, language: str) -> str:
    """The first ```language block after `marker` in `text`."""
    rest = text[text.index(marker) :]
    match = re.search(rf"```{language}\n(.*?)```", rest, re.S)
    assert match is not None, marker
    return match.group(1)


def test_plugins_page_gives_the_example_pyproject_whole() -> None:
    text = PLUGINS_MD.read_text()
    pyproject = fenced_after(text, "`pyproject.toml`, complete", "toml")
    assert pyproject == (REPO / "examples" / "gdlab-booth" / "pyproject.toml").read_text()
    assert "[build-system]" in pyproject and "hatchling" in pyproject
    assert "Install gdlab first" in text and "scripts/setup.sh" in text


@pytest.mark.slow
def test_the_documented_plugin_builds_a_wheel_with_its_presets(tmp_path: Path) -> None:
    """The files docs/plugins.md shows, written out as a user would, build (offline) a wheel
    that holds the YAML preset, and gdlab finds the preset once the wheel is installed."""
    text = PLUGINS_MD.read_text()
    project = tmp_path / "my-plugin"
    package = project / "src" / "gdlab_booth"
    files = {
        project / "pyproject.toml": fenced_after(text, "`pyproject.toml`, complete", "toml"),
        package / "__init__.py": "",
        package / "booth.py": fenced_after(text, "`src/gdlab_booth/booth.py`", "python"),
        package / "configs" / "objective" / "booth_far_start.yaml": fenced_after(
            text, "`src/gdlab_booth/configs/objective/booth_far_start.yaml`", "yaml"
        ),
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    wheels = tmp_path / "wheels"
    subprocess.run([*pip, "wheel", *offline, "-w", str(wheels), str(project)], check=True)
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gdlab_booth/configs/objective/booth_far_start.yaml" in names
    assert "gdlab_booth/booth.py" in names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", *offline, "--target", str(site), str(wheel)], check=True)
    proc = subprocess.run(
        [sys.executable, "-m", "gdlab.check", "objective=booth_far_start", "check.points=0"],
        env=env_with(site),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("gdlab-check: booth_far_start, a preset of booth (package ")


# --------------------------------------------------------------------------- output consistency


def test_summary_csv_has_one_lr_column(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    make_job(sweep_dir, ["optimizer.lr=0.2", *QUICK], 0)
    make_job(sweep_dir, ["optimizer.momentum=0.5", *QUICK], 1)  # lr from the config: 0.1
    assert report_main(str(sweep_dir), "--no-plot") == 0
    header = (sweep_dir / "summary.csv").read_text().splitlines()[0].split(",")
    assert header.count("optimizer.lr") == 1 and "lr" not in header
    assert header[:4] == ["rank", "job", "overrides", "optimizer.lr"]
    rows = {r["overrides"].split()[0]: r for r in read_csv(sweep_dir / "summary.csv")}
    assert float(rows["optimizer.lr=0.2"]["optimizer.lr"]) == 0.2
    assert float(rows["optimizer.momentum=0.5"]["optimizer.lr"]) == 0.1

    table = (sweep_dir / "summary.md").read_text()  # the lr used, also where not swept
    assert "| 0.1 | 0.5 |" in table and "| 0.2 |  |" in table


def test_api_rows_have_one_lr_key(tmp_path: Path) -> None:
    import gdlab

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    make_job(sweep_dir, ["optimizer.lr=0.2", *QUICK], 0)
    make_job(sweep_dir, ["optimizer.momentum=0.5", *QUICK], 1)
    rows = gdlab.load_sweep(sweep_dir).rows
    assert all("lr" not in r for r in rows)
    assert sorted(r["optimizer.lr"] for r in rows) == [0.1, 0.2]
    assert report_main(str(sweep_dir), "--no-plot") == 0
    header = (sweep_dir / "summary.csv").read_text().splitlines()[0].split(",")
    assert list(rows[0]) == header  # keyed like summary.csv's columns, in its order


def test_a_population_members_wall_time_is_its_share_not_zero() -> None:
    from gdlab.sweeps.jobs import JobRow

    rows = [
        JobRow(job=f"+population=0#{i}", num=0, overrides=[], status="finished", steps=5)
        for i in range(2)
    ]
    for row in rows:
        row.wall_time_s = 3.2e-5  # a job of 0.064 s over 2,000 members
    text = markdown_table(SweepTable.from_rows(rows))
    assert "wall time (s, per member)" in text.splitlines()[0]
    assert "| 3.2e-05 |" in text and "0.000" not in text
    plain = JobRow(job="a", num=0, overrides=[], status="finished", steps=5, wall_time_s=0.0123)
    text = markdown_table(SweepTable.from_rows([plain]))
    assert "wall time (s) |" in text.splitlines()[0] and "| 0.0123 |" in text


def test_a_distance_that_is_not_finite_reads_the_same_on_the_console_and_in_the_table(
    tmp_path: Path,
) -> None:
    overrides = ["optimizer.lr=1e38", *QUICK]  # x is inf after one step
    cfg = compose_config(["trainer.progress=false", *overrides])
    result = run_experiment(cfg, tmp_path / "run")
    assert result.status == "diverged" and not math.isfinite(result.distance_to_minimizer)
    line = summary_line(result)
    assert "distance to minimiser" not in line and "excess loss" not in line
    assert "loss inf" in line
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    make_job(sweep_dir, ["optimizer.lr=0.1", *QUICK], 0)
    make_job(sweep_dir, overrides, 1)
    assert report_main(str(sweep_dir), "--no-plot") == 0
    lines = (sweep_dir / "summary.md").read_text().splitlines()
    header_line = next(row for row in lines if row.startswith("| rank"))
    header = [c.strip() for c in header_line.strip("|").split("|")]
    diverged = next(row for row in lines if "| diverged |" in row)
    cells = [c.strip() for c in diverged.strip().strip("|").split("|")]
    assert cells[header.index("distance to min")] == ""  # blank, as the console leaves it out
    assert cells[header.index("excess loss")] == ""
    assert cells[header.index("final loss")] == "inf"


def test_run_directory_is_shown_as_the_docs_show_it(tmp_path: Path) -> None:
    inside = tmp_path / "outputs" / "2026-11-26" / "08-22-01-2871"
    assert display_path(inside, cwd=tmp_path) == "outputs/2026-11-26/08-22-01-2871"
    elsewhere = tmp_path.parent / "other"
    assert display_path(elsewhere, cwd=tmp_path) == str(elsewhere)
