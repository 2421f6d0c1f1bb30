"""Plain MLflow client helpers for trials: one child run per Ray trial, found again by its trial id.

No `setup_mlflow`/`MLflowLoggerCallback` (they duplicated runs on retries and restores): the trial looks
up its run by the `ray_trial_id` tag under the sweep's parent run before creating one, logs only the
iteration steps MLflow does not have yet, and ends the run FINISHED or FAILED. Credentials for a
tracking server come from MLFLOW_TRACKING_USERNAME/PASSWORD in the environment and are never logged.

An unreachable tracking server holds a caller up for `DSL_MLFLOW_TIMEOUT` seconds at most (default 60,
plus one HTTP request timeout): `call` does all the retrying, under that deadline, and MLflow's own HTTP
retries are off unless set explicitly (its defaults, 7 retries with backoff factor 2 and a 120 s request
timeout, could hold one request for minutes). Then `TrackingUnavailable` is raised.
"""
from __future__ import annotations

import logging
import os
import re
import time
from contextlib import contextmanager
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
MISMATCH_TAG = "dsl.mlflow_mismatch"  # steps whose recomputed metrics differ from the values MLflow kept
_TRANSIENT = ("database is locked", "locked", "connection", "temporarily", "timed out", "max retries", " 50")
TIMEOUT_ENV = "DSL_MLFLOW_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
QUICK = 2.0  # seconds a trial gives MLflow per iteration while it trains (it catches up later)


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer within `DSL_MLFLOW_TIMEOUT` seconds."""


def mlflow_timeout() -> float:
    """`$DSL_MLFLOW_TIMEOUT` (seconds), the longest an unreachable tracking server may hold a caller up."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    return max(0.0, value)


def bound_http_retries() -> None:
    """MLflow's public HTTP settings, unless set explicitly: no retries of its own (`call` retries under one
    deadline) and a request timeout no longer than that deadline (at most 30 s)."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    if not MLFLOW_HTTP_REQUEST_MAX_RETRIES.defined:
        os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"
    if not MLFLOW_HTTP_REQUEST_TIMEOUT.defined:
        os.environ[MLFLOW_HTTP_REQUEST_TIMEOUT.name] = str(max(5, min(30, int(mlflow_timeout()))))


def transient(exc: BaseException) -> bool:
    return isinstance(exc, TrackingUnavailable) or any(s in str(exc).lower() for s in _TRANSIENT)


def redact_uri(uri: str | None) -> str:
    """A tracking URI safe to print: `user:password@` removed."""
    return re.sub(r"//[^/@]*@", "//***@", uri or "")


def call(fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any) -> T:
    """Call an MLflow client method, retrying transient failures (SQLite locks, connection errors, 5xx)
    for `timeout` seconds (default `$DSL_MLFLOW_TIMEOUT`) after the first one; then `TrackingUnavailable`."""
    limit = mlflow_timeout() if timeout is None else timeout
    first, i = None, 0
    while True:
        try:
            return fn(*args, **kwargs)
        except TrackingUnavailable:
            raise
        except Exception as exc:  # MlflowException, sqlalchemy OperationalError, requests errors
            if not transient(exc):
                raise
            now = time.monotonic()
            first = now if first is None else first
            left = first + limit - now
            if left <= 0:
                raise TrackingUnavailable(
                    f"the MLflow tracking server did not answer for {limit:.0f} s ({TIMEOUT_ENV}): "
                    f"{type(exc).__name__}: {redact_uri(str(exc))[:400]}") from exc
            time.sleep(min(0.25 * 2**i, 5.0, left))
            i += 1


def client(tracking_uri: str):
    from mlflow import MlflowClient

    bound_http_retries()
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
        self.timeout: float | None = None  # None: $DSL_MLFLOW_TIMEOUT
        self.values: dict[int, float] = {}  # step -> STEP_KEY value MLflow has (from `logged_steps`)
        self.mismatched: set[int] = set()

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return call(fn, *args, timeout=self.timeout, **kwargs)

    @contextmanager
    def briefly(self, seconds: float | None = QUICK):
        """MLflow calls in this block give an unreachable server `seconds` (None: `$DSL_MLFLOW_TIMEOUT`)."""
        saved, self.timeout = self.timeout, seconds
        try:
            yield self
        finally:
            self.timeout = saved

    @classmethod
    def open(cls, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep: str, trial_id: str,
             run_name: str, known_run_id: str | None = None) -> "TrialRun":
        """The trial's run: the checkpoint's run id, else the run tagged with the trial id, else a new one."""
        c = client(tracking_uri)
        run = None
        if known_run_id:
            try:
                run = call(c.get_run, known_run_id)
            except TrackingUnavailable:
                raise
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

        self._call(self.client.update_run, self.run_id, status="RUNNING")
        data = self._call(self.client.get_run, self.run_id).data
        attempts = int(data.tags.get(ATTEMPTS_TAG, "0")) + 1
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in data.params]
        for i in range(0, len(new), 100):
            self._call(self.client.log_batch, self.run_id, params=new[i:i + 100])
        tags = {**tags, ATTEMPTS_TAG: attempts}
        self._call(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return attempts

    def logged_steps(self) -> set[int]:
        """Steps MLflow has; their first STEP_KEY values are kept in `values` (to check recomputed steps)."""
        for m in sorted(self._call(self.client.get_metric_history, self.run_id, STEP_KEY),
                        key=lambda m: (m.timestamp, m.value)):
            self.values.setdefault(int(m.step), float(m.value))
        return set(self.values)

    def log_iterations(self, history: Sequence[Mapping[str, Any]], skip: Iterable[int] | None = None) -> list[int]:
        """Log every iteration of `history` whose step MLflow lacks (step = iteration); returns those logged.

        A step is never logged twice: a skipped step whose STEP_KEY value differs from the one MLflow kept
        (an iteration computed again after a driver was killed before Tune's snapshot) is named in the tag
        `dsl.mlflow_mismatch` instead."""
        from mlflow.entities import Metric

        have = set(skip) if skip is not None else self.logged_steps()
        done = []
        for d in history:
            it = int(d["iteration"])
            items = iteration_metrics(d)
            if it in have:
                kept = self.values.get(it)
                if kept is not None and STEP_KEY in items and abs(kept - float(items[STEP_KEY])) > 1e-9 \
                        and it not in self.mismatched:
                    self.mismatched.add(it)
                    log.warning("step %d: MLflow keeps %s=%r, the checkpoint has %r (computed again)", it,
                                STEP_KEY, kept, items[STEP_KEY])
                    self._call(self.client.set_tag, self.run_id, MISMATCH_TAG,
                               ",".join(map(str, sorted(self.mismatched))))
                continue
            now = int(time.time() * 1000)
            # the step key last, so a half-logged step is logged again rather than skipped
            items = sorted(items.items(), key=lambda kv: kv[0] == STEP_KEY)
            self._call(self.client.log_batch, self.run_id, metrics=[Metric(k, v, now, it) for k, v in items])
            done.append(it)
        return done

    def log_files(self, paths: Iterable[str], artifact_path: str | None = None) -> None:
        for p in paths:
            self._call(self.client.log_artifact, self.run_id, p, artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self._call(self.client.set_tag, self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        self._call(self.client.set_terminated, self.run_id, status)


class NoRun:
    """Stands in for `TrialRun` when a sweep runs without MLflow tracking."""

    run_id = None

    @contextmanager
    def briefly(self, seconds: float | None = QUICK):
        yield self

    def start(self, params: Mapping[str, str], tags: Mapping[str, Any]) -> int:
        return 1

    def logged_steps(self) -> set[int]:
        return set()

    def log_iterations(self, history: Sequence[Mapping[str, Any]], skip: Iterable[int] | None = None) -> list[int]:
        return []

    def log_files(self, paths: Iterable[str], artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...
