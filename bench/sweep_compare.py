"""The quick example sweep three ways: with the step cache, without it, and as a plain Ray Tune + OptunaSearch sweep.

(1) `dsl-sweep sweep sweeps/examples/quick_emodb.yaml` as the project runs it (`sweeps.search.launcher.run_sweep`,
MLflow to a SQLite store, step cache on); (2) the same with `step_cache: false`; (3) plain Ray Tune: the
same search space (the sweep's define-by-run `SearchSpace`) under `ray.tune.search.optuna.OptunaSearch`
with the same TPE sampler and seed, the same ASHA settings, concurrency and trial resources, and a
function trainable that loads the corpus (from the feature cache on disk) and calls `dsl.pipeline.chain.run_chain`,
reporting each iteration; no sharing, no checkpoints, no MLflow. Each variant starts its own Ray and
uses its own fresh storage (so its own, empty step cache). Wall time is the whole call, as a user waits.

The check: every (configuration, iteration) that both the cached and the uncached sweep trained has
identical WA and UA (read back from the trials' MLflow child runs). TPE and ASHA see results in an
order that depends on timing, so the two sweeps need not sample the same configurations after the
startup trials; configurations sampled by only one of them are counted, not compared.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tracking.schema import TRIAL_TAG

from .common import REPO

QUICK_SWEEP = REPO / "sweeps" / "examples" / "quick_emodb.yaml"
# --quick: the sweep's recipe reduced so 3 x 4 trials take a few minutes on 2 cores.
QUICK_RECIPE = {"segments": {"hop": 32}, "protocol": {"folds": 2, "eval_folds": 5}, "train": {"epochs": 1, "patience": 1}}
QUICK_ITERATIONS = {"low": 1, "high": 2}


def step_cache_supported() -> bool:
    """True once `SweepSpec.step_cache` exists (the step cache of issue 11)."""
    import dataclasses

    from sweeps.search.spec import SweepSpec

    return any(f.name == "step_cache" for f in dataclasses.fields(SweepSpec))


def sweep_raw(data_root: str, cache_dir: str, quick: bool) -> dict[str, Any]:
    """The quick example sweep's YAML mapping, pointed at the data and the feature cache (reduced for --quick)."""
    raw = yaml.safe_load(QUICK_SWEEP.read_text())
    raw["base"]["data"] = data_root
    if cache_dir:
        raw["base"]["cache_dir"] = cache_dir
    if quick:
        for k, v in QUICK_RECIPE.items():
            raw["base"][k] = {**raw["base"].get(k, {}), **v}
        raw["search"]["iterations"] = dict(QUICK_ITERATIONS)
    return raw


def _spec(raw: dict, name: str, storage: str, trials: int, step_cache: bool | None):
    from sweeps.search.spec import parse_sweep

    raw = copy.deepcopy(raw)
    raw["name"] = name
    if step_cache is not None:
        raw["step_cache"] = step_cache
    return parse_sweep(raw, None, trials, storage)


def run_project_sweep(raw: dict, trials: int, step_cache: bool | None, workdir: Path) -> dict[str, Any]:
    """One `run_sweep` in a fresh storage and MLflow store; per-trial metrics read back from MLflow."""
    from sweeps.search.launcher import run_sweep

    label = "cache" if step_cache else "nocache"
    storage = workdir / f"{label}-{trials}"
    storage.mkdir(parents=True)
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    spec = _spec(raw, f"bench_{label}_{trials}", str(storage / "ray"), trials, step_cache)
    start = time.perf_counter()
    outcome = run_sweep(spec, tracking_uri=uri, trials=trials)
    wall = time.perf_counter() - start
    runs = trial_metrics(uri, outcome.experiment_id, outcome.parent_run_id)
    return {"wall_seconds": wall, "trials": trials, "errors": outcome.errors, "interrupted": outcome.interrupted,
            "runs": runs, "iterations_trained": sum(len(r["ua"]) for r in runs),
            "iterations_from_cache": sum(len(r["cached"]) for r in runs),
            "folds_from_cache": sum(r["cached_folds"] for r in runs)}


def trial_metrics(uri: str, experiment_id: str, parent_run_id: str) -> list[dict[str, Any]]:
    """Per child run: the trial's configuration (its MLflow params), per-iteration UA/WA and cached iterations."""
    from tracking.sweep_runs import SweepRun

    out = []
    for t in SweepRun(uri, experiment_id, parent_run_id).trial_histories(("ua", "wa", "cached_folds")):
        out.append({"trial_id": t.trial_id, "config": config_key(t.params), "ua": t.metrics["ua"],
                    "wa": t.metrics["wa"], "cached_folds": int(sum(t.metrics["cached_folds"].values())),
                    "cached": t.cached_iterations})
    return out


# Params that say how a trial ran, not what it computed.
EXECUTION_PARAMS = (TRIAL_TAG, "train.workers", "train.num_threads", "cache_dir", "data")


def config_key(params: dict[str, str]) -> str:
    return "|".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in EXECUTION_PARAMS)


def compare_metrics(cached: list[dict], uncached: list[dict]) -> dict[str, Any]:
    """Every (configuration, iteration) trained in both sweeps: WA and UA must be identical."""
    by_cfg: dict[str, list[dict]] = {}
    for r in uncached:
        by_cfg.setdefault(r["config"], []).append(r)
    compared, max_diff, mismatches = 0, 0.0, []
    for r in cached:
        for other in by_cfg.get(r["config"], []):
            for metric in ("ua", "wa"):
                for it in sorted(set(r[metric]) & set(other[metric])):
                    d = abs(r[metric][it] - other[metric][it])
                    compared += 1
                    max_diff = max(max_diff, d)
                    if d > 0:
                        mismatches.append({"trial": r["trial_id"], "iteration": it, "metric": metric, "diff": d})
    configs_both = len({r["config"] for r in cached} & set(by_cfg))
    return {"values_compared": compared, "configs_in_both": configs_both,
            "configs_only_cached": len({r["config"] for r in cached} - set(by_cfg)),
            "configs_only_uncached": len(set(by_cfg) - {r["config"] for r in cached}),
            "max_abs_difference": max_diff, "mismatches": mismatches[:20],
            "identical": compared > 0 and not mismatches}


# ------------------------------------------------------------------------------------------- plain Ray Tune

def plain_trial(config: dict, base: dict) -> None:
    """Function trainable of the plain sweep: load the corpus, run the chain, report every iteration."""
    import torch
    from ray import tune

    from dsl.config import from_dict
    from dsl.data.bundle import prepare_data
    from dsl.pipeline.chain import run_chain
    from dsl.pipeline.trial_config import trial_config

    torch.set_num_threads(1)
    cfg = trial_config(from_dict(base), config).replace(**{"train.workers": 1, "train.num_threads": 1})
    data = prepare_data(cfg, show_progress=False)

    def report(r) -> None:
        tune.report({"objective": float(r.ua), "ua": float(r.ua), "wa": float(r.wa), "iteration": int(r.iteration)})

    run_chain(cfg, data, show_progress=False, on_iteration=report)


def run_plain_sweep(raw: dict, trials: int, workdir: Path) -> dict[str, Any]:
    """Ray Tune + OptunaSearch over the sweep's space; the chain called as a library, nothing shared."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.search.searcher import make_sampler

    storage = workdir / f"plain-{trials}"
    storage.mkdir(parents=True)
    spec = _spec(raw, f"bench_plain_{trials}", str(storage), trials, None if not step_cache_supported() else False)
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DSL_PROGRESS": "0", "RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    try:
        searcher = OptunaSearch(space=spec.space, metric="objective", mode="max", sampler=make_sampler(spec.sampler))
        scheduler = None
        if spec.scheduler is not None:
            scheduler = ASHAScheduler(time_attr="iteration", max_t=max(1, spec.max_iterations()),
                                      grace_period=spec.scheduler.grace_period,
                                      reduction_factor=spec.scheduler.reduction_factor)
        resources = {"cpu": spec.resources.cpu, **({"gpu": spec.resources.gpu} if spec.resources.gpu else {})}
        trainable = tune.with_resources(tune.with_parameters(plain_trial, base=spec.base.to_dict()), resources)
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=trials, max_concurrent_trials=spec.max_concurrent,
            metric="objective", mode="max"),
            run_config=tune.RunConfig(name=spec.name, storage_path=str(storage), verbose=0))
        results = tuner.fit()
    finally:
        ray.shutdown()
    wall = time.perf_counter() - start
    errors = sum(r.error is not None for r in results)
    return {"wall_seconds": wall, "trials": trials, "errors": errors,
            "iterations_trained": sum(int(r.metrics.get("iteration", -1)) + 1 for r in results if r.metrics)}


# ------------------------------------------------------------------------------------------------ driver

def run_three_ways(data_root: str, cache_dir: str, trial_counts: list[int], quick: bool,
                   save: Callable[[dict], None], log=print, plain_counts: list[int] | None = None) -> dict[str, Any]:
    """For each number of trials: cached, uncached, plain (only at `plain_counts` if given); results handed to
    `save` after each part."""
    os.environ["DSL_PROGRESS"] = "0"
    raw = sweep_raw(data_root, cache_dir, quick)
    supported = step_cache_supported()
    out: dict[str, Any] = {"sweep_file": str(QUICK_SWEEP.relative_to(REPO)), "quick_recipe": QUICK_RECIPE if quick else None,
                           "step_cache_supported": supported, "by_trials": {}}
    if not supported:
        out["note"] = ("this checkout has no step cache (SweepSpec.step_cache): the cached variant is skipped and "
                       "the project sweep runs as it is")
        log(f"  {out['note']}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="dsl-bench-sweeps-"))
    try:
        for n in trial_counts:
            row: dict[str, Any] = {}
            out["by_trials"][str(n)] = row
            variants = [("cache", True), ("nocache", False)] if supported else [("nocache", None)]
            for label, flag in variants:
                log(f"  {n} trials, project sweep, step cache {'on' if flag else 'off'}:", flush=True)
                try:
                    row[label] = run_project_sweep(raw, n, flag, workdir)
                except Exception as exc:  # keep what the other variants measure
                    row[label] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"    {_wall(row[label])}", flush=True)
                save(out)
            if plain_counts is None or n in plain_counts:
                log(f"  {n} trials, plain Ray Tune + OptunaSearch:", flush=True)
                try:
                    row["plain"] = run_plain_sweep(raw, n, workdir)
                except Exception as exc:
                    row["plain"] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"    {_wall(row['plain'])}", flush=True)
            summarise(row)
            for k in ("nocache_over_cache", "plain_over_cache", "plain_over_nocache"):
                if k in row:
                    log(f"  {n} trials: {k.replace('_over_', '/')} = {row[k]:.2f}x", flush=True)
            if "identical" in row:
                eq = row["identical"]
                log(f"  {n} trials: per-iteration WA/UA with vs without the cache: "
                    f"{'PASS' if eq['identical'] else 'FAIL'} ({eq['values_compared']} values of {eq['configs_in_both']} "
                    f"configurations compared, max |diff| {eq['max_abs_difference']:.3g})", flush=True)
            save(out)
        counts = [str(n) for n in trial_counts if "nocache_over_cache" in out["by_trials"][str(n)]]
        if len(counts) >= 2:
            ratios = [out["by_trials"][n]["nocache_over_cache"] for n in counts]
            out["ratio_grows_with_trials"] = all(b >= a for a, b in zip(ratios, ratios[1:]))
            out["meets_2x"] = all(r >= 2 for r in ratios)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def summarise(row: dict[str, Any]) -> None:
    """Ratios of wall times, and the equality check of cached vs computed metrics, into `row`."""
    wall = {k: v.get("wall_seconds") for k, v in row.items() if isinstance(v, dict) and "wall_seconds" in v}
    if "cache" in wall and "nocache" in wall:
        row["nocache_over_cache"] = wall["nocache"] / wall["cache"]
    if "cache" in wall and "plain" in wall:
        row["plain_over_cache"] = wall["plain"] / wall["cache"]
    if "nocache" in wall and "plain" in wall:
        row["plain_over_nocache"] = wall["plain"] / wall["nocache"]
    if "runs" in row.get("cache", {}) and "runs" in row.get("nocache", {}):
        row["identical"] = compare_metrics(row["cache"]["runs"], row["nocache"]["runs"])


def _wall(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error'][:300]}"
    extra = ""
    if "iterations_from_cache" in r:
        extra = f", {r['iterations_trained']} trial-iterations, {r['iterations_from_cache']} served from the cache"
        if "folds_from_cache" in r:
            extra += f" ({r['folds_from_cache']} fold trainings)"
    return f"{r['wall_seconds']:.1f} s ({r['trials']} trials, {r['errors']} errors{extra})"
