"""Flat per-iteration metrics (for `tune.report` and MLflow) from an `IterationResult.to_dict()`.

The sweep's `objective` is the score at a rule fixed in advance, never a running maximum over
iterations: `final` is the UA of the iteration just finished (so a finished trial is judged at its last
iteration), `selected` is the UA of each outer fold's iteration picked on its own training utterances
(held-out protocols only; see `dsl.selection`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

OBJECTIVES = ("final", "selected")
SCALARS = ("wa", "ua", "selected_wa", "selected_ua", "segment_accuracy", "changed_label_share", "target_entropy",
           "epochs", "seconds", "segments_per_second", "alpha")


def iteration_metrics(d: Mapping[str, Any]) -> dict[str, float]:
    """wa, ua, mean_fold_ua, segment accuracy, changed-label share, ..., and per-fold `fold_wa/i`, `fold_ua/i`."""
    out = {k: float(d[k]) for k in SCALARS if d.get(k) is not None and math.isfinite(float(d[k]))}
    out["mean_fold_ua"] = float(np.mean(d["fold_ua"]))
    out["mean_fold_wa"] = float(np.mean(d["fold_wa"]))
    for name in ("fold_wa", "fold_ua"):
        for i, v in enumerate(d[name]):
            out[f"{name}/{i}"] = float(v)
    return out


def objective_value(d: Mapping[str, Any], objective: str = "final") -> float:
    """The sweep objective after iteration `d`."""
    if objective == "selected":
        if d.get("selected_ua") is None:
            raise ValueError("objective 'selected' needs a held-out protocol (nested, speaker, refinery)")
        return float(d["selected_ua"])
    return float(d["ua"])


def report_metrics(history: Sequence[Mapping[str, Any]], iterations_total: int, resumed_from: int,
                   objective: str = "final") -> dict[str, Any]:
    """What one `tune.report` carries after the last entry of `history`."""
    last = history[-1]
    return {**iteration_metrics(last), "objective": objective_value(last, objective), "iteration": int(last["iteration"]),
            "iterations_total": int(iterations_total), "resumed_from": int(resumed_from)}
