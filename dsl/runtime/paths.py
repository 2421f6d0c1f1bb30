"""Where the tool keeps things: its default cache folder, and whether a location is a URI or a local path.

The cache folder holds extracted features, the step cache of a sweep on URI storage and the local copy
of a URI sweep's Optuna journal; `cache_dir` in a config (or `--cache-dir`) overrides it.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DSL_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$DSL_CACHE_DIR`, else `~/.cache/dsl-sweeps`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dsl-sweeps")


def is_uri(location: str) -> bool:
    """True for a URI (`s3://...`, `gs://...`, `file://...`, anything pyarrow opens), False for a local path."""
    return "://" in location
