"""Replicate studies: the same chain under several seeds (new folds, initialisation and forest).

One seed's fold WA/UA move by several points from seed to seed, as much as the differences between
rules, so a claim needs replicates. Each seed's result JSON is written the moment it is done
(`<study>.seeds/seed<N>.json`), so a long study can stop at any time and be resumed: a seed whose file
holds the same config is read back, not run again. The study JSON aggregates, per iteration, the mean,
standard deviation and 95 % interval of WA and UA and the *paired* gain over iteration 0.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .chain import ChainResult, run_chain
from .config import ChainConfig
from .data import CorpusData
from .environment import machine_info
from .protocols import is_leak_free
from .stats import mean_interval, paired_gain
from .step_cache import StepCache

log = logging.getLogger(__name__)
STUDY_FORMAT = 1
METRICS = ("wa", "ua", "selected_wa", "selected_ua")


def seeds_dir(study_path: str | Path) -> Path:
    p = Path(study_path)
    return p.with_name(p.stem + ".seeds")


def seed_path(study_path: str | Path, seed: int) -> Path:
    return seeds_dir(study_path) / f"seed{seed}.json"


def write_json(obj: Any, path: str | Path) -> Path:
    """Atomic write: a reader (or a resumed study) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)
    return path


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a config that decide a seed's numbers (execution-only settings are left out)."""
    out = json.loads(json.dumps(config))
    out.pop("seeds", None)
    out.pop("cache_dir", None)
    for k in ("workers", "num_threads", "device"):
        out.get("train", {}).pop(k, None)
    return out


def finished_seed(cfg: ChainConfig, path: Path) -> dict | None:
    """The seed's result on disk if it was computed with this config, else None (and a warning if it differs)."""
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except ValueError:
        log.warning("%s: unreadable, the seed is run again", path)
        return None
    if _comparable(done.get("config", {})) != _comparable(cfg.to_dict()):
        log.warning("%s holds another config: the seed is run again and the file replaced", path)
        return None
    return done


def aggregate(results: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per iteration present in every seed: intervals of WA/UA (and the selected figures, where held out) and
    paired gains over iteration 0."""
    n_it = min(len(r["iterations"]) for r in results)
    rows = []
    for i in range(n_it):
        its = [r["iterations"][i] for r in results]
        row: dict[str, Any] = {"iteration": its[0]["iteration"], "alpha": its[0].get("alpha"),
                               "seconds": mean_interval([it["seconds"] for it in its]).to_dict()}
        for m in METRICS:
            vals = [it.get(m) for it in its]
            if any(v is None for v in vals):
                continue
            row[m] = mean_interval(vals).to_dict()
            if i > 0:
                row[f"gain_{m}"] = paired_gain(vals, [r["iterations"][0][m] for r in results]).to_dict()
        rows.append(row)
    return rows


def study_dict(cfg: ChainConfig, results: Sequence[Mapping[str, Any]], paths: Sequence[Path], study_path: Path,
               command: str) -> dict:
    pr = cfg.protocol
    envs = {r["environment"].get("fingerprint"): r["environment"] for r in results if "environment" in r}
    return {"format": STUDY_FORMAT, "kind": "study", "command": command,
            "protocol": {"name": pr.name, "leak_free": is_leak_free(pr.name), "folds": pr.folds,
                         "inner_folds": pr.inner_folds, "eval_folds": pr.eval_folds},
            "seeds": [int(r["config"]["seed"]) for r in results], "environments": list(envs.values()),
            "config": {**cfg.to_dict(), "seed": None}, "label_names": results[0]["label_names"],
            "n_utterances": results[0]["n_utterances"], "n_segments": results[0]["n_segments"],
            "seconds_per_seed": mean_interval([r["seconds"] for r in results]).to_dict(),
            "seed_files": [os.path.relpath(p, study_path.parent) for p in paths],
            "iterations": aggregate(results)}


def run_replicates(cfg: ChainConfig, data: CorpusData, study_path: str | Path, seeds: Sequence[int] | None = None,
                   jobs: int = 1, show_progress: bool = True, command: str = "",
                   on_seed: Callable[[int, dict, bool], None] | None = None, step_cache: StepCache | None = None) -> dict:
    """Run (or read back) one chain per seed, writing each seed's JSON when done, then the study JSON.

    `jobs` seeds run at once, each with its own fold workers (`train.workers`); `on_seed(seed, result,
    from_disk)` is called as each one finishes.
    """
    study_path = Path(study_path)
    seeds = list(seeds if seeds is not None else cfg.seeds)
    if not seeds:
        raise ValueError("a replicate study needs at least one seed")
    results: dict[int, dict] = {}

    def one(seed: int) -> tuple[dict, bool]:
        scfg = cfg.replace(seed=seed, seeds=[])
        path = seed_path(study_path, seed)
        done = finished_seed(scfg, path)
        if done is not None:
            return done, True
        res: ChainResult = run_chain(scfg, data, show_progress=show_progress and jobs == 1, step_cache=step_cache)
        res.command = command
        d = res.to_dict()
        write_json(d, path)
        return d, False

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pool.submit(one, s): s for s in seeds}
        for fut in futures:  # in seed order; the files are written as each finishes
            seed = futures[fut]
            results[seed], from_disk = fut.result()
            if on_seed is not None:
                on_seed(seed, results[seed], from_disk)
    ordered = [results[s] for s in seeds]
    study = study_dict(cfg.replace(seeds=list(seeds)), ordered, [seed_path(study_path, s) for s in seeds],
                       study_path, command)
    study["environment"] = machine_info()
    write_json(study, study_path)
    return study


def default_jobs(cfg: ChainConfig) -> int:
    """Seeds side by side: as many as the cores hold at `train.workers` x `train.num_threads` each."""
    per_seed = max(1, cfg.train.workers) * max(1, cfg.train.num_threads)
    return max(1, (os.cpu_count() or 1) // per_seed)
