"""The run schema: every name the project uses in MLflow (tags, params, metrics, artifacts, run roles), the
metrics of one chain iteration (one MLflow step), and the one lookup of a trial's run.

One experiment per sweep name; one parent run per sweep (`dsl.role=parent`, `dsl.sweep_path` = the Tune
experiment path); one child run per Ray trial (`dsl.role=trial`, `ray_trial_id`, `mlflow.parentRunId`);
step = chain iteration. Nothing outside `tracking/` spells one of these names: it calls the functions
of `trial_run`, `sweep_runs`, `sweep_settings`, `registry` and `probe`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dsl.config import flatten

from .client import call

# --- tags that tie runs together ---------------------------------------------------------------------------
TRIAL_TAG = "ray_trial_id"  # also a param of the trial's run
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "dsl.sweep"
ROLE_TAG = "dsl.role"
PATH_TAG = "dsl.sweep_path"

# values of ROLE_TAG
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"
ROLE_FINAL_MODEL = "final_model"
ROLE_PREFLIGHT = "preflight"

# --- a trial's run -----------------------------------------------------------------------------------------
ATTEMPTS_TAG = "dsl.attempts"  # how many times the trial (re)started: 1 unless retried or resumed
RESUMED_FROM_TAG = "dsl.resumed_from"  # the iteration this attempt started at (0: from the start)
ZERO_COPY_TAG = "dsl.frames_zero_copy"  # the trial reads the frames from the object store without a copy
NODE_ID_TAG = "dsl.node_id"  # the Ray node of this attempt
PROTOCOL_TAG = "dsl.protocol"
LEAK_FREE_TAG = "dsl.leak_free"
OBJECTIVE_SEEDS_TAG = "dsl.objective_seeds"  # the seeds whose mean UA is the trial's objective (objective_seeds > 1)
ERROR_TAG = "dsl.error"  # the exception that failed the trial
STOPPED_EARLY_TAG = "dsl.stopped_early"  # the scheduler stopped the trial before its last iteration
CACHED_TAG = "dsl.cached_iterations"  # iterations the step cache served whole (comma-separated; "" none)
MISMATCH_TAG = "dsl.mlflow_mismatch"  # steps whose recomputed metrics differ from the values MLflow kept
ORPHAN_TAG = "dsl.orphan"  # a run of a trial Tune forgot (driver killed): ended and deleted
ORPHAN_REASON_TAG = "dsl.orphan_reason"
RERUN_AS_TAG = "dsl.rerun_as"  # the trial id the orphan's configuration ran again under
BEST_TAG = "dsl.best"  # `dsl-sweep best` picked this trial (on the trial's run) ...
BEST_ITERATION_TAG = "dsl.best_iteration"  # ... at this iteration (on the trial's and the parent's run)

# --- the sweep's parent run ----------------------------------------------------------------------------------
RESUMED_TAG = "dsl.resumed"  # the sweep was continued with --resume
TOP_TRIAL_TAG = "dsl.top_trial_id"  # the sweep's own (self-graded) top trial
TRIALS_ERRORED_TAG = "dsl.trials_errored"
BEST_RUN_TAG = "dsl.best_run_id"  # the run `dsl-sweep best` picked
TOP_OBJECTIVE_METRIC = "top_objective"
SWEEP_SECONDS_METRIC = "sweep_seconds"  # the sweep's wall time, on the parent
SELECTION_RUN_TAG = "dsl.selection_run_id"  # the `selection` run of `dsl-sweep best`
SETTINGS_PREFIX = "sweep."  # params: the sweep's settings (`sweep_settings.SweepSettings`)
BASE_PREFIX = "base."  # params: the sweep's base config

# --- `dsl-sweep best`: the selection run (child of the parent) and its chain runs --------------------------------
ROLE_SELECTION, ROLE_SELECTION_CHAIN = "selection", "selection_chain"
SELECTION_CHAIN_TAG = "dsl.selection_chain"  # <stage>/<candidate>/seed<N>: finds a chain's run again on resume
STAGE_TAG = "dsl.stage"  # race | exam
CANDIDATE_TAG = "dsl.candidate"
SEED_TAG = "dsl.seed"
SECONDS_TAG = "dsl.seconds"
SURVIVORS_TAG = "dsl.survivors"  # the race's survivors after the last round
# the decision, on the selection run and the parent (and, with the final model's figures, on the final-model run)
VERDICT_TAG = "dsl.verdict"
SELECTION_PROTOCOL_TAG = "dsl.selection_protocol"
SIGNIFICANT_TAG = "dsl.significant"
BEST_CONFIG_TAG = "dsl.best_config"
HOLDOUT_TAG = "dsl.holdout"
RACE_UA_METRIC, RACE_CHAINS_METRIC = "race_ua", "race_chains"
HOLDOUT_UA_METRIC, HOLDOUT_WA_METRIC = "holdout_ua", "holdout_wa"
HOLDOUT_REFERENCE_UA_METRIC, HOLDOUT_GAIN_UA_METRIC = "holdout_reference_ua", "holdout_gain_ua"
OPTIMISM_METRIC = "optimism"  # ranking-stage score minus holdout score, within one protocol

# --- the final model's run and its registered version ---------------------------------------------------------
SOURCE_RUN_TAG = "dsl.source_run_id"  # the trial run whose config the model was trained with
RACE_UA_TAG = "dsl.race_ua"  # the winner's race mean [interval]
RACE_SEEDS_TAG = "dsl.race_seeds"
HOLDOUT_UA_TAG = "dsl.holdout_ua"  # the final exam: the winner's holdout UA [interval]
HOLDOUT_GAIN_UA_TAG = "dsl.holdout_gain_ua"  # paired gain over the reference [interval]
HOLDOUT_REFERENCE_TAG = "dsl.holdout_reference"
OPTIMISM_TAG = "dsl.optimism"
VERSION_TAG_PREFIX = "dsl."  # the registered version carries the final-model run's tags without this prefix

# --- a node's preflight run (deleted at once) -------------------------------------------------------------------
NODE_TAG = "dsl.node"

# --- artifacts --------------------------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"  # a trial's resolved config (and the final model's)
RESULT_ARTIFACT = "result.json"  # a trial's result JSON
PLOT_DIR = "plots"  # a trial's plots
SPEC_ARTIFACT = "sweep.yaml"  # the parent's sweep file
BASE_ARTIFACT = "base.yaml"  # the parent's resolved base config (the final exam's reference is built on it)
HOLDOUT_ARTIFACT = "holdout.json"  # the parent's copy of the holdout assignment
TABLE_ARTIFACT = "trials.txt"  # the parent's trial table
MODEL_ARTIFACT = "model"  # the final model's pyfunc

# MLflow 3's UI opens an experiment in its GenAI overview unless this tag says it holds model-training runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

# --- the metrics of one iteration ------------------------------------------------------------------------------
UA, WA = "ua", "wa"
STEP_KEY = "mean_fold_ua"  # every logged iteration has it: its history gives the steps already logged
# Held-out protocols: share of outer folds whose validation-selected iteration is the one their test fold
# would have preferred (`dsl.protocols.selection.selector_agreement`).
SELECTOR_AGREEMENT = "selector_agreement"
SCALARS = ("wa", "ua", "selected_wa", "selected_ua", SELECTOR_AGREEMENT, "segment_accuracy", "changed_label_share",
           "target_entropy", "epochs", "seconds", "segments_per_second", "alpha", "cached_folds", "fold_trainings")


# Per test condition (eval.noise / eval.adversarial, `dsl.robustness.conditions`): `<metric>/<condition>`, e.g.
# `ua/white_10dB`, `selected_ua/fgsm_eps0.1`, `ua/noise_mean`.
CONDITION_SCALARS = ("wa", "ua", "selected_wa", "selected_ua", "segment_accuracy")


def condition_metric(metric: str, condition: str) -> str:
    """The MLflow / `tune.report` name of `metric` under test condition `condition`."""
    return f"{metric}/{condition}"


def iteration_metrics(d: Mapping[str, Any]) -> dict[str, float]:
    """The flat metrics of one iteration (an `IterationResult.to_dict()`), for MLflow and `tune.report`:
    wa, ua, mean_fold_ua, segment accuracy, changed-label share, ..., per-fold `fold_wa/i`, `fold_ua/i`, and per
    test condition `ua/<condition>` etc. (`condition_metric`)."""
    out = {k: float(d[k]) for k in SCALARS if d.get(k) is not None and math.isfinite(float(d[k]))}
    out[STEP_KEY] = float(np.mean(d["fold_ua"]))
    out["mean_fold_wa"] = float(np.mean(d["fold_wa"]))
    for name in ("fold_wa", "fold_ua"):
        for i, v in enumerate(d[name]):
            out[f"{name}/{i}"] = float(v)
    for condition, c in (d.get("conditions") or {}).items():
        for k in CONDITION_SCALARS:
            if c.get(k) is not None and math.isfinite(float(c[k])):
                out[condition_metric(k, condition)] = float(c[k])
    for seed, v in zip(d.get("seeds") or (), d.get("seed_ua") or ()):  # objective_seeds > 1: each seed's UA
        out[f"seed_ua/{seed}"] = float(v)
    return out


def flat_params(tree: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params of a nested config: dotted keys, string values."""
    return {k: str(v) for k, v in flatten(tree).items()}


def find_trial_run(c, experiment_id: str, parent_run_id: str, trial_id: str):
    """The run of a Ray trial under the sweep's parent: the earliest, should a trial ever have two (the
    trial logs to it and the driver closes it: both use this lookup)."""
    runs = call(c.search_runs, [experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_id}'", max_results=50)
    runs = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent_run_id]
    return min(runs, key=lambda r: r.info.start_time) if runs else None
