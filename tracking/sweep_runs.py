"""Driver-side MLflow: a sweep's experiment and parent run (`SweepRun`), its child runs and their final statuses.

The parent run is found again by its Tune experiment path (tag `dsl.sweep_path`), so `--resume` reuses
it; each child run is created by its trial (`tracking.trial_run`). `dsl-sweep sweep` opens and finishes a
`SweepRun`; `dsl-sweep best` and `dsl-sweep report` find it again by the sweep's name.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dsl.config import ConfigError

from .client import call, client, redact_uri
from .schema import (
    BASE_PREFIX,
    BEST_ITERATION_TAG,
    BEST_RUN_TAG,
    BEST_TAG,
    CACHED_TAG,
    CONFIG_ARTIFACT,
    EXPERIMENT_KIND,
    ORPHAN_REASON_TAG,
    ORPHAN_TAG,
    PARENT_TAG,
    PATH_TAG,
    RERUN_AS_TAG,
    RESUMED_TAG,
    ROLE_PARENT,
    ROLE_TAG,
    ROLE_TRIAL,
    SPEC_ARTIFACT,
    STOPPED_EARLY_TAG,
    SWEEP_SECONDS_METRIC,
    SWEEP_TAG,
    TABLE_ARTIFACT,
    TOP_OBJECTIVE_METRIC,
    TOP_TRIAL_TAG,
    TRIAL_TAG,
    TRIALS_ERRORED_TAG,
    flat_params,
)
from .sweep_settings import SweepSettings


@dataclass(frozen=True)
class TrialHistory:
    """One trial's child run as the driver reads it back: who it is and its metrics per step."""

    run_id: str
    run_name: str
    status: str
    started: int  # start time (ms)
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, dict[int, float]]  # metric -> step -> value, for the keys asked for

    @property
    def trial_id(self) -> str:
        return self.tags.get(TRIAL_TAG, "")

    @property
    def stopped_early(self) -> bool:
        """The scheduler stopped the trial before its last iteration."""
        return self.tags.get(STOPPED_EARLY_TAG) == "true"

    @property
    def cached_iterations(self) -> list[int]:
        """The iterations the step cache served whole."""
        return [int(x) for x in self.tags.get(CACHED_TAG, "").split(",") if x.strip()]


@dataclass(frozen=True)
class SweepRun:
    """A sweep's experiment and parent run, on the tracking server at `tracking_uri`."""

    tracking_uri: str
    experiment_id: str
    run_id: str  # the parent run

    @cached_property
    def client(self):
        return client(self.tracking_uri)

    # --- opened by `dsl-sweep sweep`, found by `best` and `report` ------------------------------------------
    @classmethod
    def open(cls, tracking_uri: str, name: str, sweep_path: str, settings: SweepSettings, base: Mapping[str, Any],
             spec_yaml: str, resume: bool, files: Mapping[str, str] | None = None) -> SweepRun:
        """The sweep's experiment (created, or restored if deleted) and its parent run: a new one holding the
        settings and base config as params and the sweep file (and `files`, name -> text, e.g. the holdout
        assignment) as artifacts, or (`resume`) the one of `sweep_path`, marked RUNNING again."""
        c = client(tracking_uri)
        exp_id = ensure_experiment(c, name)
        params = {**settings.to_params(), **{BASE_PREFIX + k: v for k, v in flat_params(base).items()}}
        run_id = open_parent(c, exp_id, name, sweep_path, params, spec_yaml, resume, files)
        return cls(tracking_uri, exp_id, run_id)

    @classmethod
    def find(cls, tracking_uri: str, name: str) -> SweepRun | None:
        """The latest parent run of sweep `name`; None when the store has no such experiment (a parent-less
        experiment is a `ConfigError`)."""
        c = client(tracking_uri)
        exp = call(c.get_experiment_by_name, name)
        if exp is None:
            return None
        parent = find_parent(c, exp.experiment_id)
        if parent is None:
            raise ConfigError(f"experiment {name!r} has no sweep parent run")
        return cls(tracking_uri, exp.experiment_id, parent.info.run_id)

    def ui_link(self) -> str:
        """Where the sweep's runs open in MLflow's model-training view (MLflow 3's UI starts in its GenAI view)."""
        page = f"#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{redact_uri(self.tracking_uri).rstrip('/')}/{page}"
        return f"run `mlflow ui --backend-store-uri {self.tracking_uri}`, then open http://127.0.0.1:5000/{page}"

    # --- read back ----------------------------------------------------------------------------------------
    def settings(self) -> SweepSettings:
        """The sweep's settings as the parent run keeps them."""
        return SweepSettings.from_params(call(self.client.get_run, self.run_id).data.params)

    def parent_metrics(self) -> dict[str, float]:
        """The parent run's latest metrics (e.g. `sweep_seconds`, the re-evaluated and exam figures)."""
        return dict(call(self.client.get_run, self.run_id).data.metrics)

    def trial_histories(self, keys: Sequence[str]) -> list[TrialHistory]:
        """Every child run with the history of each metric in `keys`."""
        c, out = self.client, []
        for r in child_runs(c, self.experiment_id, self.run_id):
            rid = r.info.run_id
            metrics = {k: {int(m.step): float(m.value) for m in call(c.get_metric_history, rid, k)} for k in keys}
            out.append(TrialHistory(rid, r.info.run_name or rid, r.info.status, int(r.info.start_time or 0),
                                    dict(r.data.params), dict(r.data.tags), metrics))
        return out

    def trial_config(self, run_id: str) -> dict[str, Any]:
        """A trial's resolved config, from its `config.yaml` artifact (a `ChainConfig` tree)."""
        import yaml

        with tempfile.TemporaryDirectory() as tmp:
            path = call(self.client.download_artifacts, run_id, CONFIG_ARTIFACT, tmp)
            return yaml.safe_load(Path(path).read_text())

    def run_file(self, name: str, run_id: str | None = None) -> str | None:
        """The text of top-level artifact `name` of the parent (or of run `run_id`), or None if it has none
        (sweeps before the final exam kept no `base.yaml` or `holdout.json`)."""
        rid = run_id or self.run_id
        if name not in {a.path for a in call(self.client.list_artifacts, rid)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return Path(call(self.client.download_artifacts, rid, name, tmp)).read_text()

    def trial_artifact_json(self, run_id: str, name: str) -> dict[str, Any] | None:
        """A JSON artifact of a child run, or None when it has none (e.g. a trial that failed at once)."""
        import json

        try:
            with tempfile.TemporaryDirectory(prefix="dsl-exp-") as tmp:
                return json.loads(Path(call(self.client.download_artifacts, run_id, name, tmp)).read_text())
        except Exception:
            return None

    # --- written at the end of `dsl-sweep sweep` -----------------------------------------------------------
    def close_children(self, status: str) -> int:
        """End child runs still RUNNING (e.g. KILLED when the sweep was interrupted); returns how many."""
        return close_children(self.client, self.experiment_id, self.run_id, status)

    def close_orphans(self, trial_ids: set[str], rerun_as: Mapping[str, str] | None = None) -> list[str]:
        """End, tag and delete the child runs of trials Tune does not know (see `close_orphans`)."""
        return close_orphans(self.client, self.experiment_id, self.run_id, trial_ids, rerun_as)

    def log_table(self, text: str) -> None:
        """The sweep's trial table as the parent's `trials.txt`."""
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / TABLE_ARTIFACT).write_text(text)
            call(self.client.log_artifact, self.run_id, str(Path(tmp) / TABLE_ARTIFACT))

    def log_files(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for p in paths:
            call(self.client.log_artifact, self.run_id, str(p), artifact_path)

    def finish(self, status: str, errors: int, top_trial_id: str | None = None,
               top_objective: float | None = None, seconds: float | None = None) -> None:
        """End the parent `status` with the sweep's own top trial and its objective, the errored count and the
        sweep's wall time."""
        c = self.client
        if seconds is not None:
            call(c.log_metric, self.run_id, SWEEP_SECONDS_METRIC, seconds)
        if top_trial_id is not None and top_objective is not None:
            call(c.log_metric, self.run_id, TOP_OBJECTIVE_METRIC, top_objective)
            call(c.set_tag, self.run_id, TOP_TRIAL_TAG, top_trial_id)
        call(c.set_tag, self.run_id, TRIALS_ERRORED_TAG, str(errors))
        call(c.set_terminated, self.run_id, status)

    def fail(self) -> None:
        """A broken sweep: children still RUNNING end KILLED, the parent FAILED."""
        self.close_children("KILLED")
        call(self.client.set_terminated, self.run_id, "FAILED")

    # --- written by `dsl-sweep best` --------------------------------------------------------------------------
    def mark_best(self, run_id: str, iteration: int, others: Iterable[str] = ()) -> None:
        """Tag the picked trial run (and the parent) `dsl.best`, removing the tag from the `others`."""
        c = self.client
        for o in others:
            if o != run_id:
                try:
                    call(c.delete_tag, o, BEST_TAG)
                except Exception:  # tag absent
                    pass
        call(c.set_tag, run_id, BEST_TAG, "true")
        call(c.set_tag, run_id, BEST_ITERATION_TAG, str(iteration))
        call(c.set_tag, self.run_id, BEST_RUN_TAG, run_id)
        call(c.set_tag, self.run_id, BEST_ITERATION_TAG, str(iteration))


# --- the client-level operations the class binds ------------------------------------------------------------
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
    filt = f"tags.`{ROLE_TAG}` = '{ROLE_PARENT}'"
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
                   tags={ROLE_TAG: ROLE_PARENT, SWEEP_TAG: name, PATH_TAG: sweep_path})
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            call(c.log_batch, run.info.run_id, params=items[i:i + 100])
        with tempfile.TemporaryDirectory() as tmp:
            for fname, text in {SPEC_ARTIFACT: spec_yaml, **(files or {})}.items():
                (Path(tmp) / fname).write_text(text)
                call(c.log_artifact, run.info.run_id, str(Path(tmp) / fname))
    else:
        call(c.update_run, run.info.run_id, status="RUNNING")
        call(c.set_tag, run.info.run_id, RESUMED_TAG, "true")
    return run.info.run_id


def child_runs(c, experiment_id: str, parent_run_id: str) -> list:
    runs, token = [], None
    while True:
        page = call(c.search_runs, [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                    max_results=1000, page_token=token)
        runs.extend(r for r in page if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL)
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
                  rerun_as: Mapping[str, str] | None = None) -> list[str]:
    """Child runs of trials that Tune does not know: a trial that started after Tune's last snapshot of a
    hard-killed driver ran again under a new trial id (with the same Optuna trial) on `--resume`, in a new
    child run. Its old run is ended KILLED, tagged `dsl.orphan=true` (and `dsl.rerun_as`), and deleted
    (MLflow's soft delete: hidden from searches and the UI, kept until `mlflow gc`), so the sweep shows one
    child run per trial. Returns their run ids."""
    done: list[str] = []
    if not trial_ids or "?" in trial_ids:  # Tune's trials are not all known: delete nothing
        return done
    for r in child_runs(c, experiment_id, parent_run_id):
        tid = r.data.tags.get(TRIAL_TAG)
        if not tid or tid in trial_ids:
            continue
        rid = r.info.run_id
        tags = {ORPHAN_TAG: "true", ORPHAN_REASON_TAG: "started after the last Tune snapshot before the "
                "driver was killed; its configuration ran again under another trial id on --resume"}
        if rerun_as and tid in rerun_as:
            tags[RERUN_AS_TAG] = rerun_as[tid]
        for k, v in tags.items():
            call(c.set_tag, rid, k, v)
        if r.info.status == "RUNNING":
            call(c.set_terminated, rid, "KILLED")
        call(c.delete_run, rid)
        done.append(rid)
    return done

