"""Replicate studies: the same chain under several seeds (new folds, initialisation and forest).

One seed's fold WA/UA move by several points from seed to seed, as much as the differences between
rules, so a claim needs replicates. Each seed's result JSON is written the moment it is done
(`<study>.seeds/seed<N>.json`), so a long study can stop at any time and be resumed: a seed whose file
holds the same config is read back, not run again. The study JSON aggregates, per iteration, the mean,
standard deviation and 95 % interval of WA and UA and the *paired* gain over iteration 0.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dsl.config import ChainConfig
from dsl.data.bundle import CorpusData
from dsl.execution.step_cache import StepCache
from dsl.pipeline.chain import ChainResult, run_chain
from dsl.results.study import finished_seed, seed_path, study_dict, write_json
from dsl.runtime.environment import machine_info
from dsl.runtime.notes import add_note
from dsl.runtime.paths import write_elsewhere


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
        try:
            write_json(d, path)
        except OSError as exc:  # after the up-front check: the disk filled up or went read-only meanwhile
            folder = write_elsewhere(lambda f: write_json(d, f / path.name), f"{study_path.stem}-seed{seed}")
            add_note(exc, f"seed {seed}'s result is kept in {folder / path.name}: copy it to {path} and rerun the "
                          "same command to resume" if folder else f"seed {seed}'s result could not be kept anywhere")
            raise
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
