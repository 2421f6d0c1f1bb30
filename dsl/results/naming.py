"""Short human-readable names of trial configs (MLflow run names, progress lines, the final table)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsl.config import SHORT_NAMES, ChainConfig, field_default
from dsl.method.rules import ALPHA_KEYS, EPSILON_KEYS, PARAMS_PREFIX, RULES
from dsl.pipeline.keys import key_applies, owned_by, value_at

# Overrides shown abbreviated (short name -> what a trial name calls it); the label keys and the
# iterations are part of every name, other keys are shown dotted.
_ABBREVIATED = {"lr": "lr", "segment_hop": "hop", "epochs": "ep", "batch_size": "bs", "seed": "seed"}
_SHORT = {SHORT_NAMES[name]: shown for name, shown in _ABBREVIATED.items()}
_STAGE_SHOWN = (("stage.input", ""), ("stage.epsilon", "eps"), ("stage.dim", "dim"))  # in the stage's part of a name
_AUX_SHOWN = (("train.aux_cls_weight", "cls"), ("train.aux_rec_weight", "rec"))  # in the auxiliary task's part


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _shown(key: str) -> bool:
    """Keys a name renders in its fixed parts (so they are not repeated among the other overrides)."""
    return key.startswith(PARAMS_PREFIX) or key in {
        "backbone", "labels.rule", *ALPHA_KEYS, *EPSILON_KEYS, "train.aux", *owned_by("train.aux"), "stage.name",
        *(k for k, _ in _STAGE_SHOWN), "iterations"}


def _options(cfg: ChainConfig, shown: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{label}={_fmt(value_at(cfg, k))}" if label else _fmt(value_at(cfg, k))
                    for k, label in shown if key_applies(k, cfg))


def describe(cfg: ChainConfig, overrides: Mapping[str, Any] | None = None) -> str:
    """E.g. `small_cnn wdsl a=0.9>0.1(step) T=3 lr=0.001`: backbone, rule, alpha schedule or the rule's own
    parameters, iterations, other overrides."""
    lab = cfg.labels
    parts = [cfg.backbone, lab.rule]
    if key_applies("labels.alpha", cfg):
        parts.append(f"a={_fmt(lab.alpha)}>{_fmt(lab.alpha_end)}({lab.schedule})"
                     if key_applies("labels.alpha_end", cfg) else f"a={_fmt(lab.alpha)}")
    if key_applies("labels.epsilon", cfg):
        parts.append(f"eps={_fmt(lab.epsilon)}")
    params = RULES[lab.rule].values(lab.params) if lab.rule in RULES else lab.params
    parts += [f"{p}={_fmt(v)}" for p, v in params.items()]
    if cfg.train.aux != field_default("train.aux"):
        parts.append(f"{cfg.train.aux}({_options(cfg, _AUX_SHOWN)})")
    if cfg.stage.name != field_default("stage.name"):
        parts.append(f"{cfg.stage.name}({_options(cfg, _STAGE_SHOWN)})")
    parts.append(f"T={cfg.iterations}")
    for k, v in sorted((overrides or {}).items()):
        if not _shown(k) and not k.startswith("_"):
            parts.append(f"{_SHORT.get(k, k)}={_fmt(v)}")
    return " ".join(parts)


def run_name(cfg: ChainConfig, overrides: Mapping[str, Any], trial_id: str) -> str:
    return f"{describe(cfg, overrides)} #{trial_id.split('_')[-1]}"
