"""A driver SIGKILLed right after a trial's MLflow child run appears, before Tune's next experiment snapshot.

The trial is unknown to the snapshot that `--resume` restores, so its configuration runs again under a new
Tune trial id (the searcher adopts its Optuna trial), in a new child run. The old run is an orphan: the
resumed sweep ends it KILLED, tags it `dsl.orphan=true` and `dsl.rerun_as=<new trial id>`, and deletes it
(MLflow's soft delete), so the sweep ends with exactly one FINISHED child run per trial of the Optuna study
and no RUNNING run; the orphan stays retrievable with `ViewType.ALL`.

To make the window wide enough to hit, the first driver runs one trial at a time with
`TUNE_GLOBAL_CHECKPOINT_S=600`: Tune then snapshots only at the start and when a trial has checkpointed
twice since the last snapshot, so a trial that starts after another one finished is unknown to the snapshot
until its second checkpoint. The test kills the driver as soon as MLflow has a child run whose trial id the
newest snapshot lacks.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.cluster import local_cluster
from tests.support.driver import Driver, driver_env, started, wait_for
from tests.support.sweep import METRIC_KEYS, snapshot, steps, study, tiny_data, write_sweep

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _env(uri: str, **extra: str) -> dict[str, str]:
    env = driver_env(uri)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _all_children(c, name: str) -> list:
    from mlflow.entities import ViewType

    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id], max_results=200, run_view_type=ViewType.ALL)
    return [r for r in runs if r.data.tags.get("dsl.role") == "trial"]


def test_orphan_run_of_a_killed_driver_is_closed_on_resume(tmp_path_factory: pytest.TempPathFactory,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data, cache = tiny_data(tmp_path_factory)
    from mlflow import MlflowClient

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    name = "orphan_run"
    grid = ["bdsl", "hdl", "wdsl"]
    tmp = tmp_path_factory.mktemp(name)
    sweep = write_sweep(tmp, name, data, cache, num_samples=len(grid), max_concurrent=1,
                        search={"rule": grid, "iterations": 1}, sampler={"type": "grid"})
    exp_dir = tmp / "ray_results" / name
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(uri)

    def orphan():
        """A child run (with its params) whose trial the newest snapshot does not know (the snapshot exists)."""
        snap = snapshot(exp_dir)
        if not snap:
            return None
        exp = c.get_experiment_by_name(name)
        if exp is None:
            return None
        runs = [r for r in c.search_runs([exp.experiment_id], max_results=50) if r.data.tags.get("dsl.role") == "trial"]
        return next((r for r in runs if r.data.tags["ray_trial_id"] not in snap and "labels.rule" in r.data.params), None)

    with local_cluster(workers=1, cpus=1) as cluster:
        driver = Driver(["sweep", str(sweep), "--address", cluster.address],
                        _env(uri, TUNE_GLOBAL_CHECKPOINT_S="600"))
        try:
            wait_for(lambda: started(driver), 300, "a trial to start", driver)
            run = wait_for(orphan, 400, "a child run unknown to Tune's snapshot", driver)
            driver.proc.send_signal(signal.SIGKILL)
            assert driver.wait(timeout=60) == -signal.SIGKILL
        finally:
            driver.stop()
        first = driver.output(200)
        orphan_tid, orphan_rid = run.data.tags["ray_trial_id"], run.info.run_id
        assert orphan_tid not in snapshot(exp_dir), first  # what --resume restores does not know it
        assert c.get_run(orphan_rid).info.status == "RUNNING"

        resume = Driver(["sweep", str(sweep), "--address", cluster.address, "--resume"], _env(uri))
        try:
            rc = resume.wait(timeout=480)
        finally:
            resume.stop()
    out = resume.output(200)
    assert rc == 0, f"{first}\n--- resume ---\n{out}"
    assert "orphan child run" in out, out

    s = study(tmp, name)
    assert len(s.trials) == len(grid) and all(t.state.name == "COMPLETE" for t in s.trials), s.trials
    ids = [t.user_attrs["tune_trial_id"] for t in s.trials]
    assert orphan_tid not in ids and len(set(ids)) == len(grid)

    runs = _all_children(c, name)
    active = [r for r in runs if r.info.lifecycle_stage == "active"]
    assert sorted(r.data.tags["ray_trial_id"] for r in active) == sorted(ids), "one child run per study trial"
    assert not [r for r in runs if r.info.status == "RUNNING"], "a child run was left RUNNING"
    for r in active:
        assert r.info.status == "FINISHED", r.data.tags
        for key in METRIC_KEYS:
            assert steps(c, r.info.run_id, key) == [0, 1], (r.data.tags["ray_trial_id"], key)

    gone = [r for r in runs if r.info.lifecycle_stage == "deleted"]
    assert [r.info.run_id for r in gone] == [orphan_rid]
    o = gone[0]
    assert o.info.status == "KILLED" and o.data.tags["dsl.orphan"] == "true"
    rerun = o.data.tags["dsl.rerun_as"]
    assert rerun in ids and rerun != orphan_tid
    twin = next(r for r in active if r.data.tags["ray_trial_id"] == rerun)
    assert twin.data.params["labels.rule"] == o.data.params["labels.rule"]  # the same configuration ran again
    adopted = next(t for t in s.trials if t.user_attrs["tune_trial_id"] == rerun)
    assert adopted.user_attrs["adopted_from"] == orphan_tid
