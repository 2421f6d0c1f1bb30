"""Folds of one trial as parallel Ray tasks inside the trial's placement group.

With `fold_workers` = N > 0 the trial asks for `[{CPU: head_cpu}] + N x [{CPU: cpu, GPU: gpu}]`; Tune
schedules the trial in bundle 0 and captures child tasks in the group, so each fold task lands in a
worker bundle. Frames reach the tasks by ObjectRef (zero-copy); results do not depend on N (every
`FoldJob` carries its seed).
"""
from __future__ import annotations

from concurrent.futures import Future

from dsl.chain import FoldJob, FoldOutput, run_fold_job
from dsl.config import ChainConfig
from dsl.runners import SubmittingRunner

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


class RayRunner(SubmittingRunner):
    """A `dsl.chain` runner submitting each fold as a Ray task (frames passed by reference).

    `submit` lets the chain start a fold of the next iteration while the last ones of this iteration run.
    """

    def __init__(self, meta: CorpusMeta, cfg: ChainConfig, res: TrialResources):
        import ray

        self.meta, self.cfg = meta, cfg
        self._task = ray.remote(_fold_task).options(num_cpus=res.cpu, num_gpus=res.gpu or 0, max_retries=1)
        self._refs: list = []

    def submit(self, job: FoldJob) -> Future:
        ref = self._task.remote(job, self.meta.frames_ref, self.meta, self.cfg)
        self._refs.append(ref)
        return ref.future()

    def close(self) -> None:
        """Cancel fold tasks still queued or running (a trial stopped early must not keep its bundles busy)."""
        import ray

        if self._refs:
            _, unfinished = ray.wait(self._refs, num_returns=len(self._refs), timeout=0, fetch_local=False)
            for ref in unfinished:
                ray.cancel(ref, force=True)
        self._refs.clear()


def ray_runner(meta: CorpusMeta, cfg: ChainConfig, res: TrialResources) -> RayRunner:
    return RayRunner(meta, cfg, res)
