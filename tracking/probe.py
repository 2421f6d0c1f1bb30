"""A probe of the tracking server from one machine: it answers, takes a run and an artifact (a cluster node's
preflight, `sweeps.cluster.node_probe`). The probe run is deleted at once (MLflow's soft delete)."""
from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from .client import call, client, mlflow_timeout, redact_uri
from .schema import NODE_TAG, ROLE_PREFLIGHT, ROLE_TAG


def tracking_problem(uri: str, experiment_id: str | None, timeout: float) -> str | None:
    """Why this machine cannot log to `uri` (search, create a run, upload an artifact), or None. Each call
    gives the server `timeout` seconds at most (less when `$DSL_MLFLOW_TIMEOUT` is lower)."""
    limit = min(timeout, mlflow_timeout())
    try:
        c = client(uri)
        call(c.search_experiments, max_results=1, timeout=limit)
        if experiment_id is not None:
            run = call(c.create_run, experiment_id, run_name=ROLE_PREFLIGHT,
                       tags={ROLE_TAG: ROLE_PREFLIGHT, NODE_TAG: socket.gethostname()}, timeout=limit)
            try:
                with tempfile.TemporaryDirectory(prefix="dsl-preflight-") as tmp:
                    probe = Path(tmp) / "preflight.txt"
                    probe.write_text("artifact upload check\n")
                    call(c.log_artifact, run.info.run_id, str(probe), timeout=limit)
            finally:
                call(c.delete_run, run.info.run_id, timeout=limit)  # soft delete: hidden from the sweep
    except Exception as exc:
        return f"MLflow at {redact_uri(uri)}: {type(exc).__name__}: {redact_uri(str(exc))[:300]}"
    return None
