"""Tune callbacks on the driver: compact progress lines, and final MLflow statuses of trials.

A trial stopped by the scheduler never returns from its last `tune.report`, so its MLflow run is
ended here (FINISHED, tag `dsl.stopped_early`) and the steps of its last checkpoint that MLflow lacks
(the trial logs a step after reporting it) are logged here; a trial whose process died is marked
FAILED here, keeping the steps it checkpointed.
"""
from __future__ import annotations

import time
from typing import Any

from ray import tune

from dsl.config import ChainConfig
from dsl.pipeline.trial_config import trial_config
from dsl.results.naming import describe


def _short(trial_id: str) -> str:
    return "#" + trial_id.split("_")[-1]


def _error_line(trial) -> str:
    """The last line of the trial's error file (the exception), or ''."""
    try:
        from pathlib import Path

        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1].strip()[:300] if lines else ""
    except Exception:
        return ""


class ProgressPrinter(tune.Callback):
    """One line per trial event: start, iteration result, retry, completion, error."""

    def __init__(self, base: ChainConfig, num_samples: int):
        self.base, self.num_samples, self.t0 = base, num_samples, time.time()

    def _say(self, trials, msg: str) -> None:
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        m, s = divmod(int(time.time() - self.t0), 60)
        print(f"[{m:3d}:{s:02d}] {msg}  ({running} running, {done}/{self.num_samples} done)", flush=True)

    def _name(self, trial) -> str:
        try:
            return describe(trial_config(self.base, trial.config), trial.config)
        except Exception:
            return str(trial.config)

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._say(trials, f"start  {_short(trial.trial_id)} {self._name(trial)}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        self._say(trials, f"trial  {_short(trial.trial_id)} iteration {result['iteration']}/"
                          f"{result['iterations_total']}: UA {100 * result['ua']:.1f} WA {100 * result['wa']:.1f} "
                          f"objective {100 * result['objective']:.1f} | {result.get('seconds', 0):.0f} s")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._say(trials, f"retry  {_short(trial.trial_id)} after an error, from its last checkpoint: "
                          f"{_error_line(trial)}")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        r = trial.last_result or {}
        early = r.get("iteration", 0) < r.get("iterations_total", 0)
        best = f"objective {100 * r['objective']:.1f} at iteration {r['iteration']}" if r else "no result"
        self._say(trials, f"{'stop ' if early else 'done '}  {_short(trial.trial_id)} {best}"
                          f"{' (stopped early by the scheduler)' if early else ''}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._say(trials, f"ERROR  {_short(trial.trial_id)} failed for good: {_error_line(trial)} "
                          f"(traceback: {trial.error_file})")


def _backfill(run, trial) -> None:
    """Log the steps of the trial's latest checkpoint that its MLflow run lacks, and its artifacts when the
    trial could not (see `tracking.trial_run.TrialRun.backfill`)."""
    from trainables.checkpoint import TrialCheckpoint

    ckpt = trial.checkpoint
    if ckpt is None:
        return
    with ckpt.as_directory() as d:
        saved = TrialCheckpoint.load(d)
    done = run.backfill(saved)
    if done:
        print(f"MLflow: logged steps {done} of {_short(trial.trial_id)} from its last checkpoint", flush=True)


class FinalizeRuns(tune.Callback):
    """Ends MLflow child runs the trial itself could not end (scheduler stop, dead process)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id

    def _end(self, trial, status: str) -> None:
        from tracking.trial_run import TrialRun

        try:
            run = TrialRun.find(self.tracking_uri, self.experiment_id, self.parent_run_id, trial.trial_id)
            if run is None:
                return
            _backfill(run, trial)
            r = trial.last_result or {}
            run.close(status, stopped_early=r.get("iteration", 0) < r.get("iterations_total", 0))
        except Exception as exc:  # never break the sweep over bookkeeping
            print(f"warning: could not finalise the MLflow run of {trial.trial_id}: {exc}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trial, "FAILED")
