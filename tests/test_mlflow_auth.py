"""A sweep against an MLflow server with basic auth (`mlflow server --app-name basic-auth`).

Credentials reach the sweep, its trials and `dsl-sweep best` only through MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD in the environment. Without them `dsl-sweep sweep` stops before loading the
corpus or starting Ray, and with a wrong password `dsl-sweep best` stops before its first lookup, each
with one clear `error:` line (exit code 2). The password never appears in the sweep's storage path,
the server's artifacts or tracking database, run params/tags, the Ray session logs, best.yaml, or
anything the commands print.
"""
from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.support.mlflow_server import CRED_VARS, MlflowServer
from tests.support.sweep import tiny_data, tiny_sweep

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
USER = "sweeper"  # the admin user the auth app creates at its first start


def cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`dsl-sweep ARGS` as a subprocess, stdout and stderr captured separately."""
    try:
        return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=REPO, env=env, text=True,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"dsl-sweep {' '.join(args)} ran past {timeout} s:\n{exc.stdout}\n{exc.stderr}") from None


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for f in Path(root).rglob("*"):
        if f.is_file() and not f.is_symlink():
            try:
                blob = f.read_bytes()
            except OSError:
                continue
            hits += [f"{f} ({n!r})" for n in needles if n in blob]
    return hits


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory):
    data, cache = tiny_data(tmp_path_factory)  # or skip: no EmoDB
    tmp = tmp_path_factory.mktemp("mlflow_auth")
    password = "pw-" + secrets.token_hex(16)
    sweeps = {}
    for name in ("auth_sweep", "auth_denied"):
        raw = tiny_sweep(name, data, cache, tmp / "ray_results", num_samples=1, max_concurrent=1,
                         search={"rule": "bdsl", "iterations": 1}, sampler={"type": "grid"})
        sweeps[name] = tmp / f"{name}.yaml"
        sweeps[name].write_text(yaml.safe_dump(raw, sort_keys=False))
    ray_tmp = tempfile.mkdtemp(prefix="ra", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k not in CRED_VARS and k != "RAY_ADDRESS"}
    env.update(DSL_PROGRESS="0", RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    env.pop("DSL_SWEEP_VERBOSE", None)
    try:
        with MlflowServer(tmp / "mlflow", auth_password=password, auth_user=USER) as server:
            env["MLFLOW_TRACKING_URI"] = server.uri
            yield SimpleNamespace(server=server, password=password, tmp=tmp, sweeps=sweeps, ray_tmp=Path(ray_tmp),
                                  env=env, creds={**env, "MLFLOW_TRACKING_USERNAME": USER,
                                                  "MLFLOW_TRACKING_PASSWORD": password})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def finished(auth):
    """The sweep and `dsl-sweep best`, credentials only in the environment."""
    sweep = cli(["sweep", str(auth.sweeps["auth_sweep"])], auth.creds)
    best = cli(["best", "auth_sweep", "--out", str(auth.tmp / "best.yaml")], auth.creds, timeout=300)
    return SimpleNamespace(sweep=sweep, best=best)


@pytest.fixture
def logged_in(auth, monkeypatch: pytest.MonkeyPatch):
    """(client, experiment, runs) of the sweep, read with the credentials set in this process only."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth.password)
    c = MlflowClient(auth.server.uri)
    exp = c.get_experiment_by_name("auth_sweep")
    assert exp is not None
    return c, exp, c.search_runs([exp.experiment_id], max_results=100)


def test_sweep_and_best_with_env_credentials(auth, finished, logged_in) -> None:
    assert finished.sweep.returncode == 0, finished.sweep.stdout[-3000:] + finished.sweep.stderr[-3000:]
    assert finished.best.returncode == 0, finished.best.stdout[-3000:] + finished.best.stderr[-3000:]
    best = yaml.safe_load((auth.tmp / "best.yaml").read_text())
    assert best["labels"]["rule"] == "bdsl" and best["iterations"] in (0, 1)
    c, _, runs = logged_in
    trials = [r for r in runs if r.data.tags.get("dsl.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("dsl.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    assert sorted(m.step for m in c.get_metric_history(trials[0].info.run_id, "mean_fold_ua")) == [0, 1]
    assert sum(r.data.tags.get("dsl.best") == "true" for r in trials) == 1


def test_password_never_stored_or_printed(auth, finished, logged_in) -> None:
    assert finished.sweep.returncode == 0 and finished.best.returncode == 0
    pw = auth.password
    header = base64.b64encode(f"{USER}:{pw}".encode())  # what an Authorization header would carry
    needles = [pw.encode(), header]
    for proc in (finished.sweep, finished.best):
        for stream in (proc.stdout, proc.stderr):
            assert pw not in stream and header.decode() not in stream
    _, exp, runs = logged_in
    for r in runs:
        for k, v in {**r.data.params, **r.data.tags}.items():
            assert pw not in k and pw not in v, (r.info.run_id, k)
    assert all(pw not in v for v in exp.tags.values())
    for where in (auth.tmp / "ray_results",  # Tune state, checkpoints, Optuna journal
                  auth.server.artifacts,  # everything logged as an artifact (config, sweep.yaml, plots)
                  auth.tmp / "mlflow" / "mlflow.db",  # params, tags, metrics, run names as stored
                  auth.ray_tmp,  # the Ray session the sweep started: its logs
                  auth.tmp / "best.yaml"):
        hits = files_containing(where, needles) if where.is_dir() else \
            ([str(where)] if any(n in where.read_bytes() for n in needles) else [])
        assert not hits, f"the password leaked into {hits}"
    # the scans above saw real output: trial checkpoints and the Ray session's logs
    assert list((auth.tmp / "ray_results" / "auth_sweep").glob("*/checkpoint_*"))
    assert list(auth.ray_tmp.glob("ray/session_*/logs/*.log"))


def test_without_credentials_fails_early(auth) -> None:
    proc = cli(["sweep", str(auth.sweeps["auth_denied"])], auth.env, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "MLFLOW_TRACKING_USERNAME" in err[-1], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # stopped before the corpus was loaded and before Ray or any trial started
    assert "corpus emodb" not in proc.stdout and " start " not in proc.stdout, proc.stdout
    assert not (auth.tmp / "ray_results" / "auth_denied").exists()


def test_wrong_password_fails_clearly_without_echoing_it(auth) -> None:
    wrong = "wrong-" + secrets.token_hex(12)
    env = {**auth.env, "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": wrong}
    proc = cli(["best", "auth_sweep", "--out", str(auth.tmp / "wrong.yaml")], env, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and USER in proc.stderr.splitlines()[-1], proc.stderr[-3000:]
    assert wrong not in proc.stdout + proc.stderr and auth.password not in proc.stdout + proc.stderr
    assert not (auth.tmp / "wrong.yaml").exists()
