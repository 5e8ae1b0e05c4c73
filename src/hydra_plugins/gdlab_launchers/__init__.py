"""gdlab's launchers for Hydra: `hydra/launcher=joblib` and `hydra/launcher=ray`.

Each replaces the launcher plugin's ConfigStore node of the same name with its own (the same
keys where they share them), so the override users know picks gdlab's class. Hydra's plugin
scan imports every module here whose name does not start with `_`, on every `gdlab` command:
those modules import nothing heavy; the work is in `_joblib` and `_ray`, imported when a sweep
is launched (`ray` only then).
"""
