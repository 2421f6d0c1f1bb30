"""Run one function as a Ray task on a cluster (e.g. the final model of `best --register --address`), with
one CPU and, when the cluster has one and the config may use it, one GPU."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def run_on_cluster(address: str, fn: Callable[..., Any], args: Sequence[Any], gpu: bool = True) -> Any:
    """`fn(*args)` on a node of the Ray cluster at `address`; its output is shown here, its result returned."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=True)
    try:
        gpus = 1 if gpu and ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(fn)
        return ray.get(task.remote(*args))
    finally:
        if started:
            ray.shutdown()
