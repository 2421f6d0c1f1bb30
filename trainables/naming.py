"""Short human-readable names of trial configs (MLflow run names, progress lines, the final table)."""
from __future__ import annotations

from typing import Any, Mapping

from dsl.config import ChainConfig
from dsl.rules import get_rule

_SHORT = {"train.lr": "lr", "segments.hop": "hop", "train.epochs": "ep", "train.batch_size": "bs", "seed": "seed"}
_SHOWN = {"backbone", "labels.rule", "labels.alpha", "labels.schedule", "labels.alpha_end", "labels.alpha_step",
          "labels.epsilon", "iterations"}


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def describe(cfg: ChainConfig, overrides: Mapping[str, Any] | None = None) -> str:
    """E.g. `small_cnn wdsl a=0.9>0.1(step) T=3 lr=0.001`: backbone, rule, alpha schedule, iterations, other overrides."""
    lab = cfg.labels
    rule = get_rule(lab.rule)
    parts = [cfg.backbone, lab.rule]
    if rule.uses_alpha:
        parts.append(f"a={_fmt(lab.alpha)}" if lab.schedule == "constant"
                     else f"a={_fmt(lab.alpha)}>{_fmt(lab.alpha_end)}({lab.schedule})")
    if rule.uses_epsilon:
        parts.append(f"eps={_fmt(lab.epsilon)}")
    parts.append(f"T={cfg.iterations}")
    for k, v in sorted((overrides or {}).items()):
        if k not in _SHOWN and not k.startswith("_"):
            parts.append(f"{_SHORT.get(k, k)}={_fmt(v)}")
    return " ".join(parts)


def run_name(cfg: ChainConfig, overrides: Mapping[str, Any], trial_id: str) -> str:
    return f"{describe(cfg, overrides)} #{trial_id.split('_')[-1]}"
