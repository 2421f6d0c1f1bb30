"""Format versions of the files the tool writes and reads back (model directories, trial checkpoints): a
newer file is refused with what to do, an older one is read with a warning saying what it lacks."""
from __future__ import annotations

import warnings
from pathlib import Path


def check_format(path: str | Path, found: int, current: int, what: str, action: str, older: str = "") -> None:
    """Refuse `found > current`; warn for `found < current` (`older` says what such a file lacks)."""
    if found > current:
        raise ValueError(f"{path}: {what} format {found} is newer than this version of dsl-sweeps reads "
                         f"({current}); upgrade dsl-sweeps to {action}")
    if found < current:
        warnings.warn(f"{path}: {what} format {found} (current {current}){'; ' + older if older else ''}",
                      stacklevel=3)
