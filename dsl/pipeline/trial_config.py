"""A trial's ChainConfig: the sweep's base config plus the trial's sampled dotted overrides."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dsl.config import ChainConfig, field_default, from_dict
from dsl.method.rules import RULES
from dsl.pipeline.keys import conditional_keys, key_applies, value_at


def trial_config(base: ChainConfig | Mapping[str, Any], overrides: Mapping[str, Any]) -> ChainConfig:
    """Base + overrides, without what does not apply (`applicable`). Keys starting with `_` are not config."""
    cfg = base if isinstance(base, ChainConfig) else from_dict(base)
    return applicable(cfg.replace(**{k: v for k, v in overrides.items() if not k.startswith("_")}))


def applicable(cfg: ChainConfig) -> ChainConfig:
    """`cfg` with every key that does not apply under its choices reset to its default (`dsl.pipeline.keys`: so
    a non-WDSL trial never carries an alpha or a schedule, nor a trial without MTL-AUG its weights), and the
    rule's own parameters: exactly the ones it declares, each given or at its default."""
    while True:  # a reset selector (e.g. labels.schedule) may un-own more keys
        reset = {k: field_default(k) for k in conditional_keys()
                 if not key_applies(k, cfg) and value_at(cfg, k) != field_default(k)}
        if not reset:
            break
        cfg = cfg.replace(**reset)
    if cfg.labels.rule in RULES:
        params = RULES[cfg.labels.rule].values(cfg.labels.params)
        if params != cfg.labels.params:
            cfg = dataclasses.replace(cfg, labels=dataclasses.replace(cfg.labels, params=params))
    return cfg


__all__ = ["applicable", "trial_config"]
