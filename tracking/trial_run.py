"""The MLflow child run of one Ray trial, found again by its trial id.

No `setup_mlflow`/`MLflowLoggerCallback` (they duplicated runs on retries and restores): the trial looks
up its run by the `ray_trial_id` tag under the sweep's parent run before creating one, logs only the
iteration steps MLflow does not have yet, and ends the run FINISHED or FAILED.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from .client import TrackingUnavailable, call, client
from .schema import (
    ATTEMPTS_TAG,
    CACHED_TAG,
    MISMATCH_TAG,
    PARENT_TAG,
    ROLE_TAG,
    STEP_KEY,
    SWEEP_TAG,
    TRIAL_TAG,
    find_trial_run,
    iteration_metrics,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

QUICK = 2.0  # seconds a trial gives MLflow per iteration while it trains (it catches up later)


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
             run_name: str, known_run_id: str | None = None) -> TrialRun:
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
        tags = [RunTag(k, str(v)) for k, v in {**tags, ATTEMPTS_TAG: attempts}.items()]
        chunks = [new[i:i + 100] for i in range(0, len(new), 100)] or [[]]
        for i, chunk in enumerate(chunks):  # the tags ride with the last batch of params: one call fewer
            self._call(self.client.log_batch, self.run_id, params=chunk, tags=tags if i == len(chunks) - 1 else [])
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
        from mlflow.entities import Metric, RunTag

        have = set(skip) if skip is not None else self.logged_steps()
        done = []
        for n, d in enumerate(history):
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
            done.append(it)
            # with the step's metrics, which of the iterations so far the step cache served
            cached = ",".join(str(int(h["iteration"])) for h in history[:n + 1] if h.get("from_cache"))
            self._call(self.client.log_batch, self.run_id, metrics=[Metric(k, v, now, it) for k, v in items],
                       tags=[RunTag(CACHED_TAG, cached)])
        return done

    def log_files(self, paths: Iterable[str], artifact_path: str | None = None) -> None:
        for p in paths:
            self._call(self.client.log_artifact, self.run_id, p, artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._call(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

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
