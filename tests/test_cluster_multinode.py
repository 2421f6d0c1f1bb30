"""A sweep over a multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`).

The cluster has a head node without CPUs (it runs no trial) and two worker nodes with one CPU each,
all separate raylets with their own object stores. The sweep connects with `address=` (what
`dsl-sweep sweep --address` does); its two trials must land on the two worker nodes, and each must
see the corpus frames as a read-only view of its own node's object store (tag `dsl.frames_zero_copy`),
i.e. the features travelled between nodes through Ray, not through the file system.

The helpers here (`local_cluster`, `write_sweep`, `children`, `steps`) are shared with
test_cluster_faults.py.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from conftest import emodb_root

pytestmark = pytest.mark.slow

SKIP_NO_EMODB = "EmoDB not found (../shared/data/emodb or $DSL_EMODB): the cluster tests need it"


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


def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny EmoDB folder, feature cache), shared with the other sweep tests of the session; or skip."""
    root = emodb_root()
    if root is None:
        pytest.skip(SKIP_NO_EMODB)
    from sweeps.testing import tiny_emodb

    base = tmp_path_factory.getbasetemp()
    return tiny_emodb(root, base / "tiny_emodb"), base / "dsl-cache"


def write_sweep(tmp: Path, name: str, data: Path, cache: Path, **top: Any) -> Path:
    """The tiny sweep of `sweeps.testing.tiny_sweep` with `top` overrides, as `tmp/<name>.yaml`."""
    from sweeps.testing import tiny_sweep

    raw = tiny_sweep(name, data, cache, tmp / "ray_results", **top)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def children(client, name: str) -> list:
    """The trial (child) runs of sweep `name`."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=200)
    return [r for r in runs if r.data.tags.get("dsl.role") == "trial"]


def steps(client, run_id: str, key: str = "mean_fold_ua") -> list[int]:
    """Every logged step of a metric, duplicates included, sorted."""
    return sorted(int(m.step) for m in client.get_metric_history(run_id, key))


def test_trials_spread_over_nodes_and_share_frames(tmp_path_factory: pytest.TempPathFactory) -> None:
    data, cache = tiny_data(tmp_path_factory)
    from mlflow import MlflowClient

    from sweeps.launcher import run_sweep
    from sweeps.spec import load_sweep

    tmp = tmp_path_factory.mktemp("multinode")
    sweep = write_sweep(tmp, "multinode", data, cache, num_samples=2, max_concurrent=2,
                        search={"rule": ["bdsl", "hdl"], "iterations": 1}, sampler={"type": "grid"})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with local_cluster(workers=2, cpus=1) as cluster:
        workers = worker_ids(cluster)
        assert len(workers) == 2 and cluster.head_node.node_id not in workers
        out = run_sweep(load_sweep(sweep), address=cluster.address, tracking_uri=uri)

    assert not out.interrupted and out.errors == 0, out.rows
    assert sorted(r.status for r in out.rows) == ["done", "done"]
    c = MlflowClient(uri)
    runs = children(c, "multinode")
    assert len(runs) == 2 and {r.data.tags["ray_trial_id"] for r in runs} == {r.trial_id for r in out.rows}
    nodes = {r.data.tags["ray_trial_id"]: r.data.tags.get("dsl.node_id") for r in runs}
    assert set(nodes.values()) <= workers, f"a trial ran outside the worker nodes: {nodes} vs {workers}"
    assert len(set(nodes.values())) == 2, f"both trials ran on one node: {nodes}"
    for r in runs:
        assert r.info.status == "FINISHED"
        # the frames were put once by the driver (head node) and read in place from each worker's store
        assert r.data.tags["dsl.frames_zero_copy"] == "True", r.data.tags
        assert r.data.tags["dsl.attempts"] == "1"
        assert steps(c, r.info.run_id) == [0, 1]
