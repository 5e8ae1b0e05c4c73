"""The `gdlab` command's first lines: its start-up imports with the garbage collector paused.

Importing torch, Hydra and matplotlib creates millions of objects, and each import would set
off full collections that find nothing to free (0.2 s of a one-step run, measured by
scripts/bench_startup.py). The command pauses the collector while it imports its modules,
then freezes what they created (it lives as long as the process) and collects as usual. Only
the command does this: `import gdlab` in a user's process changes nothing.
"""

from __future__ import annotations

import gc


def main() -> None:
    """Console-script entry point of `gdlab` (and `python -m gdlab`)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        from gdlab.cli import console_main
    finally:
        gc.freeze()  # the start-up objects: never collected, so never scanned again
        if was_enabled:
            gc.enable()
    console_main()
