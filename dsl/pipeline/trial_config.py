"""A trial's ChainConfig: the sweep's base config plus the trial's sampled dotted overrides."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dsl.config import ChainConfig, FeatureSpec, LabelSpec, StageSpec, TrainSpec, from_dict
from dsl.method.rules import ALPHA_KEYS, AUX_KEYS, EPSILON_KEYS, SSL_KEYS, STAGE_KEYS, key_applies


def trial_config(base: ChainConfig | Mapping[str, Any], overrides: Mapping[str, Any]) -> ChainConfig:
    """Base + overrides; label fields that do not apply to the trial's rule are reset to their defaults
    (so a non-WDSL trial never carries an alpha or a schedule), and so are the MTL-AUG keys without
    `train.aux: mtl_aug` and the ACP keys without `stage.name: acp`. Keys starting with `_` are not config."""
    cfg = base if isinstance(base, ChainConfig) else from_dict(base)
    cfg = cfg.replace(**{k: v for k, v in overrides.items() if not k.startswith("_")})
    defaults = LabelSpec()
    reset = {k.split(".", 1)[1]: getattr(defaults, k.split(".", 1)[1])
             for k in (*ALPHA_KEYS, *EPSILON_KEYS) if not key_applies(k, cfg.labels.rule)}
    if reset:
        cfg = dataclasses.replace(cfg, labels=dataclasses.replace(cfg.labels, **reset))
    train_defaults = TrainSpec()
    aux_reset = {k.split(".", 1)[1]: getattr(train_defaults, k.split(".", 1)[1])
                 for k in AUX_KEYS if not key_applies(k, cfg.labels.rule, aux=cfg.train.aux)}
    if aux_reset:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **aux_reset))
    stage_defaults = StageSpec()
    stage_reset = {k.split(".", 1)[1]: getattr(stage_defaults, k.split(".", 1)[1])
                   for k in STAGE_KEYS if not key_applies(k, cfg.labels.rule, stage=cfg.stage.name)}
    if stage_reset:
        cfg = dataclasses.replace(cfg, stage=dataclasses.replace(cfg.stage, **stage_reset))
    feature_defaults, f = FeatureSpec(), cfg.features
    ssl_reset = {k.split(".", 1)[1]: getattr(feature_defaults, k.split(".", 1)[1])
                 for k in SSL_KEYS if not key_applies(k, cfg.labels.rule, kind=f.kind, layer_sum=f.ssl_layer_sum)}
    return dataclasses.replace(cfg, features=dataclasses.replace(f, **ssl_reset)) if ssl_reset else cfg


__all__ = ["ALPHA_KEYS", "trial_config"]
