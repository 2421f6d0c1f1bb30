"""Section 4: sweeps in Ray Tune: per-trial overhead, memory of shared features, and the quick sweep three ways.

Overhead (`bench.trial_overhead`): trials of the project's trainable with MLflow tracking, profiled,
against a `cpu`-preset chain called directly in this process. The quick example sweep with and without
the step cache and as plain Ray Tune + OptunaSearch: `bench.sweep_compare`.

Memory of the shared features: the corpus frames go into the object store once
(`trainables.shared_data.with_corpus`, or `ray.put` + `tune.with_parameters` when that module is missing)
and every trial receives a read-only view of the object-store buffer. An instrumented function trainable
(`feature_probe`, below) reads `/proc/self/smaps_rollup` before and after touching every page of the
frames, and again after making a private copy (a control that shows what a copy would cost), then runs
a short chain on the shared view. The memory the features cost a sweep of n concurrent trials is

    F (the one object-store copy, in /dev/shm) + sum over trials of the private (USS) growth on touching,

where USS = Private_Clean + Private_Dirty: pages that only that process holds. RSS would count the shared
object-store pages once per process (4 x F for 4 trials even though they exist once), so RSS is the wrong
sum; PSS (shared pages divided by the number of processes mapping them) is reported too. The driver also
samples the summed USS/PSS/RSS of all Ray worker processes every 0.25 s and keeps the peaks, which is the
whole-trial memory (torch, the model, the per-fold normalised copy), not only the features.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any

import numpy as np

from .common import Skip, mib, process_cmdlines, smaps_rollup

PAGE = 4096


def short_chain_overrides(quick: bool) -> dict[str, Any]:
    """A short chain: iteration 0 only, 2 folds, 1 epoch (segment hop 16 in --quick)."""
    return {"iterations": 0, "protocol.folds": 2, "protocol.eval_folds": 5, "train.epochs": 1,
            "segments.hop": 16 if quick else 8, "train.workers": 1, "train.num_threads": 1}


def touch(frames: np.ndarray) -> float:
    """Read one value of every page (faults the whole buffer into this process); returns a checksum."""
    flat = frames.reshape(-1)
    step = max(1, PAGE // flat.itemsize)
    return float(flat[::step].sum())


def feature_probe(config: dict, frames: np.ndarray, meta) -> None:
    """Function trainable: memory deltas of touching the shared frames and of a private copy, then a short chain."""
    from ray import tune

    from dsl.config import from_dict
    from dsl.pipeline.chain import run_chain

    before = smaps_rollup()
    touch(frames)
    after = smaps_rollup()
    copy = np.array(frames)  # control: what a per-trial copy costs
    touch(copy)
    after_copy = smaps_rollup()
    del copy
    time.sleep(float(config.get("hold_s", 0)))  # keep the view mapped while the other trials map it too
    data = _attach(frames, meta)
    start = time.perf_counter()
    result = run_chain(from_dict(config["cfg"]), data, show_progress=False)
    end = smaps_rollup()
    tune.report({
        "pid": os.getpid(), "frames_bytes": int(frames.nbytes),
        "frames_writeable": bool(frames.flags.writeable), "frames_owndata": bool(frames.flags.owndata),
        "touch_delta_uss": after["uss"] - before["uss"], "touch_delta_pss": after["Pss"] - before["Pss"],
        "touch_delta_rss": after["Rss"] - before["Rss"], "touch_delta_shared": after["shared"] - before["shared"],
        "copy_delta_uss": after_copy["uss"] - after["uss"],
        "uss_after_chain": end["uss"], "rss_after_chain": end["Rss"],
        "chain_seconds": time.perf_counter() - start, "ua": float(result.iterations[-1].ua),
    })


def _attach(frames, meta):
    try:
        from trainables.shared_data import attach

        return attach(frames, meta)
    except ImportError:
        from dsl.data.bundle import CorpusData

        return CorpusData(frames=frames, **meta)


def _share(trainable, data):
    """`with_corpus` from trainables when present, else the same idea with `ray.put` + `tune.with_parameters`."""
    from ray import tune

    try:
        from trainables.shared_data import with_corpus

        return with_corpus(trainable, data), "trainables.shared_data.with_corpus"
    except ImportError:
        import ray

        meta = {"frame_offsets": data.frame_offsets, "labels": data.labels, "speakers": data.speakers,
                "label_names": data.label_names, "paths": data.paths}
        return tune.with_parameters(trainable, frames=ray.put(np.asarray(data.frames)), meta=meta), "ray.put (fallback)"


class MemorySampler:
    """Samples the summed USS/PSS/RSS of this driver's Ray worker processes (`ray::...`, not idle) in a thread.

    Only descendants of this process count (the raylet started by `ray.init` is our child), so Ray
    workers of other jobs on the same machine are left out."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak = interval, {"uss": 0, "Pss": 0, "Rss": 0, "processes": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = {"uss": 0, "Pss": 0, "Rss": 0, "processes": 0}
            for pid, cmd in process_cmdlines(os.getpid()).items():
                if cmd.startswith("ray::") and not cmd.startswith("ray::IDLE"):
                    m = smaps_rollup(pid)
                    if m:
                        for k in ("uss", "Pss", "Rss"):
                            total[k] += m[k]
                        total["processes"] += 1
            for k, v in total.items():
                self.peak[k] = max(self.peak[k], v)
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _tune(trainable, param_space: dict, n_concurrent: int, storage: str, name: str):
    from ray import tune

    tuner = tune.Tuner(trainable, param_space=param_space,
                       tune_config=tune.TuneConfig(max_concurrent_trials=n_concurrent),
                       run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0))
    results = tuner.fit()
    errors = [str(r.error) for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed: {errors[0][:2000]}")
    return results


def _memory_run(data, cfg, n: int, storage: str, hold_s: float) -> dict:
    from ray import tune

    trainable, how = _share(feature_probe, data)
    trainable = tune.with_resources(trainable, {"cpu": 1})
    space = {"i": tune.grid_search(list(range(n))), "hold_s": hold_s, "cfg": cfg.to_dict()}
    start = time.perf_counter()
    with MemorySampler() as sampler:
        results = _tune(trainable, space, n, storage, f"bench-memory-{n}")
    metrics = [r.metrics for r in results]
    f = metrics[0]["frames_bytes"]
    uss = [m["touch_delta_uss"] for m in metrics]
    return {
        "trials": n, "shared_by": how, "seconds": time.perf_counter() - start, "frames_mib": mib(f),
        "frames_read_only_view": all(not m["frames_writeable"] and not m["frames_owndata"] for m in metrics),
        "per_trial_touch_delta_uss_mib": [mib(x) for x in uss],
        "per_trial_touch_delta_pss_mib": [mib(m["touch_delta_pss"]) for m in metrics],
        "per_trial_touch_delta_rss_mib": [mib(m["touch_delta_rss"]) for m in metrics],
        "per_trial_copy_control_delta_uss_mib": [mib(m["copy_delta_uss"]) for m in metrics],
        "feature_memory_mib": mib(f + sum(max(0, x) for x in uss)),  # object store copy + private growth
        "feature_memory_if_copied_mib": mib(f + sum(m["copy_delta_uss"] for m in metrics)),
        "peak_sum_uss_workers_mib": mib(sampler.peak["uss"]), "peak_sum_pss_workers_mib": mib(sampler.peak["Pss"]),
        "peak_sum_rss_workers_mib": mib(sampler.peak["Rss"]), "peak_worker_processes": sampler.peak["processes"],
        "ua": [round(m["ua"], 4) for m in metrics],
    }


def overhead_configs(base_cfg, quick: bool):
    """(the `cpu` chain whose wall time the overhead is a share of, the chain the overhead trials run).

    Full: the `cpu` preset as a user runs it (2 workers x 1 thread), and the quick example sweep's recipe
    (hop 16, 3 folds, 3 epochs) with the preset's iterations, so a trial reports, checkpoints and logs as
    many iterations as a `cpu` chain. --quick: one reduced chain for both."""
    short = base_cfg.replace(**{"segments.hop": 16, "protocol.folds": 3, "train.epochs": 3, "train.patience": 2,
                                "train.workers": 1, "train.num_threads": 1})
    if quick:
        short = short.replace(**{"protocol.folds": 2, "train.epochs": 1, "segments.hop": 32})
        return short, short
    return base_cfg, short


def run_sweep(data, base_cfg, quick: bool = False, log=print, trial_counts: list[int] | None = None,
              save=lambda partial: None, plain_counts: list[int] | None = None) -> dict:
    """Per-trial overhead as a share of a `cpu` chain, feature memory of 1 vs 4 concurrent trials, and the
    quick example sweep with/without the step cache and as plain Ray Tune (`bench.sweep_compare`).
    `save(partial)` is called after each part, so a killed run keeps what it measured."""
    try:
        import ray
    except ImportError as exc:
        raise Skip(f"ray is not installed ({exc})") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ["DSL_PROGRESS"] = "0"
    from sweeps.search.session import quiet_ray

    quiet_ray()  # Tune's own tables and progress off (RAY_AIR_NEW_OUTPUT=0, verbose 0), as in a sweep
    from .common import cache_dir, require_emodb
    from .sweep_compare import run_three_ways
    from .trial_overhead import run_overhead

    out: dict[str, Any] = {}
    cpu_cfg, short_cfg = overhead_configs(base_cfg, quick)
    log("  per-trial overhead (project trainable, MLflow to SQLite, trials one after another):", flush=True)
    try:
        out["overhead"] = run_overhead(data, cpu_cfg, short_cfg, k=2 if quick else 3, log=log)
    except Exception as exc:  # keep the other parts
        out["overhead"] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"  overhead: error: {out['overhead']['error']}", flush=True)
    save(out)

    cfg = base_cfg.replace(**short_chain_overrides(quick))
    out["short_chain"] = short_chain_overrides(quick)
    storage = tempfile.mkdtemp(prefix="dsl-bench-ray-")
    start = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    out["ray_init_seconds"] = time.perf_counter() - start
    try:
        hold = 2.0 if quick else 5.0
        one = _memory_run(data, cfg, 1, storage, hold)
        log(f"  1 trial : features {one['feature_memory_mib']} MiB (frames {one['frames_mib']} MiB, "
            f"touch dUSS {one['per_trial_touch_delta_uss_mib']} MiB, copy control {one['per_trial_copy_control_delta_uss_mib']})",
            flush=True)
        four = _memory_run(data, cfg, 4, storage, hold)
        log(f"  4 trials: features {four['feature_memory_mib']} MiB (touch dUSS {four['per_trial_touch_delta_uss_mib']} MiB)",
            flush=True)
        out["memory"] = {"one": one, "four": four,
                         "feature_memory_ratio_4_vs_1": four["feature_memory_mib"] / one["feature_memory_mib"],
                         "feature_memory_ratio_4_vs_1_if_copied":
                             four["feature_memory_if_copied_mib"] / one["feature_memory_if_copied_mib"],
                         "whole_trial_peak_uss_ratio_4_vs_1":
                             four["peak_sum_uss_workers_mib"] / max(one["peak_sum_uss_workers_mib"], 1e-9),
                         "requirement_below_1_5x": four["feature_memory_mib"] / one["feature_memory_mib"] < 1.5}
        log(f"  feature memory 4 vs 1 trials: {out['memory']['feature_memory_ratio_4_vs_1']:.3f}x "
            f"(a copy per trial would be {out['memory']['feature_memory_ratio_4_vs_1_if_copied']:.2f}x)", flush=True)
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(storage, ignore_errors=True)
    save(out)

    counts = trial_counts or ([4] if quick else [8, 24])
    log(f"  quick example sweep three ways, {', '.join(map(str, counts))} trials:", flush=True)

    def save_three(partial: dict) -> None:
        out["three_ways"] = partial
        save(out)

    out["three_ways"] = run_three_ways(str(require_emodb()), cache_dir(), counts, quick, save_three, log, plain_counts)
    return out
