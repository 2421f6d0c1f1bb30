"""Folds of one trial as parallel Ray tasks inside the trial's placement group.

With `fold_workers` = N > 0 the trial asks for `[{CPU: head_cpu}] + N x [{CPU: cpu, GPU: gpu}]`; Tune
schedules the trial in bundle 0 and captures child tasks in the group, so each fold task lands in a
worker bundle. Frames reach the tasks by ObjectRef (zero-copy); results do not depend on N (every
`FoldJob` carries its seed).
"""
from __future__ import annotations

from concurrent.futures import Future

from dsl.config import ChainConfig
from dsl.execution.fold_runners import SubmittingRunner
from dsl.pipeline.chain import FoldJob, FoldOutput, run_fold_job

from .context import TrialResources
from .shared_data import CorpusMeta, attach


def placement(res: TrialResources):
    """Resources of one trial as a PlacementGroupFactory."""
    from ray import tune

    fold = {"CPU": res.cpu, **({"GPU": res.gpu} if res.gpu else {})}
    if res.fold_workers <= 0:
        return tune.PlacementGroupFactory([fold])
    return tune.PlacementGroupFactory([{"CPU": res.head_cpu}] + [dict(fold) for _ in range(res.fold_workers)])


# Ray sets CUDA_VISIBLE_DEVICES to the GPU of each call; CUDA reads it once per process, so a reused worker
# would stay on its first call's GPU. Fold workers are reused (a new process per fold would import torch and
# start CUDA again), so they see every GPU of their node and each call picks the one Ray assigned to it.
GPU_TASK_ENV = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}


def on_assigned_gpu(cfg: ChainConfig, gpu_ids: list) -> ChainConfig:
    """`cfg` on the GPU Ray assigned to this call (`ray.get_gpu_ids()`: physical ids), if it trains on CUDA."""
    if not gpu_ids or cfg.train.device not in ("auto", "cuda"):
        return cfg
    return cfg.replace(**{"train.device": f"cuda:{int(gpu_ids[0])}"})


def _fold_task(job: FoldJob, frames, meta: CorpusMeta, cfg: ChainConfig) -> FoldOutput:
    import ray

    return run_fold_job(job, attach(frames, meta), on_assigned_gpu(cfg, ray.get_gpu_ids()))


def task_options(res: TrialResources) -> dict:
    """Ray options of one fold task: its CPU and GPU share, one retry, and on GPUs the worker environment
    above. `max_calls` stays at Ray's default for a function declared without GPUs (0: workers are reused)."""
    gpu = {"num_gpus": res.gpu, "runtime_env": {"env_vars": dict(GPU_TASK_ENV)}} if res.gpu else {"num_gpus": 0}
    return {"num_cpus": res.cpu, "max_retries": 1, **gpu}


class RayRunner(SubmittingRunner):
    """A `dsl.pipeline.chain` runner submitting each fold as a Ray task (frames passed by reference).

    `submit` lets the chain start a fold of the next iteration while the last ones of this iteration run.
    """

    def __init__(self, meta: CorpusMeta, cfg: ChainConfig, res: TrialResources):
        import ray

        self.meta, self.cfg = meta, cfg
        self._task = ray.remote(_fold_task).options(**task_options(res))
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
