"""Folds of one trial as parallel Ray tasks inside the trial's placement group.

With `fold_workers` = N > 0 the trial asks for `[{CPU: head_cpu}] + N x [{CPU: cpu, GPU: gpu}]`; Tune
schedules the trial in bundle 0 and captures child tasks in the group, so each fold task lands in a
worker bundle. Frames reach the tasks by ObjectRef (zero-copy); results do not depend on N (every
`FoldJob` carries its seed).
"""
from __future__ import annotations

from typing import Sequence

from dsl.chain import FoldJob, FoldOutput, Runner, run_fold_job
from dsl.config import ChainConfig

from .context import TrialResources
from .shared_data import CorpusMeta, attach


def placement(res: TrialResources):
    """Resources of one trial as a PlacementGroupFactory."""
    from ray import tune

    fold = {"CPU": res.cpu, **({"GPU": res.gpu} if res.gpu else {})}
    if res.fold_workers <= 0:
        return tune.PlacementGroupFactory([fold])
    return tune.PlacementGroupFactory([{"CPU": res.head_cpu}] + [dict(fold) for _ in range(res.fold_workers)])


def _fold_task(job: FoldJob, frames, meta: CorpusMeta, cfg: ChainConfig) -> FoldOutput:
    return run_fold_job(job, attach(frames, meta), cfg)


def ray_runner(meta: CorpusMeta, cfg: ChainConfig, res: TrialResources) -> Runner:
    """A `dsl.chain` runner submitting each fold as a Ray task (frames passed by reference)."""
    import ray

    task = ray.remote(_fold_task).options(num_cpus=res.cpu, num_gpus=res.gpu or 0, max_retries=1)

    def run(jobs: Sequence[FoldJob]) -> list[FoldOutput]:
        return ray.get([task.remote(job, meta.frames_ref, meta, cfg) for job in jobs])

    run.close = lambda: None  # type: ignore[attr-defined]
    return run
