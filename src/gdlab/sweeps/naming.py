"""Job directory names: a sweep job's overrides as a readable, safe and unique name.

`job_dirname` is `hydra.sweep.subdir` (configs/config.yaml, through the `gdlab.job_dir`
resolver that `gdlab.config.register_configs` registers).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from gdlab.sweeps.jobs import job_num

#: longest job directory name kept as is (file systems allow 255 bytes per name)
MAX_DIRNAME = 120

#: a decimal with 10 or more digits after the point: machine-made (Hydra's float `range`,
#: Optuna's samples), e.g. 0.15000000000000002 or 0.018662266976517967
_LONG_DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d{10,}(?:[eE][+-]?\d+)?(?![\w.])")


def tidy_numbers(text: str) -> str:
    """Long machine-made decimals in `text` to 6 significant digits (0.15000000000000002 is
    0.15), for names and tables people read; summary.csv keeps the exact values."""
    return _LONG_DECIMAL.sub(lambda m: format(float(m.group()), ".6g"), text)


def job_dirname(override_dirname: Any, sweep_dir: Any = None, num: Any = None) -> str:
    """hydra.sweep.subdir: the job's overrides as a readable, safe and unique directory name.

    Hydra's `override_dirname` (`objective=quadratic,optimizer.lr=0.1`) is kept as it is when it
    is a usable name; long machine-made decimals are cut to 6 significant digits
    (`tidy_numbers`), a `/` becomes `_`, a name longer than MAX_DIRNAME keeps its start plus a
    hash of the whole, and a job without overrides is `defaults`. When another job of the same
    sweep already owns the name (the same overrides twice, or an Optuna trial repeating a
    setting), `-job<num>` is appended, so two jobs never share a directory.

    Given `sweep_dir` and `num`, the name is claimed by creating its directory (`_claim`): the
    one side effect of resolving the config, kept because Hydra gives a job no other moment
    between choosing its directory and creating it (see `_claim`).
    """
    name = tidy_numbers(str(override_dirname or ""))
    name = name.replace(os.sep, "_").replace("\0", "_").strip()
    if name in ("", ".", ".."):
        name = "defaults" if name == "" else f"_{name}"
    if len(name.encode("utf-8")) > MAX_DIRNAME:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]
        name = name.encode("utf-8")[: MAX_DIRNAME - 12].decode("utf-8", "ignore") + "~" + digest
    if sweep_dir is None or num is None or not Path(str(sweep_dir)).is_dir():
        return name
    return _claim(Path(str(sweep_dir)), name, int(num))


def _claim(sweep_dir: Path, name: str, num: int) -> str:
    """Create `sweep_dir/name` for job `num`, or a numbered variant if another job has it.

    `os.mkdir` is atomic, so parallel jobs (joblib, submitit) cannot both win the same name.
    The same job run again (a requeued SLURM job) finds its own number in `.hydra/hydra.yaml`
    and keeps its directory.

    Why here, in a resolver: Hydra's `run_job` resolves `hydra.sweep.subdir` in the job's own
    process and creates the directory right after (`mkdir(exist_ok=True)`, so a shared name is
    silently shared); no callback runs in between, and a job is not told the other jobs of its
    batch (the basic and Optuna sweepers hand them straight to the launcher), so a name that
    must not repeat another job's can only be settled by trying to take it.
    """
    for candidate in (name, f"{name}-job{num}"):
        path = sweep_dir / candidate
        try:
            path.mkdir()
            return candidate
        except FileExistsError:
            if job_num(path) == num:
                return candidate
    return f"{name}-job{num}"
