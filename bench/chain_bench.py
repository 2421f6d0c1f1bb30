"""Section 3: the whole `cpu` preset chain, the project's runner vs the plain-loop runner of bench/plain_chain.py.

Both go through `dsl.chain.run_chain` with the same config (same folds, seeds, rules, evaluation); only
the runner differs. The project's runner is `dsl.chain.local_runner` as configured by the preset (folds
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


def run_chains(data, cfg, log=print) -> dict:
    from dsl.chain import run_chain

    from .plain_chain import plain_runner

    out: dict = {"config": {"backbone": cfg.backbone, "folds": cfg.protocol.folds, "iterations": cfg.iterations,
                            "segment_hop": cfg.segments.hop, "epochs": cfg.train.epochs,
                            "patience": cfg.train.patience, "workers": cfg.train.workers,
                            "num_threads": cfg.train.num_threads, "channels_last": cfg.train.channels_last,
                            "seed": cfg.seed}}
    with torch_threads(None):
        start = time.perf_counter()
        ours = run_chain(cfg, data, show_progress=False)
        out["project_seconds"] = time.perf_counter() - start
    out["project"] = _iterations(ours)
    log(f"  project chain: {out['project_seconds']:.1f} s, UA " +
        ", ".join(f"it{r['iteration']} {100 * r['ua']:.2f} %" for r in out["project"]), flush=True)
    start = time.perf_counter()
    plain = run_chain(cfg, data, runner=plain_runner(data, cfg), show_progress=False)
    out["plain_seconds"] = time.perf_counter() - start
    out["plain"] = _iterations(plain)
    log(f"  plain chain  : {out['plain_seconds']:.1f} s, UA " +
        ", ".join(f"it{r['iteration']} {100 * r['ua']:.2f} %" for r in out["plain"]), flush=True)
    out["speedup"] = out["plain_seconds"] / out["project_seconds"]
    out["ua_difference_project_minus_plain"] = [a["ua"] - b["ua"] for a, b in zip(out["project"], out["plain"])]
    out["meets_3x"] = out["speedup"] >= 3.0
    out["n_segments"] = ours.n_segments
    return out


def _top(profile: cProfile.Profile, n: int = 12) -> list[dict]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]  # type: ignore[attr-defined]
    out = []
    for (file, line, func), (cc, nc, tt, ct, _) in rows:
        where = func if file == "~" else f"{'/'.join(file.split('/')[-2:])}:{line}({func})"
        out.append({"function": where, "calls": nc, "tottime_s": round(tt, 2), "share": round(tt / max(total, 1e-9), 3)})
    return out


def profile_one_fold(data, cfg) -> dict:
    """cProfile of fold 0 of iteration 0 trained both ways (project at the preset's 1 thread, plain at default)."""
    from dsl.chain import FoldJob, derive_seed, run_fold_job
    from dsl.protocols import make_plan
    from dsl.rules import one_hot
    from dsl.segments import build_segments

    from .plain_chain import plain_fit_predict

    seg = build_segments(data.frame_offsets, cfg.segments, warn=False)
    plan = make_plan(data.labels, data.speakers, cfg.protocol, cfg.seed)
    scope, fold = plan.scopes[0], plan.scopes[0].folds[0]
    job = FoldJob(0, 0, 0, np.setdiff1d(scope.train, fold), np.concatenate([fold, scope.test]),
                  one_hot(data.labels[seg.utt], data.n_classes), derive_seed(cfg.seed, 0, 0, 0))
    out = {}
    for name, fn, threads in (("project", lambda: run_fold_job(job, data, cfg, seg), cfg.train.num_threads or None),
                              ("plain", lambda: plain_fit_predict(job, data, cfg, seg), None)):
        with torch_threads(threads):
            prof = cProfile.Profile()
            start = time.perf_counter()
            prof.enable()
            res = fn()
            prof.disable()
            out[name] = {"seconds": time.perf_counter() - start, "epochs": res.epochs,
                         "segments_per_second": res.segments_per_second, "top_tottime": _top(prof)}
    return out
