"""Objective plugins: discovery by entry point, generated config nodes, presets, clear failures.

Fast tests discover from hand-written distributions in a temporary folder; the slow ones run
the real `gdlab` with those folders, and with the example plugin under examples/ pip-installed
into a --target folder, on PYTHONPATH.
"""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import distributions
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf, open_dict

from gdlab.config import config_dir
from gdlab.errors import GdlabError
from gdlab.experiment import build, objective_name
from gdlab.objectives import nodes
from gdlab.objectives.instantiate import build_objective
from gdlab.objectives.registry import Registry, discover, registry, use_registry
from gdlab.plugin_configs import gdlab_config_dir, plugin_config_dirs
from hydra_plugins.gdlab_objectives.searchpath import is_gdlab_search_path
from tests.conftest import REPO, run_cli
from tests.plugin_kit import EXAMPLE, env_with, install_example, write_broken_plugins

ZEROS = torch.zeros(2)
BUILT_INS = {
    "quadratic",
    "multivariate",
    "linear_regression",
    "matrix",
    "rosenbrock",
    "himmelblau",
    "rastrigin",
    "beale",
}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The fake plugin packages, importable for the whole module, removed afterwards."""
    site = write_broken_plugins(tmp_path_factory.mktemp("broken-site"))
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))
    for name in [m for m in sys.modules if m.startswith(("broken_plugins", "twin_plugin"))]:
        del sys.modules[name]


def eps_in(site: Path, group: str) -> list:
    return [
        ep for d in distributions(path=[str(site)]) for ep in d.entry_points if ep.group == group
    ]


@pytest.fixture
def broken_registry(broken_site: Path) -> Registry:
    """gdlab's own entry points plus the fake packages', as one installation would see them."""
    own = [ep for ep in registry_eps() if ep.dist.name == "gdlab"]
    return discover(
        own + eps_in(broken_site, "gdlab.objectives"), eps_in(broken_site, "gdlab.configs")
    )


def registry_eps() -> list:
    from importlib.metadata import entry_points

    return list(entry_points(group="gdlab.objectives"))


@pytest.fixture
def clean_store() -> Iterator[ConfigStore]:
    """Let a test store objective nodes in Hydra's ConfigStore; restore the group afterwards.

    Only the `objective` group: Hydra stores its own nodes (hydra/sweeper/basic, ...) the first
    time it scans its plugins, which may happen during the test, and those must stay.
    """
    store = ConfigStore.instance()
    saved = copy.copy(store.repo.get("objective", {}))
    yield store
    store.repo["objective"] = saved


@pytest.fixture
def with_broken(broken_registry: Registry, clean_store: ConfigStore) -> Iterator[Registry]:
    """The fake packages installed: registry swapped and their config nodes stored."""
    with use_registry(broken_registry):
        nodes.register_objective_configs(config_dir(), broken_registry, clean_store)
        yield broken_registry


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=["trainer.progress=false", *overrides])


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------- discovery


def test_builtins_come_from_gdlabs_own_entry_points() -> None:
    reg = registry()
    assert set(reg.names()) >= BUILT_INS
    for name in BUILT_INS:
        entry = reg.get(name)
        assert entry.package == "gdlab" and entry.problem is None
        assert entry.value.startswith("gdlab.objectives.")
    assert not [p for p in reg.problems if "package gdlab," in p]


@pytest.mark.parametrize("name", ["quadratic", "multivariate", "linear_regression", "matrix"])
def test_generated_node_has_the_same_fields_as_the_builtin_yaml(name: str) -> None:
    """The YAML files of the first built-ins are presets over what the registry would generate."""
    generated = OmegaConf.structured(nodes.config_node(registry().get(name)))
    written = yaml.safe_load((Path(config_dir()) / "objective" / f"{name}.yaml").read_text())
    assert set(generated) == set(written)
    assert generated._target_ == written["_target_"]


def test_classic_objectives_use_generated_nodes_with_typed_fields() -> None:
    for name in ("rosenbrock", "himmelblau", "rastrigin", "beale"):
        assert not (Path(config_dir()) / "objective" / f"{name}.yaml").exists()
    cfg = compose_with("objective=rosenbrock", "objective.n=4", "objective.x0=null")
    assert cfg.objective.n == 4 and cfg.objective.b == 100.0
    assert cfg.objective._target_ == "gdlab.objectives.rosenbrock.Rosenbrock"
    with pytest.raises(Exception, match=r"objective\.n"):
        compose_with("objective=rosenbrock", "objective.n=four")
    with pytest.raises(Exception, match="x0"):
        compose_with("objective=himmelblau", "objective.x0=abc")
    with pytest.raises(Exception, match="typo"):
        compose_with("objective=beale", "objective.typo=1")


def test_node_types_follow_the_annotations() -> None:
    class Annotated:
        def __init__(
            self,
            n: int,
            scale: float = 1.0,
            flag: bool = False,
            label: str | None = None,
            x0: tuple[float, float] = (1.0, 2.0),
            weights: dict[str, float] | None = None,
            anything=3,  # no annotation: Any
            *args: float,
            **kwargs: float,
        ) -> None: ...

    fields = {name: (typ, f) for name, typ, f in nodes.config_fields(Annotated)}
    assert list(fields) == ["n", "scale", "flag", "label", "x0", "weights", "anything"]
    cfg = OmegaConf.structured(
        nodes.config_node(nodes.ObjectiveEntry("annotated", "pkg", "m:Annotated", Annotated))
    )
    assert OmegaConf.is_missing(cfg, "n")
    assert cfg.x0 == [1.0, 2.0] and cfg.scale == 1.0 and cfg.label is None
    cfg.n = "3"  # converted by the type
    assert cfg.n == 3
    for key, bad in [("n", "x"), ("scale", "fast"), ("x0", ["a"]), ("flag", "maybe")]:
        with pytest.raises(Exception):  # noqa: B017 (OmegaConf's ValidationError family)
            cfg[key] = bad
    cfg.anything = "text"  # Any: the constructor checks it


def test_a_default_no_config_can_hold_is_left_to_the_constructor() -> None:
    class TensorDefault:
        def __init__(self, start: torch.Tensor = ZEROS, lr: float = 0.1) -> None: ...

    assert [name for name, _, _ in nodes.config_fields(TensorDefault)] == ["lr"]


def test_a_class_is_found_under_its_entry_point_path_and_its_own() -> None:
    """`pkg:Good` re-exported from `pkg/__init__.py`: both paths name the same entry."""
    reg = Registry(entries={"good": nodes.ObjectiveEntry("good", "pkg", "pkg:Good", CpuLoss)})
    assert reg.for_target("pkg.Good").name == "good"
    assert reg.for_target("tests.test_plugins.CpuLoss").name == "good"
    assert reg.for_class(CpuLoss).name == "good"
    assert reg.for_target("tests.test_plugins.Other") is None


# ---------------------------------------------------------------- failures, one line each


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("bad_import", "cannot import it: ModuleNotFoundError: No module named"),
        ("no_loss", "class NoLoss has no loss method"),
        ("not_a_class", "it points at int 42, not a class"),
    ],
)
def test_broken_entry_points_name_package_entry_point_and_problem(
    broken_registry: Registry, name: str, what: str
) -> None:
    with pytest.raises(GdlabError) as err:
        broken_registry.get(name)
    line = one_line(err)
    assert f"objective {name!r}" in line
    assert "package gdlab-broken-plugins" in line
    assert f"entry point {name} = broken_plugins." in line
    assert what in line
    assert line in broken_registry.problems


def test_two_packages_claiming_a_name_are_both_named(broken_registry: Registry) -> None:
    with pytest.raises(GdlabError) as err:
        broken_registry.get("twin")
    line = one_line(err)
    assert "gdlab-broken-plugins (twin = broken_plugins.objectives:Good)" in line
    assert "gdlab-twin (twin = twin_plugin:Twin)" in line
    assert "uninstall one" in line


def test_a_plugin_cannot_take_a_builtin_name(broken_registry: Registry) -> None:
    assert broken_registry.get("quadratic").package == "gdlab"
    [line] = [p for p in broken_registry.problems if "'quadratic'" in p]
    assert "package gdlab-broken-plugins" in line and "ignored" in line


def test_the_other_objectives_keep_working(broken_registry: Registry) -> None:
    assert broken_registry.get("good").cls.__name__ == "Good"
    assert {e.name for e in broken_registry.usable()} >= BUILT_INS | {"good", "needs_scale"}


def test_a_config_folder_that_cannot_be_found_is_a_problem(broken_site: Path) -> None:
    folders = {
        d.entry_point.split(" ")[0]: d
        for d in plugin_config_dirs(eps_in(broken_site, "gdlab.configs"))
    }
    assert folders["broken_plugins"].path == broken_site / "broken_plugins" / "configs"
    gone = folders["gone"]
    assert gone.path is None and "no_such_package" in gone.describe_problem()
    assert "package gdlab-broken-plugins" in gone.describe_problem()


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("vector_loss", "loss returned a tensor of shape (2,); it must be a scalar"),
        ("meta_loss", "loss returned a tensor on meta, but the run's device is cpu"),
    ],
)
def test_a_bad_loss_is_refused_before_the_first_step(
    with_broken: Registry, name: str, what: str
) -> None:
    cfg = compose_with(f"objective={name}")
    with pytest.raises(GdlabError) as err:
        build(cfg)
    line = one_line(err)
    assert f"objective {name!r} (package gdlab-broken-plugins, entry point {name} = " in line
    assert what in line


class CpuLoss:
    """Computes its loss on the CPU whatever the run's device: refused on a GPU run."""

    def init_params(self, generator, device, dtype):
        return {"x": torch.ones(2, device=device, dtype=dtype)}

    def loss(self, params):
        return (params["x"].cpu() ** 2).sum()


@pytest.mark.cuda
def test_a_loss_on_the_wrong_device_is_refused_on_a_gpu() -> None:
    cfg = compose_with("device=cuda")
    with open_dict(cfg):
        cfg.objective = {"_target_": "tests.test_plugins.CpuLoss"}
    with pytest.raises(GdlabError) as err:
        build(cfg)
    assert "loss returned a tensor on cpu, but the run's device is cuda" in one_line(err)


def test_selecting_a_broken_objective_raises_its_problem(with_broken: Registry) -> None:
    cfg = compose_with("objective=bad_import")  # composes: its node says what is wrong
    with pytest.raises(GdlabError) as err:
        build(cfg)
    assert "cannot import it" in one_line(err) and "gdlab-broken-plugins" in str(err.value)


def test_a_required_field_must_come_from_the_command_line(with_broken: Registry) -> None:
    cfg = compose_with("objective=needs_scale")
    with pytest.raises(GdlabError) as err:
        build_objective(cfg.objective)
    line = one_line(err)
    assert "needs objective.scale" in line and "objective.scale=VALUE" in line
    assert "package gdlab-broken-plugins" in line
    cfg = compose_with("objective=needs_scale", "objective.scale=2", "objective.n=3")
    objective = build_objective(cfg.objective)
    assert (objective.scale, objective.n) == (2.0, 3)


def test_plugin_presets_are_found_on_the_search_path(with_broken: Registry) -> None:
    cfg = compose_with("objective=good_far")  # broken_plugins/configs/objective/good_far.yaml
    assert cfg.objective.x0 == 50.0
    assert cfg.objective._target_ == "broken_plugins.objectives.Good"
    experiment = build(cfg)
    assert objective_name(experiment.objective) == "good"
    assert experiment.params["x"].tolist() == [50.0, 2.0]


def test_help_lists_every_objective_and_every_problem(with_broken: Registry) -> None:
    text = nodes.objectives_help(config_dir(), with_broken)
    for name in BUILT_INS | {"good", "needs_scale"}:
        assert f"  {name} " in text
    assert "[gdlab-broken-plugins] A plain class that follows the contract." in text
    assert "good_far" in text and "saddle" in text  # presets
    problems = text.split("== Objectives that cannot be used ==")[1]
    for name in ("bad_import", "no_loss", "not_a_class", "twin", "quadratic"):
        assert f"objective {name!r}" in problems
    assert "no_such_package" in problems


def test_the_search_path_plugin_only_touches_gdlabs_apps(tmp_path: Path) -> None:
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    ours, other = ConfigSearchPathImpl(), ConfigSearchPathImpl()
    ours.append("main", f"file://{config_dir()}")
    other.append("main", f"file://{tmp_path}")
    assert is_gdlab_search_path(ours) and not is_gdlab_search_path(other)
    assert gdlab_config_dir() == Path(config_dir()).resolve()


# ---------------------------------------------------------------- the real command


@pytest.mark.slow
def test_broken_plugins_fail_in_one_line_and_the_rest_still_run(
    broken_site: Path, tmp_path: Path
) -> None:
    env = env_with(broken_site)
    ok = run_cli("objective=good", "trainer.steps=5", f"hydra.run.dir={tmp_path / 'ok'}", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["objective"] == "good"
    # One of each kind (the in-process tests above cover every case): discovery, a check at
    # build time, a clash, a missing required field.
    expected = {
        "bad_import": "cannot import it",
        "meta_loss": "on meta",
        "twin": "claimed by 2 packages",
        "needs_scale": "needs objective.scale",
    }
    for name, what in expected.items():
        proc = run_cli(f"objective={name}", f"hydra.run.dir={tmp_path / name}", env=env)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (name, proc.stderr)
        assert what in lines[0] and "gdlab-" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_help_shows_plugins_and_their_problems(broken_site: Path) -> None:
    proc = run_cli("--help", env=env_with(broken_site))
    assert proc.returncode == 0, proc.stderr
    assert "  good " in proc.stdout and "[gdlab-broken-plugins]" in proc.stdout
    assert "objective 'bad_import' (package gdlab-broken-plugins" in proc.stdout


# ---------------------------------------------------------------- the example plugin


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/gdlab-booth, pip-installed (built by hatchling) into a --target folder."""
    return install_example(tmp_path_factory.mktemp("example") / "site")


def booth_cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env_with(site))


@pytest.mark.slow
def test_example_is_discovered_with_its_preset(example_site: Path) -> None:
    proc = booth_cli(example_site, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "  booth " in proc.stdout and "[gdlab-booth-example]" in proc.stdout
    assert "booth_far_start" in proc.stdout
    assert not (example_site / "gdlab_booth" / "configs" / "objective" / "booth.yaml").exists()


@pytest.mark.slow
def test_example_runs_with_overrides_and_the_preset(example_site: Path, tmp_path: Path) -> None:
    proc = booth_cli(
        example_site,
        "objective=booth",
        "objective.x0=[0,0]",
        "optimizer.lr=0.05",
        "trainer.steps=200",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["objective"] == "booth" and metrics["minimum"] == 0.0
    assert metrics["params"]["xy"] == pytest.approx([1.0, 3.0], abs=1e-3)
    saved = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    assert saved.objective._target_ == "gdlab_booth.booth.Booth"

    preset = booth_cli(
        example_site,
        "objective=booth_far_start",
        "trainer.steps=3",
        "optimizer.lr=0.01",
        f"hydra.run.dir={tmp_path / 'preset'}",
    )
    assert preset.returncode == 0, preset.stderr
    saved = OmegaConf.load(tmp_path / "preset" / ".hydra" / "config.yaml")
    assert list(saved.objective.x0) == [8.0, -6.0]

    bad = booth_cli(example_site, "objective=booth", "objective.x0=abc")
    assert bad.returncode != 0 and "objective.x0" in bad.stderr


SWEEP = ("-m", "objective=booth,booth_far_start", "optimizer.lr=0.01,0.05", "trainer.steps=20")


def sweep_losses(sweep_dir: Path) -> dict[tuple[str, float], float]:
    """(objective choice, lr) -> final loss, from the sweep's summary.csv."""
    with open(sweep_dir / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["status"] for r in rows} == {"finished"}, rows
    return {(r["objective"], float(r["optimizer.lr"])): float(r["final_loss"]) for r in rows}


@pytest.mark.slow
def test_example_multirun(example_site: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    proc = booth_cli(example_site, *SWEEP, "logger.tensorboard=false", f"hydra.sweep.dir={plain}")
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(p.read_text()) for p in plain.glob("*/metrics.json")]
    assert len(results) == 4
    # each run names the objective option it was given: a plugin's preset by its own name
    assert {r["objective"] for r in results} == {"booth", "booth_far_start"}
    assert {r["problem"]["name"] for r in results} == {"booth", "booth_far_start"}
    assert {r["status"] for r in results} == {"finished"}

    # The population sweeper batches the plugin's loss (written for one setting) itself: the
    # two learning rates of each objective train as one job, with the plain runs' results.
    batched = tmp_path / "population"
    proc = booth_cli(
        example_site,
        *SWEEP,
        "hydra/sweeper=population",
        "logger.tensorboard=false",
        f"hydra.sweep.dir={batched}",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(batched.glob("*/population.json"))) == 2
    expected = sweep_losses(plain)
    assert len(expected) == 4
    for key, loss in sweep_losses(batched).items():
        assert loss == pytest.approx(expected[key], rel=1e-4, abs=1e-9), key


@pytest.mark.slow
def test_example_passes_gdlab_check(example_site: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("gdlab-check")
    proc = subprocess.run(
        [str(script), "objective=booth_far_start", "check.points=2"],
        cwd=tmp_path,
        env=env_with(example_site),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "booth (package gdlab-booth-example, entry point booth = gdlab_booth.booth:Booth)" in (
        proc.stdout
    )
    assert [line.split()[0] for line in proc.stdout.splitlines() if " xy " in line] == [
        "start",
        "random",
        "random",
    ]
    assert "gdlab-check: OK" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # a check writes no files


@pytest.mark.slow
def test_example_own_tests_pass(example_site: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=EXAMPLE,
        env=env_with(example_site),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout


def test_example_files_are_what_docs_describe() -> None:
    text = (REPO / "docs" / "plugins.md").read_text()
    pyproject = (EXAMPLE / "pyproject.toml").read_text()
    assert 'booth = "gdlab_booth.booth:Booth"' in pyproject and "gdlab.configs" in pyproject
    assert 'booth = "gdlab_booth.booth:Booth"' in text
    assert (EXAMPLE / "src" / "gdlab_booth" / "booth.py").read_text().strip() in text
