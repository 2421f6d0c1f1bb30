"""Plain MLflow client helpers for trials: one child run per Ray trial, found again by its trial id.

No `setup_mlflow`/`MLflowLoggerCallback` (they duplicated runs on retries and restores): the trial looks
up its run by the `ray_trial_id` tag under the sweep's parent run before creating one, logs only the
iteration steps MLflow does not have yet, and ends the run FINISHED or FAILED. Credentials for a
tracking server come from MLFLOW_TRACKING_USERNAME/PASSWORD in the environment and are never logged.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from .metrics import iteration_metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

TRIAL_TAG = "ray_trial_id"
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "dsl.sweep"
ROLE_TAG = "dsl.role"
ATTEMPTS_TAG = "dsl.attempts"  # how many times the trial (re)started: 1 unless retried or resumed
STEP_KEY = "mean_fold_ua"  # every logged iteration has it: its history gives the steps already logged
_TRANSIENT = ("database is locked", "locked", "connection", "temporarily", "timed out", "max retries", " 50")


def redact_uri(uri: str | None) -> str:
    """A tracking URI safe to print: `user:password@` removed."""
    return re.sub(r"//[^/@]*@", "//***@", uri or "")


def call(fn: Callable[..., T], *args: Any, attempts: int = 6, **kwargs: Any) -> T:
    """Call an MLflow client method, retrying transient failures (SQLite locks, connection resets)."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException, sqlalchemy OperationalError, requests errors
            if i == attempts - 1 or not any(s in str(exc).lower() for s in _TRANSIENT):
                raise
            time.sleep(0.25 * 2**i)
    raise AssertionError("unreachable")


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def flat_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def find_trial_run(c, experiment_id: str, parent_run_id: str, trial_id: str):
    runs = call(c.search_runs, [experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_id}'", max_results=50)
    runs = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent_run_id]
    return min(runs, key=lambda r: r.info.start_time) if runs else None


class TrialRun:
    """The MLflow child run of one Ray trial."""

    def __init__(self, c, run_id: str):
        self.client, self.run_id = c, run_id

    @classmethod
    def open(cls, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep: str, trial_id: str,
             run_name: str, known_run_id: str | None = None) -> "TrialRun":
        """The trial's run: the checkpoint's run id, else the run tagged with the trial id, else a new one."""
        c = client(tracking_uri)
        run = None
        if known_run_id:
            try:
                run = call(c.get_run, known_run_id)
            except Exception:
                run = None
        run = run or find_trial_run(c, experiment_id, parent_run_id, trial_id)
        if run is None:
            run = call(c.create_run, experiment_id, run_name=run_name,
                       tags={PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id, SWEEP_TAG: sweep, ROLE_TAG: "trial"})
        return cls(c, run.info.run_id)

    def start(self, params: Mapping[str, str], tags: Mapping[str, Any]) -> int:
        """Mark RUNNING (again), log params it lacks, set tags; returns this start's number (tag `dsl.attempts`)."""
        from mlflow.entities import Param, RunTag

        call(self.client.update_run, self.run_id, status="RUNNING")
        data = call(self.client.get_run, self.run_id).data
        attempts = int(data.tags.get(ATTEMPTS_TAG, "0")) + 1
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in data.params]
        for i in range(0, len(new), 100):
            call(self.client.log_batch, self.run_id, params=new[i:i + 100])
        tags = {**tags, ATTEMPTS_TAG: attempts}
        call(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return attempts

    def logged_steps(self) -> set[int]:
        return {int(m.step) for m in call(self.client.get_metric_history, self.run_id, STEP_KEY)}

    def log_iterations(self, history: Sequence[Mapping[str, Any]], skip: Iterable[int] | None = None) -> list[int]:
        """Log every iteration of `history` whose step MLflow lacks (step = iteration); returns those logged."""
        from mlflow.entities import Metric

        have = set(skip) if skip is not None else self.logged_steps()
        done = []
        for d in history:
            it = int(d["iteration"])
            if it in have:
                continue
            now = int(time.time() * 1000)
            # the step key last, so a half-logged step is logged again rather than skipped
            items = sorted(iteration_metrics(d).items(), key=lambda kv: kv[0] == STEP_KEY)
            call(self.client.log_batch, self.run_id, metrics=[Metric(k, v, now, it) for k, v in items])
            done.append(it)
        return done

    def log_files(self, paths: Iterable[str], artifact_path: str | None = None) -> None:
        for p in paths:
            call(self.client.log_artifact, self.run_id, p, artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            call(self.client.set_tag, self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        call(self.client.set_terminated, self.run_id, status)


class NoRun:
    """Stands in for `TrialRun` when a sweep runs without MLflow tracking."""

    run_id = None

    def start(self, params: Mapping[str, str], tags: Mapping[str, Any]) -> int:
        return 1

    def logged_steps(self) -> set[int]:
        return set()

    def log_iterations(self, history: Sequence[Mapping[str, Any]], skip: Iterable[int] | None = None) -> list[int]:
        return []

    def log_files(self, paths: Iterable[str], artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...
