"""Short human-readable names of trial configs (MLflow run names, progress lines, the final table)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsl.config import SHORT_NAMES, ChainConfig
from dsl.method.rules import ALPHA_KEYS, AUX_KEYS, EPSILON_KEYS, key_applies

# Overrides shown abbreviated (short name -> what a trial name calls it); the label keys and the
# iterations are part of every name, other keys are shown dotted.
_ABBREVIATED = {"lr": "lr", "segment_hop": "hop", "epochs": "ep", "batch_size": "bs", "seed": "seed"}
_SHORT = {SHORT_NAMES[name]: shown for name, shown in _ABBREVIATED.items()}
_STAGE_SHOWN = ("stage.input", "stage.epsilon", "stage.dim")  # in the stage's part of a name
_SHOWN = {"backbone", "labels.rule", *ALPHA_KEYS, *EPSILON_KEYS, "train.aux", *AUX_KEYS, "stage.name", *_STAGE_SHOWN,
          "iterations"}


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def describe(cfg: ChainConfig, overrides: Mapping[str, Any] | None = None) -> str:
    """E.g. `small_cnn wdsl a=0.9>0.1(step) T=3 lr=0.001`: backbone, rule, alpha schedule, iterations, other overrides."""
    lab = cfg.labels
    parts = [cfg.backbone, lab.rule]
    if key_applies("labels.alpha", lab.rule):
        parts.append(f"a={_fmt(lab.alpha)}>{_fmt(lab.alpha_end)}({lab.schedule})"
                     if key_applies("labels.alpha_end", lab.rule, lab.schedule) else f"a={_fmt(lab.alpha)}")
    if key_applies("labels.epsilon", lab.rule):
        parts.append(f"eps={_fmt(lab.epsilon)}")
    if cfg.train.aux != "none":
        parts.append(f"{cfg.train.aux}(cls={_fmt(cfg.train.aux_cls_weight)},rec={_fmt(cfg.train.aux_rec_weight)})")
    if cfg.stage.name != "forest":
        st = cfg.stage
        parts.append(f"{st.name}({st.input},eps={_fmt(st.epsilon)},dim={st.dim})")
    parts.append(f"T={cfg.iterations}")
    for k, v in sorted((overrides or {}).items()):
        if k not in _SHOWN and not k.startswith("_"):
            parts.append(f"{_SHORT.get(k, k)}={_fmt(v)}")
    return " ".join(parts)


def run_name(cfg: ChainConfig, overrides: Mapping[str, Any], trial_id: str) -> str:
    return f"{describe(cfg, overrides)} #{trial_id.split('_')[-1]}"
