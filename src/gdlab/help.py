"""The parts of `gdlab --help` that depend on what is installed (configs/config.yaml, hydra.help).

Hydra renders the help from the template in `hydra.help`; these resolvers fill in what only
the running installation knows:

- `${gdlab.help_groups:}`: each config group and its options, plugins' objectives and presets
  included (read from Hydra's own config loader, so it is what `group=option` accepts),
  without the structured-config schemas (`optimizer: sgd_schema`) and the pieces of the race
  experiments, and without objectives that cannot be used (the objectives section lists
  those, with the reason);
- `${gdlab.help_sweeps:}`: the sweepers and launchers installed, with what each is for;
- `${gdlab.docs_dir:}`: where the docs are (the checkout's `docs/` folder, when there is one).

The objectives section (`${gdlab.objectives_help:}`) is `gdlab.objectives.nodes`'s. Nothing
here imports torch: `gdlab --help` stays as quick as composing the config.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from omegaconf import OmegaConf

#: lines of the help are wrapped at this width
WIDTH = 100

#: groups shown first, in this order; any other group follows alphabetically
GROUP_ORDER = ("objective", "optimizer", "trainer", "device", "logger", "experiment")

#: groups of keys without options, after those with options
KEY_GROUPS = {
    "sharpness": "(keys only) sharpness.every=N: the Hessian's extreme eigenvalues and each "
    "rule's lr limit every N steps",
}

#: what each sweeper is for (`gdlab -m hydra/sweeper=NAME`); an installed one not named here
#: is listed by name only
SWEEPERS = {
    "basic": "one job per combination of the comma-separated values (the default)",
    "population": "settings that differ only in hyperparameters as one batched job",
    "optuna": "an Optuna search; gdlab's preset: hparams_search=optuna (no -m)",
}

#: what each launcher is for (`gdlab -m hydra/launcher=NAME ...`)
LAUNCHERS = {
    "basic": "one job after another, in this process (the default)",
    "joblib": "jobs in parallel processes here (hydra.launcher.n_jobs=N)",
    "ray": "a local Ray or a cluster (hydra.launcher.ray.init.address=HOST:PORT)",
    "slurm": "a SLURM job array (hydra.launcher.partition=NAME)",
    "submitit_local": "jobs as local submitit processes",
}


def _shown(group: str, option: str) -> bool:
    """Whether `group=option` is worth listing to a newcomer."""
    if option.endswith("_schema"):
        return False  # the typed schemas the YAML options extend (gdlab.config)
    return not (group == "optimizer" and option.startswith("race_"))  # race experiments' parts


def _unusable_objectives() -> set[str]:
    """Objective names that an entry point claims but that cannot be used."""
    from gdlab.objectives.nodes import unusable_names
    from gdlab.plugin_configs import gdlab_config_dir

    return unusable_names(gdlab_config_dir())


def _loader_options() -> Callable[[str], list[str]] | None:
    """Hydra's config loader's `get_group_options`, while Hydra is composing (--help)."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    if not hydra.is_initialized():
        return None
    loader = hydra.config_loader()
    return lambda group: list(loader.get_group_options(group))


def _folder_options(group: str) -> list[str]:
    """The options of `group` in gdlab's own configs/ folder (when Hydra is not running)."""
    from gdlab.plugin_configs import gdlab_config_dir

    folder = gdlab_config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _groups(options: Callable[[str], list[str]] | None) -> list[str]:
    if options is not None:
        from hydra.core.global_hydra import GlobalHydra

        names = GlobalHydra.instance().config_loader().list_groups("")
    else:
        from gdlab.plugin_configs import gdlab_config_dir

        names = [p.name for p in gdlab_config_dir().iterdir() if p.is_dir()]
    names = [n for n in names if n != "hydra"]
    first = [g for g in GROUP_ORDER if g in names]
    return first + sorted(set(names) - set(first))


def _wrapped(label: str, text: str, width: int) -> list[str]:
    return textwrap.wrap(
        text,
        width=WIDTH,
        initial_indent=f"  {label:<{width}}",
        subsequent_indent=" " * (width + 2),
        break_on_hyphens=False,
    )


def groups_help() -> str:
    """`${gdlab.help_groups:}`: every config group and the options `group=option` accepts."""
    options = _loader_options() or _folder_options
    unusable = _unusable_objectives()
    rows = []
    for group in _groups(_loader_options()):
        names = [o for o in sorted(set(options(group))) if _shown(group, o)]
        if group == "objective":
            names = [o for o in names if o not in unusable]
        if names:
            rows.append((group, ", ".join(names)))
    rows += list(KEY_GROUPS.items())
    width = max([len(g) for g, _ in rows] + [10]) + 2
    lines = []
    for group, text in rows:
        lines += _wrapped(group, text, width)
    return "\n".join(lines)


def sweeps_help() -> str:
    """`${gdlab.help_sweeps:}`: the sweepers and launchers installed, and what each is for."""
    options = _loader_options() or (lambda group: [])
    installed = {
        "sweeper": set(options("hydra/sweeper")) or {"basic"},
        "launcher": set(options("hydra/launcher")) or {"basic"},
    }
    lines: list[str] = []
    for kind, described in (("sweeper", SWEEPERS), ("launcher", LAUNCHERS)):
        names = [n for n in described if n in installed[kind]]
        label = f"hydra/{kind}="
        width = len(label) + max(len(n) for n in names) + 2
        if lines:
            lines.append("")
        for name in names:
            lines += _wrapped(f"{label}{name}", described[name], width)
        others = sorted(installed[kind] - set(described))
        if others:
            lines += _wrapped("", f"also installed: {label}{', '.join(others)}", width)
    return "\n".join(lines)


def docs_dir() -> str:
    """`${gdlab.docs_dir:}`: the docs folder of this checkout, or where to find the docs."""
    from gdlab.plugin_configs import gdlab_config_dir

    docs = gdlab_config_dir().parent / "docs"
    if (docs / "sweeps.md").is_file():
        return str(docs)
    return "docs/ in gdlab's source repository"


def register_help_resolvers() -> None:
    """Register the resolvers `gdlab --help` uses; safe to call more than once."""
    for name, function in (
        ("gdlab.help_groups", groups_help),
        ("gdlab.help_sweeps", sweeps_help),
        ("gdlab.docs_dir", docs_dir),
    ):
        if not OmegaConf.has_resolver(name):
            # Hydra's help template is a string.Template: a literal "$" must be doubled.
            OmegaConf.register_new_resolver(
                name, lambda f=function: f().replace("$", "$$"), use_cache=False
            )
