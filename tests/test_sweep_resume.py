"""Interrupt a running sweep (SIGINT to the launcher process) and `--resume` it.

The resumed sweep keeps the same Optuna study and MLflow parent run; trials that had finished are
not run again (their MLflow runs were started exactly once), interrupted ones continue.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.support.sweep import tiny_data, tiny_sweep

pytestmark = pytest.mark.slow

N_TRIALS = 6
EVENT = re.compile(r"^\[\s*\d+:\d+\] (start|trial|done|stop|retry|ERROR)\s+#(\w+)")


def _events(out: list[str], kind: str) -> set[str]:
    return {m.group(2) for ln in out if (m := EVENT.match(ln)) and m.group(1) == kind}


def _ready(out: list[str]) -> bool:
    """Two trials done and another one past its first checkpoint."""
    done = _events(out, "done")
    return len(done) >= 2 and bool(_events(out, "trial") - done)


def _launch(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, queue.Queue[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")  # EOF

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _read_until(proc, lines, pred, timeout: float, log: list[str]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line == "":
            break
        log.append(line)
        if pred(log):
            return
    raise AssertionError("sweep output did not show the expected progress:\n" + "".join(log[-60:]))


def _drain(proc, lines, timeout: float, log: list[str]) -> int:
    rc = proc.wait(timeout=timeout)
    while True:
        try:
            line = lines.get(timeout=5)
        except queue.Empty:
            break
        if line == "":
            break
        log.append(line)
    return rc


def test_interrupt_and_resume(tmp_path_factory: pytest.TempPathFactory) -> None:
    import optuna
    from mlflow import MlflowClient

    from sweeps.search.searcher import journal_storage

    data, cache = tiny_data(tmp_path_factory)  # or skip: no EmoDB
    tmp = tmp_path_factory.mktemp("resume")
    raw = tiny_sweep("resume_sweep", data, cache, tmp / "ray_results", num_samples=N_TRIALS)
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "DSL_PROGRESS": "0", "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    repo = Path(__file__).resolve().parents[1]

    log: list[str] = []
    proc, lines = _launch(["sweep", str(tmp / "sweep.yaml")], env, repo)
    try:
        _read_until(proc, lines, _ready, 420, log)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves the experiment state and stops
    rc = _drain(proc, lines, 180, log)
    assert rc == 130, "".join(log[-40:])
    done_before = _events(log, "done")
    assert len(done_before) >= 2

    log2: list[str] = []
    proc, lines = _launch(["sweep", str(tmp / "sweep.yaml"), "--resume"], env, repo)
    rc = _drain(proc, lines, 600, log2)
    assert rc == 0, "".join(log2[-60:])
    assert not (_events(log2, "start") & done_before), "a finished trial ran again"

    study = optuna.load_study(study_name="resume_sweep",
                              storage=journal_storage(tmp / "ray_results" / "resume_sweep" / "optuna.journal"))
    assert len(study.trials) == N_TRIALS
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("resume_sweep")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("dsl.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("dsl.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags.get("dsl.resumed") == "true"
    assert len(children) == N_TRIALS
    ids = {r.data.tags["ray_trial_id"] for r in children}
    assert ids == {t.user_attrs["tune_trial_id"] for t in study.trials}
    for r in children:
        tid = r.data.tags["ray_trial_id"]
        assert r.info.status == "FINISHED"
        if tid.split("_")[-1] in done_before:
            assert r.data.tags["dsl.attempts"] == "1", f"finished trial {tid} was started again"
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "mean_fold_ua"))
        assert steps == list(range(int(r.data.params["iterations"]) + 1))
    interrupted = [r for r in children if r.data.tags["dsl.attempts"] != "1"]
    assert interrupted, "no trial was running at the interrupt: nothing was resumed"
