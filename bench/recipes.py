"""Probe `cpu` preset recipe variants: the project's chain on full EmoDB with config overrides, per seed.

    python -m bench.recipes '[{}, {"train.epoch_fraction": 0.5}]' --seeds 0,1 >> bench/results-recipes.jsonl

Prints one JSON line per (variant, seed): wall seconds, UA/WA per iteration, mean epochs. This is how the
variants in bench/RESULTS.md ("what did not pay") were measured; they are not side-by-side ratios.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recipes", description=__doc__.split("\n\n")[0])
    p.add_argument("variants", help='JSON list of dotted-override dicts, e.g. \'[{}, {"train.epochs": 3}]\'')
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    args = p.parse_args(argv)
    os.environ.setdefault("DSL_PROGRESS", "0")
    from dsl.pipeline.chain import run_chain

    from .common import load_average
    from .run import _cpu_cfg, _data

    base = _cpu_cfg()
    data = _data(base)
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in json.loads(args.variants):
            cfg = base.replace(seed=seed, **variant)
            start = time.perf_counter()
            result = run_chain(cfg, data, show_progress=False)
            print(json.dumps({"variant": variant, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
                              "ua": [round(100 * r.ua, 2) for r in result.iterations],
                              "wa": [round(100 * r.wa, 2) for r in result.iterations],
                              "epochs": [r.epochs for r in result.iterations],
                              "iteration_seconds": [round(r.seconds, 1) for r in result.iterations],
                              "load_average": load_average(),
                              "date": dt.datetime.now().astimezone().isoformat(timespec="seconds")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
