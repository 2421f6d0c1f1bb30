"""Section 3: the whole `cpu` preset chain, the project's runner vs the plain-loop runner of bench/plain_chain.py.

Both go through `dsl.pipeline.chain.run_chain` with the same config (same folds, seeds, rules, evaluation); only
the runner differs. The project's runner is `dsl.pipeline.chain.local_runner` as configured by the preset (folds
in `train.workers` = 2 spawned processes with 1 thread each, channels_last, SegmentBatcher); the plain
runner trains the folds in series in this process with torch's default threads. Wall time covers the
whole chain including the spawn of the project's worker processes and the random-forest evaluation.
"""
from __future__ import annotations

import cProfile
import io
import pstats
import time

import numpy as np

from .common import torch_threads


def _iterations(result) -> list[dict]:
    return [{"iteration": r.iteration, "ua": r.ua, "wa": r.wa, "mean_fold_ua": r.mean_fold_ua,
             "segment_accuracy": r.segment_accuracy, "epochs": r.epochs, "seconds": r.seconds,
             "segments_per_second_per_fold": r.segments_per_second} for r in result.iterations]


def plain_config(cfg):
    """The plain loop's chain: the project's config with the reference training recipe pinned (every
    training segment in every epoch, `PLAIN_RECIPE`), whatever the `cpu` preset trains with."""
    from .plain_chain import PLAIN_RECIPE

    return cfg.replace(**PLAIN_RECIPE)


def _describe(cfg) -> dict:
    t = cfg.train
    return {"backbone": cfg.backbone, "folds": cfg.protocol.folds, "iterations": cfg.iterations,
            "segment_hop": cfg.segments.hop, "epochs": t.epochs, "patience": t.patience, "lr": t.lr,
            "epoch_fraction": t.epoch_fraction, "workers": t.workers, "num_threads": t.num_threads,
            "channels_last": t.channels_last}


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def run_chains(data, cfg, seeds=(0,), log=print, shrink: dict | None = None) -> dict:
    """Both runners on the same chain for each seed, alternating (project first); totals and mean UAs.
    `shrink`: overrides applied to both sides after the plain recipe (a quick run)."""
    from dsl.pipeline.chain import run_chain

    from .plain_chain import plain_runner

    plain_cfg = plain_config(cfg).replace(**(shrink or {}))
    out: dict = {"config": {**_describe(cfg), "seeds": list(seeds)}, "plain_config": _describe(plain_cfg),
                 "runs": []}
    for seed in seeds:
        ours_cfg, ref_cfg = cfg.replace(seed=seed), plain_cfg.replace(seed=seed)
        row: dict = {"seed": seed}
        with torch_threads(None):
            start = time.perf_counter()
            ours = run_chain(ours_cfg, data, show_progress=False)
            row["project_seconds"] = time.perf_counter() - start
        row["project"] = _iterations(ours)
        log(f"  seed {seed} project: {row['project_seconds']:.1f} s, UA " +
            ", ".join(f"it{r['iteration']} {100 * r['ua']:.2f} %" for r in row["project"]), flush=True)
        start = time.perf_counter()
        plain = run_chain(ref_cfg, data, runner=plain_runner(data, ref_cfg), show_progress=False)
        row["plain_seconds"] = time.perf_counter() - start
        row["plain"] = _iterations(plain)
        log(f"  seed {seed} plain  : {row['plain_seconds']:.1f} s, UA " +
            ", ".join(f"it{r['iteration']} {100 * r['ua']:.2f} %" for r in row["plain"]), flush=True)
        out["runs"].append(row)
        out["n_segments"] = ours.n_segments
    runs = out["runs"]
    out["project_seconds"] = sum(r["project_seconds"] for r in runs)
    out["plain_seconds"] = sum(r["plain_seconds"] for r in runs)
    out["speedup"] = out["plain_seconds"] / out["project_seconds"]
    n_it = len(runs[0]["project"])
    for side in ("project", "plain"):
        out[f"{side}_mean_ua"] = [_mean([r[side][i]["ua"] for r in runs]) for i in range(n_it)]
        out[f"{side}_mean_wa"] = [_mean([r[side][i]["wa"] for r in runs]) for i in range(n_it)]
    out["ua_difference_project_minus_plain"] = [a - b for a, b in zip(out["project_mean_ua"], out["plain_mean_ua"])]
    out["meets_3x"] = out["speedup"] >= 3.0
    # the chain's result is its last iteration: that UA must be equal or better
    out["equal_or_better_ua"] = out["ua_difference_project_minus_plain"][-1] >= 0.0
    return out


def _top(profile: cProfile.Profile, n: int = 12) -> list[dict]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]  # type: ignore[attr-defined]
    out = []
    for (file, line, func), (_, nc, tt, _, _) in rows:
        where = func if file == "~" else f"{'/'.join(file.split('/')[-2:])}:{line}({func})"
        out.append({"function": where, "calls": nc, "tottime_s": round(tt, 2), "share": round(tt / max(total, 1e-9), 3)})
    return out


def profile_one_fold(data, cfg, shrink: dict | None = None) -> dict:
    """cProfile of fold 0 of iteration 0 trained both ways (project at the preset's 1 thread, plain at default)."""
    from dsl.data.segments import build_segments
    from dsl.method.rules import one_hot
    from dsl.pipeline.chain import FoldJob, derive_seed, run_fold_job
    from dsl.protocols.plans import make_plan

    from .plain_chain import plain_fit_predict

    seg = build_segments(data.frame_offsets, cfg.segments, warn=False)
    plan = make_plan(data.labels, data.speakers, cfg.protocol, cfg.seed)
    scope, fold = plan.scopes[0], plan.scopes[0].folds[0]
    job = FoldJob.of(0, 0, 0, np.setdiff1d(scope.train, fold), np.concatenate([fold, scope.test]),
                     one_hot(data.labels[seg.utt], data.n_classes), derive_seed(cfg.seed, 0, 0, 0), seg)
    out = {}
    for name, fn, threads in (("project", lambda: run_fold_job(job, data, cfg, seg), cfg.train.num_threads or None),
                              ("plain", lambda: plain_fit_predict(job, data, plain_config(cfg).replace(**(shrink or {})), seg), None)):
        with torch_threads(threads):
            prof = cProfile.Profile()
            start = time.perf_counter()
            prof.enable()
            res = fn()
            prof.disable()
            out[name] = {"seconds": time.perf_counter() - start, "epochs": res.epochs,
                         "segments_per_second": res.segments_per_second, "top_tottime": _top(prof)}
    return out
