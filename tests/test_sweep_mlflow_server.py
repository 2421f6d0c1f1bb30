"""A small sweep against a real `mlflow server` (SQLite backend), one trial failing once mid-chain.

Checks through the MLflow client: one parent run, one child per trial (the failed trial resumed from
iteration 1 in the same run), per-fold metrics, artifacts, Optuna states vs. early stops, best.yaml
equal to the best child's config, and the registered final model predicting through `models:/`.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from tests.support.mlflow_server import MlflowServer
from tests.support.sweep import tiny_data, tiny_sweep

pytestmark = pytest.mark.slow

N_TRIALS = 4


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory):
    from sweeps.cli import main
    from tests.support import fault

    data, cache = tiny_data(tmp_path_factory)  # or skip: no EmoDB
    tmp = tmp_path_factory.mktemp("server_sweep")
    raw = tiny_sweep("server_sweep", data, cache, tmp / "ray_results", num_samples=N_TRIALS,
                     scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    raw["base"]["plugins"] = [fault.MODULE]  # every trial imports it: one trial fails once after iteration 0
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(raw))
    marker = tmp / "failed-once"
    with MlflowServer(tmp / "mlflow") as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSL_PROGRESS", "0")
        mp.setenv(fault.FAIL_ONCE, str(marker))
        mp.setenv(fault.FAIL_AFTER, "0")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # through the real parser, so the arguments are the CLI's (every option and its default)
        rc = main(["sweep", str(tmp / "sweep.yaml"), "--tracking-uri", server.uri])
        mp.delenv(fault.FAIL_ONCE)
        best_rc = main(["best", "server_sweep", "--tracking-uri", server.uri, "--out", str(tmp / "best.yaml"),
                        "--top-k", "2", "--seeds", "2"])
        from mlflow import MlflowClient

        c = MlflowClient(server.uri)
        exp = c.get_experiment_by_name("server_sweep")
        yield SimpleNamespace(server=server, rc=rc, best_rc=best_rc, client=c, exp=exp, tmp=tmp, marker=marker,
                              runs=c.search_runs([exp.experiment_id], max_results=100))


def _children(s) -> list:
    return [r for r in s.runs if r.data.tags.get("dsl.role") == "trial"]


def _steps(s, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in s.client.get_metric_history(run_id, key))


def test_sweep_completes(sweep) -> None:
    assert sweep.rc == 0 and sweep.best_rc == 0


def test_one_parent_one_child_per_trial(sweep) -> None:
    parents = [r for r in sweep.runs if r.data.tags.get("dsl.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sweep.exp.tags.get("mlflow.experimentKind") == "custom_model_development"  # the UI's training view
    children = _children(sweep)
    assert len(children) == N_TRIALS
    assert len({r.data.tags["ray_trial_id"] for r in children}) == N_TRIALS
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.info.status == "FINISHED"
        assert r.data.tags["dsl.frames_zero_copy"] == "True"
        assert r.data.params["backbone"] == "small_cnn" and "labels.rule" in r.data.params
        assert r.data.params["labels.rule"] == "wdsl" or r.data.params["labels.alpha"] == "0.2"  # default alpha
        steps = _steps(sweep, r.info.run_id, "ua")
        assert steps == list(range(len(steps))) and steps  # no missing or duplicate step
        for key in ("fold_ua/0", "fold_ua/1", "fold_wa/0", "fold_wa/1", "mean_fold_ua", "wa",
                    "segment_accuracy", "changed_label_share"):
            assert _steps(sweep, r.info.run_id, key) == steps, key


def test_artifacts(sweep) -> None:
    for r in _children(sweep):
        top = {a.path for a in sweep.client.list_artifacts(r.info.run_id)}
        plots = {a.path for a in sweep.client.list_artifacts(r.info.run_id, "plots")}
        assert {"config.yaml", "result.json", "plots"} <= top
        assert plots == {"plots/confusion_matrix.png", "plots/accuracy_per_iteration.png",
                         "plots/segment_posteriors.png"}
    parent = next(r for r in sweep.runs if r.data.tags.get("dsl.role") == "parent")
    assert {"sweep.yaml", "trials.txt", "comparison"} <= {a.path for a in sweep.client.list_artifacts(parent.info.run_id)}
    comparison = {a.path for a in sweep.client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/trials.csv", "comparison/trials.html", "comparison/ua_per_iteration.png",
            "comparison/param_importances.json"} <= comparison
    csv_rows = Path(sweep.client.download_artifacts(parent.info.run_id, "comparison/trials.csv",
                                                    str(sweep.tmp / "cmp"))).read_text().splitlines()
    assert len(csv_rows) == 1 + N_TRIALS and csv_rows[0].startswith("trial,run,status")


def test_failed_trial_resumed_in_its_own_run(sweep) -> None:
    failed_id = sweep.marker.read_text()  # the trial that raised after iteration 0
    runs = [r for r in _children(sweep) if r.data.tags["ray_trial_id"] == failed_id]
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["dsl.resumed_from"] == "1"
    assert run.data.tags["dsl.attempts"] == "2"
    assert run.info.status == "FINISHED"
    steps = _steps(sweep, run.info.run_id, "mean_fold_ua")
    assert steps == list(range(len(steps))) and len(steps) >= 2
    others = [r for r in _children(sweep) if r.data.tags["ray_trial_id"] != failed_id]
    assert all(r.data.tags["dsl.attempts"] == "1" for r in others)


def test_optuna_study_matches_the_sweep(sweep) -> None:
    import optuna

    from sweeps.search.searcher import journal_storage

    study = optuna.load_study(study_name="server_sweep",
                              storage=journal_storage(sweep.tmp / "ray_results" / "server_sweep" / "optuna.journal"))
    assert len(study.trials) == N_TRIALS
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    for r in _children(sweep):
        t = by_id[r.data.tags["ray_trial_id"]]
        stopped = r.data.tags.get("dsl.stopped_early") == "true"
        assert t.state.name == ("PRUNED" if stopped else "COMPLETE")
        assert "labels.alpha" not in t.params or t.params["labels.rule"] == "wdsl"


def test_best_yaml_is_a_reevaluated_top_config(sweep) -> None:
    """best races the top 2 distinct configs (by UA at each trial's last iteration) on 2 fresh seeds under the
    leak-free `refinery` and writes the winner with the race's verdict and figures, not the sweep's."""
    from dsl.config import from_dict, load_config

    c = sweep.client
    scored = []
    for r in _children(sweep):
        ua = {m.step: m.value for m in c.get_metric_history(r.info.run_id, "ua")}
        wa = {m.step: m.value for m in c.get_metric_history(r.info.run_id, "wa")}
        last = max(ua)  # the objective is the last iteration's UA, not the best over iterations
        scored.append(((ua[last], wa[last], -last, -r.info.start_time), r, last))
    scored.sort(key=lambda x: x[0], reverse=True)
    best = load_config(sweep.tmp / "best.yaml")  # what `dsl-sweep run best.yaml` loads
    configs = []
    for _, run, step in scored:
        logged = from_dict(yaml.safe_load(Path(c.download_artifacts(run.info.run_id, "config.yaml",
                                                                     str(sweep.tmp))).read_text()))
        configs.append((run, logged.replace(iterations=step)))
    winner = next(run for run, cfg in configs if cfg == best)
    assert c.get_run(winner.info.run_id).data.tags.get("dsl.best") == "true"
    ev = yaml.safe_load((sweep.tmp / "best.yaml").read_text())["evaluation"]
    assert ev["protocol"] == "refinery" and ev["leak_free"] is True and ev["race"]["seeds"] == [1, 2]
    assert 1 <= len(ev["race"]["survivors"]) <= 2 and ev["trial_id"] == winner.data.tags["ray_trial_id"]
    assert ev["verdict"] and ev["holdout"] is None  # the tiny sweep has no holdout: no final exam
    assert ev["race"]["ua"]["low"] <= ev["race"]["ua"]["mean"] <= ev["race"]["ua"]["high"]
    key = ev["trial_id"].split("_")[-1]
    assert (sweep.tmp / "best_selection" / "race" / f"{key}.seeds" / "seed1.json").is_file()


def test_best_yaml_reproduces_the_trial(sweep) -> None:
    from dsl.studies.run import run_to_file

    out = sweep.tmp / "rerun.json"
    run_to_file(str(sweep.tmp / "best.yaml"), None, {}, str(out), quiet=True)
    import json

    result = json.loads(out.read_text())
    best = yaml.safe_load((sweep.tmp / "best.yaml").read_text())
    run = next(r for r in _children(sweep) if r.data.tags.get("dsl.best") == "true")
    logged = {m.step: m.value for m in sweep.client.get_metric_history(run.info.run_id, "mean_fold_ua")}
    assert len(result["iterations"]) == best["iterations"] + 1
    last = result["iterations"][-1]
    assert np.mean(last["fold_ua"]) == pytest.approx(logged[best["iterations"]], abs=1e-9)  # same machine


def test_register_and_predict(sweep, capsys: pytest.CaptureFixture[str]) -> None:
    from sweeps.cli import main
    from sweeps.selection.best import BestOptions, choose_best

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSL_PROGRESS", "0")
        assert choose_best(BestOptions(sweep="server_sweep", tracking_uri=sweep.server.uri,
                                       out=str(sweep.tmp / "best.yaml"), register=True, model_name="dsl-tiny",
                                       top_k=2, seeds=2)) == sweep.tmp / "best.yaml"  # chains read back from disk
    versions = sweep.client.search_model_versions("name='dsl-tiny'")
    assert len(versions) == 1
    ev = yaml.safe_load((sweep.tmp / "best.yaml").read_text())["evaluation"]
    # The registered model carries the race's figures and verdict, not the sweep's self-graded score.
    assert versions[0].tags["selection_protocol"] == "refinery" and versions[0].tags["verdict"] == ev["verdict"]
    assert versions[0].tags["race_ua"].startswith(f"{ev['race']['ua']['mean']:.4f}")
    run = sweep.client.get_run(versions[0].run_id)
    assert run.data.metrics["race_ua"] == pytest.approx(ev["race"]["ua"]["mean"], abs=1e-6)
    wavs = sorted(str(p) for p in Path(yaml.safe_load((sweep.tmp / "best.yaml").read_text())["data"]).iterdir())[:2]
    capsys.readouterr()
    assert main(["predict", "models:/dsl-tiny/1", *wavs, "--tracking-uri", sweep.server.uri,
                 "--contour", str(sweep.tmp / "contours")]) == 0
    out = capsys.readouterr().out
    labels = ("anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral")
    for w in wavs:
        line = next(ln for ln in out.splitlines() if ln.startswith(w))
        assert line.split(": ", 1)[1].split()[0] in labels
    assert len(list((sweep.tmp / "contours").glob("*.png"))) == 2


def test_registered_model_serves_over_http(sweep) -> None:
    """`mlflow models serve --env-manager local` on the registered model answers a real wav over HTTP, sent
    both as a path and as base64 bytes; the model carries pinned requirements, code, signature, example."""
    import base64
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from mlflow.models import Model

    from tests.support.mlflow_server import free_port

    versions = sweep.client.search_model_versions("name='dsl-tiny'")
    if not versions:
        pytest.skip("test_register_and_predict registers the model this test serves")
    local = Path(sweep.client.download_artifacts(versions[0].run_id, "model", str(sweep.tmp / "served")))
    meta = Model.load(str(local))
    assert meta.signature is not None and [c.name for c in meta.signature.inputs.inputs] == ["path", "audio"]
    assert meta.saved_input_example_info is not None
    reqs = (local / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("scikit-learn==") for r in reqs)
    assert not any(r.strip() == "dsl-sweeps" for r in reqs)  # no unpinned name a package index lacks
    assert {p.name for p in (local / "code").iterdir()} >= {"dsl", "tracking"}

    port = free_port()
    log = open(sweep.tmp / "serve.log", "w")
    env = {**os.environ, "MLFLOW_TRACKING_URI": sweep.server.uri}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/dsl-tiny/1",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (sweep.tmp / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "model server not up in 240 s"
                time.sleep(1)
        wav = sorted(Path(yaml.safe_load((sweep.tmp / "best.yaml").read_text())["data"]).iterdir())[0]
        body = {"dataframe_split": {"columns": ["path", "audio"], "data": [
            [str(wav), None], [None, base64.b64encode(wav.read_bytes()).decode("ascii")]]}}
        req = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            preds = json.loads(r.read())["predictions"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    labels = ("anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral")
    assert len(preds) == 2 and all(p["label"] in labels for p in preds)
    assert preds[0]["label"] == preds[1]["label"]  # the same file, by path and by bytes
    assert preds[0]["path"] == str(wav) and preds[1]["path"] == "audio[1]"
    assert sum(preds[0][k] for k in labels if k in preds[0]) == pytest.approx(1.0, abs=1e-6)


def test_mlflow_ui_shows_the_sweep_in_a_browser(sweep) -> None:
    """The MLflow UI (served by `mlflow server`) in headless chromium: the experiment's training view lists the
    parent and, expanded, every child run with its UA and WA columns; a trial's page shows its metric charts
    and its plots. Screenshots go to the test's folder (and to $DSL_SCREENSHOTS when set)."""
    import os
    import shutil

    pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
    from tests.support.mlflow_ui import find_chromium, headless_chromium, sweep_screenshots

    if find_chromium() is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt)")
    parent = next(r for r in sweep.runs if r.data.tags.get("dsl.role") == "parent")
    d = headless_chromium()
    try:
        shots = sweep_screenshots(d, sweep.server.uri, sweep.exp.experiment_id, parent, _children(sweep),
                                  sweep.tmp / "screenshots")
    finally:
        d.quit()
    for f in shots:
        assert f.stat().st_size > 20_000, f
    if os.environ.get("DSL_SCREENSHOTS"):
        dst = Path(os.environ["DSL_SCREENSHOTS"])
        dst.mkdir(parents=True, exist_ok=True)
        for f in shots:
            shutil.copy(f, dst / f.name)
