"""User modules that register backbones, rules, schedules or protocols, imported wherever a chain runs.

`@register_backbone("mine")` in a script only registers "mine" in that process. Fold worker processes
(spawned) and Ray trials and fold tasks start from a fresh interpreter, so they would not know it.
Naming the module in `ChainConfig.plugins` makes every place that checks a config, builds a network
or applies a rule import it first.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable

from dsl.config import ConfigError


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module once (a no-op for modules already imported). The working directory is searched
    last, as `python -m` would: a console script like `dsl-sweep` does not put it on `sys.path`."""
    for name in modules:
        if name in sys.modules:
            continue
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure of user code at import time is a config problem
            raise ConfigError(
                f"plugins: cannot import {name!r} ({type(exc).__name__}: {exc}); a plugin module must be "
                "importable in every process that runs a chain: install it, put it on PYTHONPATH, or run "
                "from the directory that holds it") from exc
