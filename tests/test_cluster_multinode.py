"""A sweep over a multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`).

The cluster has a head node without CPUs (it runs no trial) and two worker nodes with one CPU each,
all separate raylets with their own object stores. The sweep connects with `address=` (what
`dsl-sweep sweep --address` does); its two trials must land on the two worker nodes, and each must
see the corpus frames as a read-only view of its own node's object store (tag `dsl.frames_zero_copy`),
i.e. the features travelled between nodes through Ray, not through the file system.

The cluster and sweep helpers live in tests/support/ (`cluster`, `sweep`).
"""
from __future__ import annotations

import pytest

from tests.support.cluster import local_cluster, worker_ids
from tests.support.sweep import children, steps, tiny_data, write_sweep

pytestmark = pytest.mark.slow


def test_trials_spread_over_nodes_and_share_frames(tmp_path_factory: pytest.TempPathFactory) -> None:
    data, cache = tiny_data(tmp_path_factory)
    from mlflow import MlflowClient

    from sweeps.search.launcher import run_sweep
    from sweeps.search.spec import load_sweep

    tmp = tmp_path_factory.mktemp("multinode")
    sweep = write_sweep(tmp, "multinode", data, cache, num_samples=2, max_concurrent=2,
                        search={"rule": ["bdsl", "hdl"], "iterations": 1}, sampler={"type": "grid"})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with local_cluster(workers=2, cpus=1) as cluster:
        workers = worker_ids(cluster)
        assert len(workers) == 2 and cluster.head_node.node_id not in workers
        out = run_sweep(load_sweep(sweep), address=cluster.address, tracking_uri=uri)

        from sweeps.selection.best import BestOptions, choose_best

        # best --register --address: the final model trains as a Ray task on the cluster, reaches MLflow
        choose_best(BestOptions(sweep="multinode", tracking_uri=uri, out=str(tmp / "best.yaml"), register=True,
                                model_name="multinode-final", top_k=1, seeds=2, no_reeval=True,
                                address=cluster.address))

    assert not out.interrupted and out.errors == 0, out.rows
    versions = MlflowClient(uri).search_model_versions("name='multinode-final'")
    assert len(versions) == 1
    final = MlflowClient(uri).get_run(versions[0].run_id)
    assert final.data.tags["dsl.role"] == "final_model" and not (tmp / "best_model").exists()  # trained remotely
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
