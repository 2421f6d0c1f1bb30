"""A trial's ChainConfig: the sweep's base config plus the trial's sampled dotted overrides."""
from __future__ import annotations

from typing import Any, Mapping

from dsl.config import ChainConfig, LabelSpec, from_dict
from dsl.rules import get_rule

ALPHA_KEYS = ("labels.alpha", "labels.schedule", "labels.alpha_end", "labels.alpha_step")


def trial_config(base: Mapping[str, Any] | ChainConfig, overrides: Mapping[str, Any]) -> ChainConfig:
    """Base + overrides; label fields that do not apply to the trial's rule are reset to their defaults
    (so a non-WDSL trial never carries an alpha or a schedule)."""
    cfg = base if isinstance(base, ChainConfig) else from_dict(base)
    cfg = cfg.replace(**{k: v for k, v in overrides.items() if not k.startswith("_")})
    rule = get_rule(cfg.labels.rule)
    defaults = LabelSpec()
    reset: dict[str, Any] = {}
    if not rule.uses_alpha:
        reset.update({k: getattr(defaults, k.split(".")[1]) for k in ALPHA_KEYS})
    if not rule.uses_epsilon:
        reset["labels.epsilon"] = defaults.epsilon
    return cfg.replace(**reset) if reset else cfg
