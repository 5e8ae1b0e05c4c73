"""Plugin packages for tests: hand-written distributions and the installed example plugin.

A "distribution" here is what pip leaves in site-packages: a `NAME-VERSION.dist-info` folder
(METADATA, entry_points.txt) beside the package's modules. Written into a folder that is put on
sys.path (or PYTHONPATH for a subprocess), it is found by importlib.metadata exactly like an
installed package, without touching the shared virtual environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "gdlab-booth"


def write_distribution(
    site: Path,
    name: str,
    files: dict[str, str],
    objectives: dict[str, str],
    configs: dict[str, str] | None = None,
) -> None:
    """Write an installed-looking distribution `name` into `site`."""
    dist_info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    groups = {"gdlab.objectives": objectives, "gdlab.configs": configs or {}}
    text = ""
    for group, entries in groups.items():
        if entries:
            text += f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
    (dist_info / "entry_points.txt").write_text(text)
    for relative, content in files.items():
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(content).lstrip())


def install_example(target: Path) -> Path:
    """pip-install the example plugin (a wheel built from a copy) into `target`; return it.

    A --target folder, put on PYTHONPATH by the tests that need it, keeps the shared .venv
    untouched, so other test runs in the same environment never see the plugin.
    """
    source = target.parent / "gdlab-booth-source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return target


def env_with(*sites: Path) -> dict[str, str]:
    """The environment for a subprocess that sees the given folders as installed packages."""
    paths = [str(s) for s in sites]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


#: one package with every way a plugin can be wrong, plus two that work
BROKEN_FILES = {
    "broken_plugins/__init__.py": "",
    "broken_plugins/missing_import.py": """
        import not_a_real_module_for_gdlab_tests  # noqa: F401

        class Thing:
            pass
    """,
    "broken_plugins/objectives.py": '''
        import torch

        NOT_A_CLASS = 42


        class Start:
            def __init__(self, x0: float = 1.0) -> None:
                self.x0 = x0

            def init_params(self, generator, device, dtype):
                return {"x": torch.tensor([self.x0, 2.0], device=device, dtype=dtype)}


        class NoLoss(Start):
            """Has init_params but no loss."""


        class VectorLoss(Start):
            def loss(self, params):
                return params["x"] ** 2


        class MetaLoss(Start):
            def loss(self, params):
                return (params["x"] ** 2).sum().to("meta")


        class Good(Start):
            """A plain class that follows the contract."""

            def loss(self, params):
                return (params["x"] ** 2).sum()


        class NeedsScale(Start):
            """scale has no default: the command line must give it."""

            def __init__(self, scale: float, n: int = 2, x0: float = 1.0) -> None:
                super().__init__(x0)
                self.scale, self.n = scale, n

            def loss(self, params):
                return self.scale * (params["x"] ** 2).sum()
    ''',
    "broken_plugins/configs/objective/good_far.yaml": """
        defaults:
          - good
          - _self_
        x0: 50.0
    """,
}
BROKEN_OBJECTIVES = {
    "bad_import": "broken_plugins.missing_import:Thing",
    "no_loss": "broken_plugins.objectives:NoLoss",
    "not_a_class": "broken_plugins.objectives:NOT_A_CLASS",
    "vector_loss": "broken_plugins.objectives:VectorLoss",
    "meta_loss": "broken_plugins.objectives:MetaLoss",
    "needs_scale": "broken_plugins.objectives:NeedsScale",
    "good": "broken_plugins.objectives:Good",
    "twin": "broken_plugins.objectives:Good",
    "quadratic": "broken_plugins.objectives:Good",  # gdlab's own name: gdlab's wins
}
BROKEN_CONFIGS = {"broken_plugins": "broken_plugins.configs", "gone": "no_such_package.configs"}
TWIN_FILES = {
    "twin_plugin/__init__.py": """
        from broken_plugins.objectives import Good as Twin  # noqa: F401
    """
}


def write_broken_plugins(site: Path) -> Path:
    """Two fake packages: `gdlab-broken-plugins` (every failure) and `gdlab-twin` (a clash)."""
    write_distribution(
        site, "gdlab-broken-plugins", BROKEN_FILES, BROKEN_OBJECTIVES, BROKEN_CONFIGS
    )
    write_distribution(site, "gdlab-twin", TWIN_FILES, {"twin": "twin_plugin:Twin"})
    return site
