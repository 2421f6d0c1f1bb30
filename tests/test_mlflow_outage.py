"""The MLflow tracking server is stopped for 30 s mid-sweep and restarted on the same port and store.

A tiny 2-trial sweep (a subprocess driver on a local Ray) logs to an `mlflow server` (SQLite backend). When
the first iteration result arrives the server is SIGKILLed; 30 s later it starts again with the same
backend store and artifacts. Meanwhile the trials train on (they give MLflow a few seconds per iteration)
and log the steps it missed when it is back; a trial that ends while it is away waits for it
(`DSL_MLFLOW_TIMEOUT`, default 60 s). The sweep finishes, every child run is FINISHED and has every
iteration step exactly once for each metric.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.driver import Driver, driver_env, wait_for
from tests.support.mlflow_server import MlflowServer
from tests.support.sweep import METRIC_KEYS, children, steps, study, tiny_data, write_sweep

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RESULT = re.compile(r"^\[\s*\d+:\d+\] trial\s+#\w+ iteration (\d+)/")
OUTAGE_S = 30


def test_tracking_server_away_for_30_s(tmp_path_factory: pytest.TempPathFactory) -> None:
    data, cache = tiny_data(tmp_path_factory)
    from mlflow import MlflowClient

    name, iterations = "outage", 3
    tmp = tmp_path_factory.mktemp(name)
    sweep = write_sweep(tmp, name, data, cache, num_samples=2, max_concurrent=2, max_failures=1,
                        search={"rule": ["bdsl", "hdl"], "iterations": iterations}, sampler={"type": "grid"})
    server = MlflowServer(tmp / "mlflow").__enter__()
    again = None
    try:
        env = driver_env(server.uri)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env.pop("DSL_MLFLOW_TIMEOUT", None)  # the default, 60 s
        driver = Driver(["sweep", str(sweep)], env)
        try:
            wait_for(lambda: any(RESULT.match(ln) for ln in list(driver.lines)), 400, "a first iteration result",
                     driver)
            os.killpg(server.proc.pid, signal.SIGKILL)  # the server dies: no goodbye
            server.proc.wait(30)
            killed_at, seen = time.monotonic(), len(driver.lines)
            time.sleep(OUTAGE_S)
            during = [ln for ln in list(driver.lines)[seen:] if RESULT.match(ln)]
            again = MlflowServer(tmp / "mlflow", port=server.port).__enter__()  # same port, same store
            away = time.monotonic() - killed_at
            rc = driver.wait(timeout=600)
        finally:
            driver.stop()
        out = driver.output(200)
        assert rc == 0, out
        assert during, f"no trial reported an iteration while the server was away:\n{out}"

        c = MlflowClient(again.uri)
        runs = children(c, name)
        assert len(runs) == 2 and len({r.data.tags["ray_trial_id"] for r in runs}) == 2, [r.data.tags for r in runs]
        for r in runs:
            assert r.info.status == "FINISHED", (r.info.status, r.data.tags)
            for key in METRIC_KEYS:  # every iteration exactly once: nothing lost while away, nothing twice
                assert steps(c, r.info.run_id, key) == list(range(iterations + 1)), (key, r.data.tags)
            assert "dsl.mlflow_mismatch" not in r.data.tags
            top = {a.path for a in c.list_artifacts(r.info.run_id)}
            assert {"config.yaml", "result.json", "plots"} <= top
        parents = [r for r in c.search_runs([c.get_experiment_by_name(name).experiment_id])
                   if r.data.tags.get("dsl.role") == "parent"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        s = study(tmp, name)
        assert len(s.trials) == 2 and all(t.state.name == "COMPLETE" for t in s.trials)
        print(f"server away {away:.0f} s; results while away: {len(during)}; attempts: "
              f"{[r.data.tags['dsl.attempts'] for r in runs]}")
    finally:
        for srv in (again, server):
            if srv is not None:
                srv.__exit__()
