"""Preflight from every node: one small Ray task per alive node checks, from that node, that the tracking
server answers and takes an artifact, and that the sweep's storage path is writable.

A URI the driver reaches may still be blocked from a worker (firewall, DNS, credentials set on the head
only); a storage path may be local to the head. Each would otherwise fail trial by trial, minutes in.
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from dsl.config import ConfigError
from dsl.runtime.paths import is_uri

TIMEOUT_S = 20.0  # at most; less when $DSL_MLFLOW_TIMEOUT is lower


def check_tracking(uri: str, experiment_id: str | None) -> str | None:
    """Why this machine cannot log to `uri` (search, create a run, upload an artifact), or None."""
    from tracking.probe import tracking_problem

    return tracking_problem(uri, experiment_id, TIMEOUT_S)


def check_storage(root: str) -> str | None:
    """Why this machine cannot write under the sweep's storage path (a local path or a pyarrow URI), or None."""
    name = f".dsl-preflight-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    try:
        if not is_uri(root):
            d = Path(root)
            d.mkdir(parents=True, exist_ok=True)
            probe = d / name
            probe.write_text("ok")
            probe.unlink()
            return None
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(root)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{name}") as f:
            f.write(b"ok")
        fs.delete_file(f"{path}/{name}")
    except Exception as exc:
        return f"storage path {root}: {type(exc).__name__}: {str(exc)[:300]}"
    return None


def check_this_node(uri: str, experiment_id: str | None, root: str) -> tuple[str, list[str]]:
    """(this node's address, the problems found from it)."""
    name = socket.gethostname()
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # outside Ray, or no routable address: the name alone says enough
        ip = os.environ.get("RAY_NODE_IP_ADDRESS", "?")
    host = f"{name} ({ip})"
    return host, [p for p in (check_tracking(uri, experiment_id), check_storage(root)) if p]


def check_every_node(uri: str, experiment_id: str | None, root: str) -> list[str]:
    """Run `check_this_node` on every alive Ray node (pinned with NodeAffinitySchedulingStrategy, zero CPUs,
    so busy nodes answer too); returns `node: problem` lines."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(check_this_node)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
        uri, experiment_id, root) for n in nodes]
    problems = []
    for node, ref in zip(nodes, refs):
        try:
            host, found = ray.get(ref, timeout=4 * TIMEOUT_S + 60)
        except Exception as exc:
            host, found = node[:12], [f"the check task did not finish: {type(exc).__name__}: {str(exc)[:200]}"]
        problems += [f"node {host}: {p}" for p in found]
    return problems


def node_preflight(uri: str, experiment_id: str | None, root: str) -> None:
    """Refuse the sweep, naming each node and problem, unless every node can track and store."""
    problems = check_every_node(uri, experiment_id, root)
    if problems:
        raise ConfigError("the sweep cannot run: checked from every Ray node before any trial started:\n  "
                          + "\n  ".join(problems) + "\n(set MLflow credentials and network access on every node; "
                          "use a storage path every node can write, e.g. shared storage or s3://)")
