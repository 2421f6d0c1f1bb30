"""`python -m bench.run [--quick] [--only NAME[,NAME]] [--out bench/results.json]`: run the benchmarks.

Sections (issue #5): `features` (log-Mel extraction), `throughput` (training segments/s per backbone),
`chain` (the whole `cpu` preset chain, project vs plain loop), `sweep` (per-trial overhead in Ray Tune as a
share of a `cpu` chain, shared feature memory, and the quick example sweep with and without the step cache
and as a plain Ray Tune + OptunaSearch sweep, for `--trials` 8,24). Every ratio is measured side by side in this one run; absolute timings depend on the
machine and on whatever else runs on it. Results go to the JSON file (rewritten after each section) and
to a generated section of bench/RESULTS.md (text outside the generated markers is kept).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

from .common import REPO, Skip, cache_dir, default_threads, device_description, load_average, require_emodb

SECTIONS = ("features", "throughput", "chain", "sweep")
# Run order: the long chain comparison early, the per-backbone throughput (vgg19 is slow) last.
RUN_ORDER = ("features", "chain", "sweep", "throughput")
ALL_BACKBONES = ("small_cnn", "densenet22", "mobilenetv2_100", "efficientnet_b0", "vgg19")
QUICK_FEATURE_FILES = 60


def log(*args, **kwargs) -> None:
    print(*args, **{"flush": True, **kwargs})


def _cpu_cfg():
    from dsl.config import load_config

    root = require_emodb()
    return load_config(preset_name="cpu", overrides={"data": str(root), "cache_dir": cache_dir()})


def _data(cfg):
    from dsl.data.bundle import prepare_data

    return prepare_data(cfg, show_progress=False)


def section_features(args, state) -> dict:
    from .features import run_features

    root = require_emodb()
    paths = sorted(root.rglob("*.wav"))
    if args.quick:
        paths = paths[:QUICK_FEATURE_FILES]
    res = run_features(paths, repeats=2 if args.quick else 3)
    log(f"  {res['files']} files: plain {res['plain_files_per_s']:.1f} files/s, project {res['project_files_per_s']:.1f} "
        f"files/s ({res['speedup_end_to_end']:.2f}x end to end, {res['speedup_feature_only']:.2f}x features only); "
        f"max |dlogMel| above floor {res['equality']['max_abs_logmel_above_floor']:.2e}, "
        f"all bins {res['equality']['max_abs_logmel_all_bins']:.2e}")
    return res


def section_throughput(args, state) -> dict:
    from .throughput import run_throughput

    cfg = state.setdefault("cfg", _cpu_cfg())
    data = state.setdefault("data", _data(cfg))
    backbones = args.backbones.split(",") if args.backbones else list(ALL_BACKBONES)
    return run_throughput(data, cfg.segments, backbones, quick=args.quick, log=log)


def section_chain(args, state) -> dict:
    from .chain_bench import profile_one_fold, run_chains

    cfg = state.setdefault("cfg", _cpu_cfg())
    data = state.setdefault("data", _data(cfg))
    seeds = [int(x) for x in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    shrink = {}
    if args.quick:
        shrink = {"protocol.folds": 2, "train.epochs": 2, "segments.hop": 16, "iterations": 1}
        cfg = cfg.replace(**shrink)
        log("  --quick: 2 folds, 2 epochs, segment hop 16")
    res = run_chains(data, cfg, seeds, log=log, shrink=shrink)
    log(f"  speedup {res['speedup']:.2f}x, mean UA difference of the last iteration "
        f"{100 * res['ua_difference_project_minus_plain'][-1]:+.2f} pt (requirement >= 3x at equal or better UA: "
        f"{'met' if res['meets_3x'] and res['equal_or_better_ua'] else 'NOT met'})")
    if args.profile or (not res["meets_3x"] and not args.quick):
        log("  profiling fold 0 of iteration 0 both ways (cProfile)")
        res["profile"] = profile_one_fold(data, cfg, shrink)
    return res


def section_sweep(args, state) -> dict:
    from .sweep import run_sweep

    cfg = state.setdefault("cfg", _cpu_cfg())
    data = state.setdefault("data", _data(cfg))
    counts = [int(x) for x in args.trials.split(",") if x.strip()] if args.trials else None
    plain = [int(x) for x in args.plain_trials.split(",") if x.strip()] if args.plain_trials else None
    return run_sweep(data, cfg, quick=args.quick, log=log, trial_counts=counts, save=state["save_partial"],
                     plain_counts=plain)


RUNNERS = {"features": section_features, "throughput": section_throughput, "chain": section_chain,
           "sweep": section_sweep}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (minutes): fewer files/steps/folds, no vgg19/efficientnet")
    p.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--out", default=str(REPO / "bench" / "results.json"), help="JSON results file")
    p.add_argument("--md", default=str(REPO / "bench" / "RESULTS.md"), help="markdown file to update ('' to skip)")
    p.add_argument("--backbones", default="", help="comma-separated backbones for the throughput section")
    p.add_argument("--seeds", default="", help="comma-separated chain seeds for the chain section (default 0,1,2; --quick: 0)")
    p.add_argument("--trials", default="", help="comma-separated trial counts of the sweep section's quick example "
                   "sweep (default 8,24; --quick: 4)")
    p.add_argument("--plain-trials", default="", help="trial counts at which the sweep section also runs the plain "
                   "Ray Tune + OptunaSearch sweep (default: every --trials count)")
    p.add_argument("--profile", action="store_true", help="always profile one fold in the chain section")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(RUN_ORDER)
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    os.environ.setdefault("DSL_PROGRESS", "0")
    import torch

    from dsl.runtime.environment import machine_info

    argv_text = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    meta = {
        "command": f"python -m bench.run {argv_text}".strip(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device_description(), "cpu_flags": machine_info()["cpu_flags"], "python": platform.python_version(), "torch": torch.__version__,
        "torch_default_threads": default_threads(), "quick": args.quick, "load_average_start": load_average(),
        "note": "ratios are measured side by side in one run; absolute timings are noisy (other jobs share the CPU)",
    }
    results: dict = {"meta": meta, "sections": {}}
    state: dict = {}
    log(f"device: {meta['device']}; CPU flags: {', '.join(meta['cpu_flags']) or 'none read'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name in only:
        log(f"[{name}]")
        t0 = time.perf_counter()

        def save_partial(partial: dict, name: str = name) -> None:  # a killed run keeps the parts measured so far
            results["sections"][name] = {**partial, "partial": True}
            meta["total_seconds"] = time.perf_counter() - started
            out.write_text(json.dumps(results, indent=2, default=float))

        state["save_partial"] = save_partial
        try:
            res = RUNNERS[name](args, state)
            res["section_seconds"] = time.perf_counter() - t0
        except Skip as exc:
            res = {"skipped": str(exc)}
            log(f"  skipped: {exc}")
        except Exception as exc:  # one broken section must not lose the others
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            log(f"  error: {res['error']}")
        res["load_average_after"] = load_average()
        results["sections"][name] = res
        meta["total_seconds"] = time.perf_counter() - started
        meta["load_average_end"] = load_average()
        out.write_text(json.dumps(results, indent=2, default=float))
    log(f"results: {out}")
    if args.md:
        from .report import update_markdown

        update_markdown(Path(args.md), results)
        log(f"markdown: {args.md}")
    failed = [n for n, r in results["sections"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
