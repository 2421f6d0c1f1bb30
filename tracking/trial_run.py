"""The MLflow child run of one Ray trial, found again by its trial id: opened, fed and ended by the trial,
backfilled and closed by the driver when the trial could not.

No `setup_mlflow`/`MLflowLoggerCallback` (they duplicated runs on retries and restores): the trial looks
up its run by the `ray_trial_id` tag under the sweep's parent run before creating one, logs only the
iteration steps MLflow does not have yet, and ends the run FINISHED or FAILED. While the tracking server
is away the trial keeps training (`publish` gives it a few seconds per iteration) and catches up later.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from dsl.protocols.plans import is_leak_free

from .client import TrackingUnavailable, call, client
from .schema import (
    ATTEMPTS_TAG,
    CACHED_TAG,
    CONFIG_ARTIFACT,
    ERROR_TAG,
    LEAK_FREE_TAG,
    MISMATCH_TAG,
    NODE_ID_TAG,
    OBJECTIVE_SEEDS_TAG,
    PARENT_TAG,
    PLOT_DIR,
    PROTOCOL_TAG,
    RESUMED_FROM_TAG,
    ROLE_TAG,
    ROLE_TRIAL,
    STEP_KEY,
    STOPPED_EARLY_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    ZERO_COPY_TAG,
    find_trial_run,
    flat_params,
    iteration_metrics,
)
from .trial_artifacts import TrialRecord, log_trial_artifacts

log = logging.getLogger(__name__)
T = TypeVar("T")

QUICK = 2.0  # seconds a trial gives MLflow per iteration while it trains (it catches up later)


class TrialRun:
    """The MLflow child run of one Ray trial."""

    def __init__(self, c, run_id: str, status: str = "RUNNING"):
        self.client, self.run_id = c, run_id
        self.status = status  # as MLflow had it when the run was opened or found
        self.timeout: float | None = None  # None: $DSL_MLFLOW_TIMEOUT
        self.values: dict[int, float] = {}  # step -> STEP_KEY value MLflow has (from `logged_steps`)
        self.logged: set[int] = set()  # steps MLflow has, as far as this object knows
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

    # --- opened by the trial -----------------------------------------------------------------------------
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
                       tags={PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id, SWEEP_TAG: sweep, ROLE_TAG: ROLE_TRIAL})
        return cls(c, run.info.run_id, run.info.status)

    def start(self, config: Mapping[str, Any], trial_id: str, resumed_from: int, node_id: str,
              frames_zero_copy: bool, objective_seeds: Sequence[int] = ()) -> int:
        """Mark RUNNING (again), log the config's params the run lacks and this attempt's tags (with the seeds
        whose mean is the objective); returns this start's number (tag `dsl.attempts`)."""
        from mlflow.entities import Param, RunTag

        protocol = str((config.get("protocol") or {}).get("name", ""))
        tags = {RESUMED_FROM_TAG: resumed_from, ZERO_COPY_TAG: frames_zero_copy, NODE_ID_TAG: node_id,
                PROTOCOL_TAG: protocol, LEAK_FREE_TAG: str(is_leak_free(protocol)).lower()}
        if objective_seeds:
            tags[OBJECTIVE_SEEDS_TAG] = ",".join(map(str, objective_seeds))
        params = {**flat_params(config), TRIAL_TAG: trial_id}
        self._call(self.client.update_run, self.run_id, status="RUNNING")
        data = self._call(self.client.get_run, self.run_id).data
        attempts = int(data.tags.get(ATTEMPTS_TAG, "0")) + 1
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in data.params]
        run_tags = [RunTag(k, str(v)) for k, v in {**tags, ATTEMPTS_TAG: attempts}.items()]
        chunks = [new[i:i + 100] for i in range(0, len(new), 100)] or [[]]
        for i, chunk in enumerate(chunks):  # the tags ride with the last batch of params: one call fewer
            self._call(self.client.log_batch, self.run_id, params=chunk, tags=run_tags if i == len(chunks) - 1 else [])
        return attempts

    def log_config(self, config_yaml: str) -> None:
        """The trial's resolved config as `config.yaml` (what `dsl-sweep best` reads back)."""
        with tempfile.TemporaryDirectory(prefix="dsl-cfg-") as tmp:
            (Path(tmp) / CONFIG_ARTIFACT).write_text(config_yaml)
            self.log_files([str(Path(tmp) / CONFIG_ARTIFACT)])

    # --- steps ---------------------------------------------------------------------------------------------
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

    def catch_up(self, history: Sequence[Mapping[str, Any]]) -> list[int]:
        """At the start of an attempt: learn which steps MLflow has, then log those of `history` (a restored
        checkpoint's, the truth) that it lacks; returns those logged."""
        self.logged = self.logged_steps()
        done = self.log_iterations(history, skip=self.logged)
        self.logged.update(done)
        return done

    def publish(self, record: TrialRecord, finished: bool, wait: bool, refresh: bool = False) -> bool:
        """Log the steps of `record`'s history MLflow lacks, then its artifacts (plots only when `finished`).
        `wait=False`: give an unreachable server a few seconds and return False (the steps are logged on a
        later call); `wait=True`: raise `TrackingUnavailable` after `$DSL_MLFLOW_TIMEOUT` seconds. `refresh`
        (after a call that failed): first ask the server which steps it has, since a batch whose reply was
        lost may still have been stored."""
        history = record.state.history
        try:
            with self.briefly(None if wait else QUICK):
                if refresh:
                    self.logged.update(self.logged_steps())
                self.logged.update(self.log_iterations(history, skip=self.logged))
                self.log_artifacts(record, finished, plots_too=finished)
            return True
        except TrackingUnavailable as exc:
            if wait:
                raise
            missing = sorted({int(d["iteration"]) for d in history} - self.logged)
            log.warning("MLflow unreachable, training on; steps %s are logged when it is back: %s", missing, exc)
            return False

    # --- artifacts and tags -------------------------------------------------------------------------------
    def log_artifacts(self, record: TrialRecord, finished: bool, plots_too: bool = True) -> None:
        """`result.json` and (`plots_too`) the plots, written from `record` (see `trial_artifacts`)."""
        log_trial_artifacts(self, record, finished, plots_too)

    def log_files(self, paths: Iterable[str], artifact_path: str | None = None) -> None:
        for p in paths:
            self._call(self.client.log_artifact, self.run_id, p, artifact_path)

    def has_plots(self) -> bool:
        """Whether the run has its plots (a trial renders them when it finishes)."""
        return any(a.path == PLOT_DIR for a in self._call(self.client.list_artifacts, self.run_id))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._call(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    # --- ended by the trial --------------------------------------------------------------------------------
    def end(self, status: str = "FINISHED") -> None:
        self._call(self.client.set_terminated, self.run_id, status)

    def fail(self, exc: BaseException) -> None:
        """End the run FAILED with the error as tag `dsl.error`; never raises (tracking must not hide `exc`)."""
        try:
            with self.briefly(QUICK if isinstance(exc, TrackingUnavailable) else None):
                self.set_tags({ERROR_TAG: f"{type(exc).__name__}: {exc}"[:5000]})
                self.end("FAILED")
        except Exception:
            log.exception("could not mark the MLflow run FAILED")

    # --- found again and closed by the driver ----------------------------------------------------------------
    @classmethod
    def find(cls, tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: str) -> TrialRun | None:
        """The run of trial `trial_id` under the parent, or None (a trial that never reached MLflow)."""
        c = client(tracking_uri)
        run = find_trial_run(c, experiment_id, parent_run_id, trial_id)
        return None if run is None else cls(c, run.info.run_id, run.info.status)

    def backfill(self, record: TrialRecord) -> list[int]:
        """Log the steps of `record` (the trial's latest checkpoint) the run lacks (never one it has), and its
        artifacts when the trial could not (stopped by Tune inside `tune.report`, or failed for good: a
        trial renders its plots only when it finishes); returns the steps logged."""
        done = self.log_iterations(record.state.history)
        if (done or not self.has_plots()) and record.config is not None:
            iterations = int(record.config.get("iterations", 0))
            self.log_artifacts(record, finished=record.state.next_iteration > iterations)
        return done

    def close(self, status: str, stopped_early: bool = False) -> None:
        """End the run as the driver saw the trial end: `status` FINISHED (tag `dsl.stopped_early` when the
        scheduler stopped it) or FAILED. A run the trial already ended stays as it is, unless it failed for
        good after ending FINISHED."""
        if status == "FINISHED" and stopped_early:
            self._call(self.client.set_tag, self.run_id, STOPPED_EARLY_TAG, "true")
        if self.status == "RUNNING" or (status == "FAILED" and self.status != "FAILED"):
            self.end(status)


class NoRun:
    """Stands in for `TrialRun` when a sweep runs without MLflow tracking."""

    run_id = None

    @contextmanager
    def briefly(self, seconds: float | None = QUICK):
        yield self

    def start(self, config: Mapping[str, Any], trial_id: str, resumed_from: int, node_id: str,
              frames_zero_copy: bool, objective_seeds: Sequence[int] = ()) -> int:
        return 1

    def log_config(self, config_yaml: str) -> None: ...

    def catch_up(self, history: Sequence[Mapping[str, Any]]) -> list[int]:
        return []

    def publish(self, record: TrialRecord, finished: bool, wait: bool, refresh: bool = False) -> bool:
        return True

    def log_artifacts(self, record: TrialRecord, finished: bool, plots_too: bool = True) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...

    def fail(self, exc: BaseException) -> None: ...


def open_trial_run(tracking_uri: str | None, experiment_id: str | None, parent_run_id: str | None, sweep: str,
                   trial_id: str, run_name: str, known_run_id: str | None = None) -> TrialRun | NoRun:
    """The trial's run (`TrialRun.open`), or a `NoRun` when the sweep runs without tracking (no URI)."""
    if not tracking_uri:
        return NoRun()
    assert experiment_id and parent_run_id
    return TrialRun.open(tracking_uri, experiment_id, parent_run_id, sweep, trial_id, run_name, known_run_id)
