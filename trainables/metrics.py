"""Flat per-iteration metrics (for `tune.report` and MLflow) from an `IterationResult.to_dict()`."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

SCALARS = ("wa", "ua", "segment_accuracy", "changed_label_share", "target_entropy", "epochs", "seconds",
           "segments_per_second", "alpha")


def iteration_metrics(d: Mapping[str, Any]) -> dict[str, float]:
    """wa, ua, mean_fold_ua, segment accuracy, changed-label share, ..., and per-fold `fold_wa/i`, `fold_ua/i`."""
    out = {k: float(d[k]) for k in SCALARS if d.get(k) is not None and math.isfinite(float(d[k]))}
    out["mean_fold_ua"] = float(np.mean(d["fold_ua"]))
    out["mean_fold_wa"] = float(np.mean(d["fold_wa"]))
    for name in ("fold_wa", "fold_ua"):
        for i, v in enumerate(d[name]):
            out[f"{name}/{i}"] = float(v)
    return out


def rank_key(d: Mapping[str, Any]) -> tuple[float, float, int]:
    """Best (trial, iteration) order: mean fold UA, then WA, then fewer iterations."""
    return (float(np.mean(d["fold_ua"])), float(d["wa"]), -int(d["iteration"]))


def best_so_far(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Running best over the iterations done so far (what the searcher and ASHA compare)."""
    best = max(history, key=rank_key)
    return {"best_mean_fold_ua": float(np.mean(best["fold_ua"])), "best_ua": float(best["ua"]),
            "best_wa": float(best["wa"]), "best_iteration": int(best["iteration"])}


def report_metrics(history: Sequence[Mapping[str, Any]], iterations_total: int, resumed_from: int) -> dict[str, Any]:
    """What one `tune.report` carries after the last entry of `history`."""
    last = history[-1]
    return {**iteration_metrics(last), **best_so_far(history), "iteration": int(last["iteration"]),
            "iterations_total": int(iterations_total), "resumed_from": int(resumed_from)}
