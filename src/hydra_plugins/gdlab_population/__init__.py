"""gdlab's population sweeper for Hydra: `gdlab -m hydra/sweeper=population ...`.

Hydra finds `PopulationSweeper` by scanning the `hydra_plugins` namespace package; modules
whose names start with `_` are skipped by that scan and imported only when a sweep needs them.
"""
