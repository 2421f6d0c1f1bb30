"""Faults on a multi-node Ray cluster on one machine: a worker node dies mid-trial; the driver is SIGKILLed.

(a) `Cluster.remove_node` kills the node of a trial that has checkpointed at least one chain iteration;
    a replacement node joins. The trial is retried on another node from its last checkpoint, the sweep
    finishes, and MLflow has exactly one child run per trial whose per-iteration metrics have every
    step 0..T exactly once.
(b) `dsl-sweep sweep FILE --address ...` is SIGKILLed (no chance to save anything) once the Tune
    experiment snapshot records a finished trial, then restarted with `--resume`: the same Optuna study
    ends with as many trials as the sweep; the trials finished before the kill are not run again (MLflow
    runs started once, metric histories and checkpoint files unchanged). test_sweep_resume.py covers
    the graceful Ctrl+C (SIGINT) case on a local Ray; this is the hard-kill case on a cluster.

The driver runs as a subprocess (`python -m sweeps.cli`), like `dsl-sweep`; the test process only
owns the cluster, kills things and reads MLflow (SQLite) and the files under the storage path.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.cluster import local_cluster, worker_ids
from tests.support.driver import Driver, driver_env, started, wait_for
from tests.support.sweep import METRIC_KEYS, children, snapshot, steps, study, tiny_data, write_sweep

pytestmark = pytest.mark.slow


def checkpoint_files(exp_dir: Path, trial_id: str) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file in the trial's checkpoint directories."""
    out = {}
    for d in exp_dir.glob(f"*_{trial_id}_*/checkpoint_*"):
        for f in d.rglob("*"):
            if f.is_file():
                st = f.stat()
                out[str(f.relative_to(exp_dir))] = (st.st_size, st.st_mtime_ns)
    return out


def history(c, run_id: str) -> dict[str, list[tuple[int, float, int]]]:
    return {k: sorted((m.step, m.value, m.timestamp) for m in c.get_metric_history(run_id, k)) for k in METRIC_KEYS}


@pytest.fixture(scope="module")
def cluster():
    """Head without CPUs + two 1-CPU worker nodes; shared by both tests (the first leaves two workers)."""
    with local_cluster(workers=2, cpus=1) as c:
        yield c


def test_worker_node_dies_trials_continue_elsewhere(cluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    data, cache = tiny_data(tmp_path_factory)
    from mlflow import MlflowClient

    name, iterations = "node_fault", 3
    tmp = tmp_path_factory.mktemp(name)
    sweep = write_sweep(tmp, name, data, cache, num_samples=2, max_concurrent=2, max_failures=3,
                        search={"rule": ["bdsl", "hdl"], "iterations": iterations}, sampler={"type": "grid"})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(uri)
    nodes = {n.node_id: n for n in cluster.worker_nodes}

    def victim():
        """A RUNNING trial on a live worker node with step >= 1 logged (so checkpoint 0 is registered:
        the trial computes iteration k only after Tune processed the checkpoint of k - 1), not yet done."""
        for r in children(c, name):
            node = r.data.tags.get("dsl.node_id")
            done = steps(c, r.info.run_id)
            if r.info.status == "RUNNING" and node in nodes and done and 1 <= max(done) < iterations:
                return r, node, max(done)
        return None

    driver = Driver(["sweep", str(sweep), "--address", cluster.address], driver_env(uri))
    try:
        wait_for(lambda: started(driver), 300, "a trial to start", driver)
        run, node_id, step_at_kill = wait_for(victim, 300, "a trial past iteration 1 on a worker node", driver)
        trial_id = run.data.tags["ray_trial_id"]
        cluster.remove_node(nodes[node_id], allow_graceful=False)  # the node crashes: raylet and workers die
        cluster.add_node(num_cpus=1, wait=False)  # a replacement joins (as an autoscaler would add one)
        cluster.wait_for_nodes(timeout=120)
        rc = driver.wait(timeout=420)
    finally:
        driver.stop()
    out = driver.output(200)
    assert rc == 0, out
    assert f"retry  #{trial_id}" in out, out  # Tune saw the failure and retried the trial

    runs = children(c, name)
    assert len(runs) == 2, [r.data.tags for r in runs]
    assert len({r.data.tags["ray_trial_id"] for r in runs}) == 2
    live = worker_ids(cluster)
    for r in runs:
        assert r.info.status == "FINISHED"
        for key in METRIC_KEYS:  # every iteration exactly once: nothing lost, nothing logged twice
            assert steps(c, r.info.run_id, key) == list(range(iterations + 1)), (key, r.data.tags)
        assert r.data.tags["dsl.frames_zero_copy"] == "True"
        if r.data.tags["ray_trial_id"] == trial_id:
            assert int(r.data.tags["dsl.attempts"]) >= 2
            # continued from its last checkpoint (>= the iteration MLflow had when the node died), not from 0
            assert int(r.data.tags["dsl.resumed_from"]) >= step_at_kill >= 1, r.data.tags
            assert r.data.tags["dsl.node_id"] != node_id and r.data.tags["dsl.node_id"] in live
        else:
            assert r.data.tags["dsl.attempts"] == "1" and r.data.tags["dsl.resumed_from"] == "0"
    s = study(tmp, name)
    assert len(s.trials) == 2 and all(t.state.name == "COMPLETE" for t in s.trials)
    assert {t.user_attrs["tune_trial_id"] for t in s.trials} == {r.data.tags["ray_trial_id"] for r in runs}


def test_driver_killed_then_resumed(cluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    data, cache = tiny_data(tmp_path_factory)
    from mlflow import MlflowClient

    name = "driver_kill"
    grid = [1, 4, 2]  # iterations: a short trial, a long one beside it, then one that starts after the short one
    tmp = tmp_path_factory.mktemp(name)
    sweep = write_sweep(tmp, name, data, cache, num_samples=len(grid), max_concurrent=2,
                        search={"rule": "bdsl", "iterations": grid}, sampler={"type": "grid"})
    exp_dir = tmp / "ray_results" / name
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(uri)

    def ready():
        """The snapshot knows every trial MLflow has seen and has one TERMINATED (kill now: nothing orphaned)."""
        snap = snapshot(exp_dir)
        done = {t for t, v in snap.items() if v["status"] == "TERMINATED"}
        seen = {r.data.tags["ray_trial_id"] for r in children(c, name)}
        return snap if done and len(snap) == len(grid) and seen <= set(snap) else None

    driver = Driver(["sweep", str(sweep), "--address", cluster.address], driver_env(uri))
    try:
        wait_for(lambda: started(driver), 300, "a trial to start", driver)
        wait_for(ready, 300, "a finished trial in the Tune snapshot", driver)
        driver.proc.send_signal(signal.SIGKILL)
        assert driver.wait(timeout=60) == -signal.SIGKILL
    finally:
        driver.stop()
    first = driver.output(200)
    snap = snapshot(exp_dir)  # exactly what --resume will restore
    finished = {t for t, v in snap.items() if v["status"] == "TERMINATED"}
    assert finished, first
    before = {r.data.tags["ray_trial_id"]: r for r in children(c, name)}
    kept = {t: (history(c, before[t].info.run_id), checkpoint_files(exp_dir, t)) for t in finished}
    assert all(files for _, files in kept.values())
    optuna_before = {t.user_attrs["tune_trial_id"]: t for t in study(tmp, name).trials}

    resume = Driver(["sweep", str(sweep), "--address", cluster.address, "--resume"], driver_env(uri))
    try:
        rc = resume.wait(timeout=420)
    finally:
        resume.stop()
    out = resume.output(200)
    assert rc == 0, f"{first}\n--- resume ---\n{out}"
    for t in finished:
        assert f"start  #{t}" not in out, f"finished trial {t} started again:\n{out}"

    runs = {r.data.tags["ray_trial_id"]: r for r in children(c, name)}
    assert set(runs) == set(snap), "one MLflow child run per Tune trial"
    parents = [r for r in c.search_runs([c.get_experiment_by_name(name).experiment_id])
               if r.data.tags.get("dsl.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags.get("dsl.resumed") == "true"
    for t, r in runs.items():
        total = int(r.data.params["iterations"])
        assert r.info.status == "FINISHED", (t, r.info.status)
        for key in METRIC_KEYS:
            assert steps(c, r.info.run_id, key) == list(range(total + 1)), (t, key)
        if t in finished:
            assert r.data.tags["dsl.attempts"] == "1", f"finished trial {t} was started again"
            hist, files = kept[t]
            assert history(c, r.info.run_id) == hist, f"metrics of finished trial {t} changed"
            assert checkpoint_files(exp_dir, t) == files, f"checkpoints of finished trial {t} changed"
        else:  # interrupted by the kill: continued, from the snapshot's checkpoint when it had one
            prior = int(before[t].data.tags.get("dsl.attempts", "0")) if t in before else 0
            assert int(r.data.tags["dsl.attempts"]) >= prior + 1  # its run (if it had one) was reopened
            known = snap[t]["last_result"].get("iteration")
            if known is not None:
                assert int(r.data.tags["dsl.resumed_from"]) >= int(known), (t, r.data.tags, known)

    s = study(tmp, name)
    assert len(s.trials) == len(grid) == len(runs), [(t.number, t.state, t.user_attrs) for t in s.trials]
    assert all(t.state.name == "COMPLETE" for t in s.trials)
    by_tune = {t.user_attrs["tune_trial_id"]: t for t in s.trials}
    assert set(by_tune) == set(runs)
    for t in finished:  # the study kept the finished trials as they were
        assert by_tune[t].number == optuna_before[t].number and by_tune[t].value == optuna_before[t].value
    assert sorted(int(r.data.params["iterations"]) for r in runs.values()) == sorted(grid)
