"""A SearchPathPlugin that appends the config folders plugin packages declare.

Hydra discovers this class by scanning the `hydra_plugins` namespace package. It acts only on
gdlab's own apps (`gdlab`, `gdlab-check`, or the compose API on gdlab's config tree): other
Hydra apps in the same environment keep their search path untouched.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from gdlab.plugin_configs import gdlab_config_dir, plugin_config_dirs


def is_gdlab_search_path(search_path: ConfigSearchPath) -> bool:
    """True when gdlab's `configs/` tree is the app's primary config folder."""
    ours = gdlab_config_dir().resolve()
    for element in search_path.get_path():
        path = element.path or ""
        if path.startswith("file://"):
            path = path[len("file://") :]
        if element.provider == "main" and "://" not in path and Path(path).resolve() == ours:
            return True
    return False


class GdlabPluginsSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not is_gdlab_search_path(search_path):
            return
        for folder in plugin_config_dirs():
            if folder.path is not None:  # problems are listed by `gdlab --help`
                search_path.append(f"gdlab plugin {folder.package}", f"file://{folder.path}")
