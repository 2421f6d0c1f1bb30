"""Progress bars that stay quiet when output is not a terminal-friendly place (CI logs, Ray workers)."""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(disable: bool = False, **kwargs) -> tqdm:
    """A tqdm bar; `DSL_PROGRESS=0` silences all bars, and bars in non-TTY output update every 10 s."""
    if os.environ.get("DSL_PROGRESS", "1") == "0":
        disable = True
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 10.0)
    return tqdm(disable=disable, dynamic_ncols=True, **kwargs)
