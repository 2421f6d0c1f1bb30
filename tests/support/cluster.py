"""A multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`)."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def local_cluster(workers: int = 2, cpus: int = 1) -> Iterator[Any]:
    """A head raylet with 0 CPUs plus `workers` raylets with `cpus` CPUs each, on this machine.

    `RAY_TMPDIR` points at a private short directory while the cluster lives: `Cluster` writes its
    address to `$RAY_TMPDIR/ray/ray_current_cluster`, which any `ray.init()` on this machine would
    otherwise connect to (other tests, other people's jobs). Short, because Ray's socket paths live
    under it (AF_UNIX paths are limited to 107 bytes).
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    keys = ("RAY_TMPDIR", "RAY_AUTH_MODE", "DSL_PROGRESS", "RAY_ADDRESS", "RAY_USAGE_STATS_ENABLED")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled", DSL_PROGRESS="0", RAY_USAGE_STATS_ENABLED="0")
    os.environ.pop("RAY_ADDRESS", None)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, connect=False,
                          head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(workers):
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes(timeout=120)
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def worker_ids(cluster) -> set[str]:
    return {n.node_id for n in cluster.worker_nodes}
