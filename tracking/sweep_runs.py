"""Driver-side MLflow: the sweep's experiment and parent run, its child runs, and their final statuses.

The parent run is found again by its Tune experiment path (tag `dsl.sweep_path`), so `--resume` reuses
it; each child run is created by its trial (`tracking.trial_run`).
"""
from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .client import call
from .schema import EXPERIMENT_KIND, PARENT_TAG, PATH_TAG, ROLE_TAG, SWEEP_TAG, TRIAL_TAG, flat_params


def ensure_experiment(c, name: str) -> str:
    """The sweep's experiment (created, or restored if deleted), marked as model training for the UI."""
    exp = call(c.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            call(c.restore_experiment, exp.experiment_id)
        exp_id = exp.experiment_id
    else:
        try:
            exp_id = call(c.create_experiment, name)
        except Exception:  # created concurrently
            exp_id = call(c.get_experiment_by_name, name).experiment_id
    call(c.set_experiment_tag, exp_id, *EXPERIMENT_KIND)
    return exp_id


def find_parent(c, experiment_id: str, sweep_path: str | None = None):
    """The sweep's parent run (by experiment path), or the most recent parent run of the experiment."""
    filt = f"tags.`{ROLE_TAG}` = 'parent'"
    runs = call(c.search_runs, [experiment_id], filter_string=filt, order_by=["attributes.start_time DESC"],
                max_results=200)
    if sweep_path is not None:
        runs = [r for r in runs if r.data.tags.get(PATH_TAG) == sweep_path]
    return runs[0] if runs else None


def open_parent(c, experiment_id: str, name: str, sweep_path: str, params: Mapping[str, Any], spec_yaml: str,
                resume: bool, files: Mapping[str, str] | None = None) -> str:
    """Create the parent run (fresh sweep) or reuse it (`--resume`); marks it RUNNING. `files` (name -> text) are
    logged as artifacts beside `sweep.yaml`."""
    run = find_parent(c, experiment_id, sweep_path) if resume else None
    if run is None:
        run = call(c.create_run, experiment_id, run_name=name,
                   tags={ROLE_TAG: "parent", SWEEP_TAG: name, PATH_TAG: sweep_path})
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flat_params(params).items()]
        for i in range(0, len(items), 100):
            call(c.log_batch, run.info.run_id, params=items[i:i + 100])
        with tempfile.TemporaryDirectory() as tmp:
            for fname, text in {"sweep.yaml": spec_yaml, **(files or {})}.items():
                (Path(tmp) / fname).write_text(text)
                call(c.log_artifact, run.info.run_id, str(Path(tmp) / fname))
    else:
        call(c.update_run, run.info.run_id, status="RUNNING")
        call(c.set_tag, run.info.run_id, "dsl.resumed", "true")
    return run.info.run_id


def child_runs(c, experiment_id: str, parent_run_id: str) -> list:
    runs, token = [], None
    while True:
        page = call(c.search_runs, [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                    max_results=1000, page_token=token)
        runs.extend(r for r in page if r.data.tags.get(ROLE_TAG) == "trial")
        token = page.token
        if not token:
            return runs


def close_children(c, experiment_id: str, parent_run_id: str, status: str) -> int:
    """End child runs still RUNNING (e.g. KILLED when the sweep was interrupted); returns how many."""
    n = 0
    for r in child_runs(c, experiment_id, parent_run_id):
        if r.info.status == "RUNNING":
            call(c.set_terminated, r.info.run_id, status)
            n += 1
    return n


def close_orphans(c, experiment_id: str, parent_run_id: str, trial_ids: set[str],
                  rerun_as: dict[str, str] | None = None) -> list[str]:
    """Child runs of trials that Tune does not know: a trial that started after Tune's last snapshot of a
    hard-killed driver ran again under a new trial id (with the same Optuna trial) on `--resume`, in a new
    child run. Its old run is ended KILLED, tagged `dsl.orphan=true` (and `dsl.rerun_as`), and deleted
    (MLflow's soft delete: hidden from searches and the UI, kept until `mlflow gc`), so the sweep shows one
    child run per trial. Returns their run ids."""
    done = []
    if not trial_ids or "?" in trial_ids:  # Tune's trials are not all known: delete nothing
        return done
    for r in child_runs(c, experiment_id, parent_run_id):
        tid = r.data.tags.get(TRIAL_TAG)
        if not tid or tid in trial_ids:
            continue
        rid = r.info.run_id
        tags = {"dsl.orphan": "true", "dsl.orphan_reason": "started after the last Tune snapshot before the "
                "driver was killed; its configuration ran again under another trial id on --resume"}
        if rerun_as and tid in rerun_as:
            tags["dsl.rerun_as"] = rerun_as[tid]
        for k, v in tags.items():
            call(c.set_tag, rid, k, v)
        if r.info.status == "RUNNING":
            call(c.set_terminated, rid, "KILLED")
        call(c.delete_run, rid)
        done.append(rid)
    return done




def ui_link(uri: str, experiment_id: str) -> str:
    """Where the sweep's runs open in MLflow's model-training view (MLflow 3's UI starts in its GenAI view)."""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        from .client import redact_uri

        return f"{redact_uri(uri).rstrip('/')}/{page}"
    return f"run `mlflow ui --backend-store-uri {uri}`, then open http://127.0.0.1:5000/{page}"
