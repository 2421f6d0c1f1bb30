"""Checks before any trial starts on a cluster: can every node reach the tracking server, and can a trial
ever be scheduled with the resources it asks for?

A SQLite file or a `localhost` tracking server exists only on the driver's machine: trials on other
nodes would fail one by one when they open their MLflow run. A trial asking for more CPUs or GPUs than
any node has would wait forever, silently. Both are refused up front with a message that says what to
use instead.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlparse

from dsl.config import ConfigError

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "")


def is_machine_local(uri: str) -> bool:
    """True for tracking URIs only this machine can reach: SQLite or file stores, plain paths, localhost."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file", "sqlite"):
        return True
    host = (parsed.hostname or "").lower()
    return host in LOCAL_HOSTS or host.startswith("127.")  # http(s) or a database server on localhost


def tracking_problem(uri: str, node_hosts: Iterable[str], driver_host: str) -> str | None:
    """Why `uri` cannot serve a cluster whose nodes are on `node_hosts`, or None."""
    others = sorted({h for h in node_hosts if h and h != driver_host})
    if not others or not is_machine_local(uri):
        return None
    return (f"the MLflow tracking URI {uri} can only be reached from this machine, but the cluster has nodes on "
            f"{len(others)} other host(s) ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}), whose "
            "trials could not log: run a tracking server every node can reach (e.g. `mlflow server --host 0.0.0.0 "
            "--port 5000 --backend-store-uri postgresql://... --artifacts-destination s3://...`) and pass "
            "--tracking-uri http://<that host>:5000 (or set MLFLOW_TRACKING_URI on every node)")


def resource_problem(bundles: Sequence[Mapping[str, float]], nodes: Sequence[Mapping[str, float]]) -> str | None:
    """Why a trial made of `bundles` can never be placed on nodes with these total resources, or None."""
    if not nodes:
        return "the Ray cluster has no alive node"
    for b in bundles:
        if not any(all(n.get(k, 0.0) >= v for k, v in b.items() if v) for n in nodes):
            largest = {k: max(n.get(k, 0.0) for n in nodes) for k in b}
            return (f"a trial asks for {dict(b)} on one node, but the largest node has {largest}: lower "
                    "`resources` in the sweep file (fractional gpu is allowed, e.g. gpu: 0.5) or add a larger node")
    need = {k: sum(b.get(k, 0.0) for b in bundles) for b in bundles for k in b}
    have = {k: sum(n.get(k, 0.0) for n in nodes) for k in need}
    short = {k: v for k, v in need.items() if v > have[k] + 1e-9}
    if short:
        return f"a trial needs {need} in all, but the whole cluster has {have}: lower `resources` (or fold_workers)"
    return None


def cluster_preflight(uri: str, bundles: Sequence[Mapping[str, float]], remote: bool) -> None:
    """Refuse what cannot work on the connected Ray cluster (public `ray.nodes()` and node-IP APIs only)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    problems = []
    if remote:
        problem = tracking_problem(uri, [n.get("NodeManagerAddress", "") for n in nodes],
                                   ray.util.get_node_ip_address())
        if problem:
            problems.append(problem)
    problem = resource_problem(bundles, [n.get("Resources", {}) for n in nodes])
    if problem:
        problems.append(problem)
    if problems:
        raise ConfigError("the sweep cannot run on this cluster:\n  " + "\n  ".join(problems))
