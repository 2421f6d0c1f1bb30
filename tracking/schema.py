"""The run schema: the tags that tie MLflow runs to a sweep and its Ray trials, the metrics of one chain
iteration (one MLflow step), and the one lookup of a trial's run.

One experiment per sweep name; one parent run per sweep (`dsl.role=parent`, `dsl.sweep_path` = the Tune
experiment path); one child run per Ray trial (`dsl.role=trial`, `ray_trial_id`, `mlflow.parentRunId`);
step = chain iteration.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dsl.config import flatten

from .client import call

TRIAL_TAG = "ray_trial_id"
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "dsl.sweep"
ROLE_TAG = "dsl.role"
PATH_TAG = "dsl.sweep_path"
ATTEMPTS_TAG = "dsl.attempts"  # how many times the trial (re)started: 1 unless retried or resumed
STEP_KEY = "mean_fold_ua"  # every logged iteration has it: its history gives the steps already logged
CACHED_TAG = "dsl.cached_iterations"  # iterations the step cache served whole (comma-separated; "" none)
MISMATCH_TAG = "dsl.mlflow_mismatch"  # steps whose recomputed metrics differ from the values MLflow kept
# MLflow 3's UI opens an experiment in its GenAI overview unless this tag says it holds model-training runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

SCALARS = ("wa", "ua", "selected_wa", "selected_ua", "segment_accuracy", "changed_label_share", "target_entropy",
           "epochs", "seconds", "segments_per_second", "alpha", "cached_folds", "fold_trainings")


def iteration_metrics(d: Mapping[str, Any]) -> dict[str, float]:
    """The flat metrics of one iteration (an `IterationResult.to_dict()`), for MLflow and `tune.report`:
    wa, ua, mean_fold_ua, segment accuracy, changed-label share, ..., and per-fold `fold_wa/i`, `fold_ua/i`."""
    out = {k: float(d[k]) for k in SCALARS if d.get(k) is not None and math.isfinite(float(d[k]))}
    out["mean_fold_ua"] = float(np.mean(d["fold_ua"]))
    out["mean_fold_wa"] = float(np.mean(d["fold_wa"]))
    for name in ("fold_wa", "fold_ua"):
        for i, v in enumerate(d[name]):
            out[f"{name}/{i}"] = float(v)
    for seed, v in zip(d.get("seeds") or (), d.get("seed_ua") or ()):  # objective_seeds > 1: each seed's UA
        out[f"seed_ua/{seed}"] = float(v)
    return out


def flat_params(tree: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params of a nested config: dotted keys, string values."""
    return {k: str(v) for k, v in flatten(tree).items()}


def find_trial_run(c, experiment_id: str, parent_run_id: str, trial_id: str):
    """The run of a Ray trial under the sweep's parent: the earliest, should a trial ever have two (the
    trial logs to it and `FinalizeRuns` closes it: both use this lookup)."""
    runs = call(c.search_runs, [experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_id}'", max_results=50)
    runs = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent_run_id]
    return min(runs, key=lambda r: r.info.start_time) if runs else None


