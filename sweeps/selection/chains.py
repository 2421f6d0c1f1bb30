"""The chains of a selection (race and final exam): one Ray task each, their results kept on disk one by one.

Each (candidate, seed) chain is a Ray task with the sweep's trial resources (`resources.cpu`/`gpu`; its folds run
in the task), so the chains of one round run side by side over the cluster (`--address`) or the local cores. The
corpus goes into the object store once per part it needs (the search part for the race; the whole corpus for the
final exam, which alone reads the holdout), and every chain shares the sweep's step cache, so candidates that
share a seed's iteration 0 train it once. Each result is written to `<dir>/<stage>/<key>.seeds/seed<N>.json` the
moment it arrives (the replicate studies' layout), so an interrupted `best` reads it back instead of rerunning it.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsl.config import ChainConfig
from dsl.data.bundle import CorpusData
from dsl.results.study import finished_seed, seed_path, write_json
from trainables.context import ResourceSpec, TrialContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainRequest:
    """One chain to run: `stage` (race or exam), the candidate's `key` and `name`, its seed and full config, and
    which part of the corpus it runs on (`search`, or `full` for the final exam)."""

    stage: str
    key: str
    name: str
    seed: int
    config: ChainConfig
    data: str = "search"


class ChainFailed(RuntimeError):
    """Chains of a round failed; the others' results are on disk, so rerunning `best` resumes."""


class ChainStore:
    """The chains' result files under one folder; a file computed with the same config is a finished chain."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def study(self, stage: str, key: str) -> Path:
        """The study path whose `.seeds/` folder holds the chains of candidate `key` in `stage`."""
        return self.root / stage / f"{key}.json"

    def path(self, req: ChainRequest) -> Path:
        return seed_path(self.study(req.stage, req.key), req.seed)

    def done(self, req: ChainRequest) -> dict | None:
        return finished_seed(req.config, self.path(req))

    def save(self, req: ChainRequest, result: Mapping[str, Any]) -> Path:
        return write_json(dict(result), self.path(req))


def execution_config(cfg: ChainConfig, resources: ResourceSpec) -> ChainConfig:
    """A chain as one task: its folds in the task's process, torch threads matching its CPUs, CUDA by name when
    it asks for a GPU (what a sweep trial does, `trainables.chain_trainable.runtime_config`)."""
    from trainables.chain_trainable import runtime_config

    return runtime_config(cfg, TrialContext("selection", cfg, resources=resources))


def run_chain_task(cfg: ChainConfig, frames: Any, meta: Any, step_cache: str, holdout_text: str | None) -> dict:
    """Inside the Ray task: attach the object-store frames, run the chain with the shared step cache. The final
    exam's holdout assignment travels as text (a cluster node may not see the driver's files) and the result
    names the driver's copy again."""
    from dsl.execution.fold_job import release_device_memory
    from dsl.execution.step_cache import StepCache
    from dsl.pipeline.chain import run_chain
    from trainables.shared_data import attach

    data = attach(frames, meta)
    steps = StepCache(step_cache) if step_cache else None
    try:
        if holdout_text is None or not cfg.protocol.holdout:
            return run_chain(cfg, data, show_progress=False, step_cache=steps).to_dict()
        with tempfile.TemporaryDirectory(prefix="dsl-holdout-") as tmp:
            local = Path(tmp) / "holdout.json"
            local.write_text(holdout_text)
            result = run_chain(cfg.replace(**{"protocol.holdout": str(local)}), data, show_progress=False,
                               step_cache=steps).to_dict()
        result["config"]["protocol"]["holdout"] = cfg.protocol.holdout
        return result
    finally:
        release_device_memory()


class RayChains:
    """Runs chain requests as Ray tasks (see the module docstring); `run` yields each (request, result or error)
    as it finishes."""

    def __init__(self, datasets: Mapping[str, CorpusData], resources: ResourceSpec, step_cache: str = "",
                 holdout_text: str | None = None, address: str | None = None):
        self.datasets, self.resources, self.step_cache = dict(datasets), resources, step_cache
        self.holdout_text, self.address = holdout_text, address
        self._shared: dict[str, tuple[Any, Any]] = {}
        self._started = False  # Ray was started (or connected to) here, so `close` shuts it down

    def _ray(self):
        import ray

        if not ray.is_initialized():
            from sweeps.search.session import init_ray, quiet_ray

            self._started = init_ray(self.address, quiet_ray())
        return ray

    def _share(self, name: str) -> tuple[Any, Any]:
        if name not in self._shared:
            from trainables.shared_data import share_corpus

            self._ray()
            self._shared[name] = share_corpus(self.datasets[name])
        return self._shared[name]

    def run(self, requests: Sequence[ChainRequest]) -> Iterator[tuple[ChainRequest, dict | BaseException]]:
        if not requests:
            return
        ray = self._ray()
        task = ray.remote(num_cpus=self.resources.cpu, num_gpus=self.resources.gpu, max_retries=1)(run_chain_task)
        futures = {}
        for req in requests:
            ref, meta = self._share(req.data)
            cfg = execution_config(req.config, self.resources)
            futures[task.remote(cfg, ref, meta, self.step_cache, self.holdout_text if req.data == "full" else None)] = req
        waiting = list(futures)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for fut in done:
                try:
                    yield futures[fut], ray.get(fut)
                except Exception as exc:  # the task's error: reported with its chain, the others go on
                    yield futures[fut], exc

    def close(self) -> None:
        self._shared.clear()
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def run_requests(requests: Sequence[ChainRequest], store: ChainStore, runner: Any, tracker: Any,
                 score_of, on_done=None, round_: int = 0) -> dict[tuple[str, int], dict]:
    """Run (or read back) each request; every result is saved and tracked the moment it is in. Returns
    (key, seed) -> result. Raises `ChainFailed` after the others finished if any chain failed."""
    out: dict[tuple[str, int], dict] = {}
    todo = []
    for req in requests:
        done = store.done(req)
        if done is not None:
            out[(req.key, req.seed)] = done
            tracker.finished(req.stage, req.key, req.name, req.seed, done, score_of(done), round=round_)
            if on_done:
                on_done(req, done, True)
        else:
            todo.append(req)
    for req in todo:
        tracker.started(req.stage, req.key, req.name, req.seed, round=round_)
    failed = []
    start = time.perf_counter()
    for req, result in runner.run(todo):
        if isinstance(result, BaseException):
            failed.append(f"{req.stage} {req.name} seed {req.seed}: {type(result).__name__}: {result}")
            tracker.failed(req.stage, req.key, req.name, req.seed, failed[-1])
            continue
        store.save(req, result)
        out[(req.key, req.seed)] = result
        tracker.finished(req.stage, req.key, req.name, req.seed, result, score_of(result), round=round_)
        if on_done:
            on_done(req, result, False)
    if failed:
        raise ChainFailed(f"{len(failed)} chain(s) failed after {time.perf_counter() - start:.0f} s (the "
                          f"{len(out)} finished are kept under {store.root}; rerun `dsl-sweep best` to resume):\n  "
                          + "\n  ".join(failed))
    return out
