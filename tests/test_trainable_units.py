"""Trainable building blocks without Ray: metrics, checkpoint, MLflow child-run bookkeeping, plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsl.config import ChainConfig
from dsl.pipeline.chain import ChainState
from dsl.results.plots import accuracy_plot, confusion_plot, contour_plot
from sweeps.selection.candidates import at_iteration
from tests.support.mlflow_server import free_port
from tracking.client import redact_uri
from tracking.schema import iteration_metrics
from tracking.trial_run import TrialRun
from trainables.checkpoint import TrialCheckpoint
from trainables.metrics import objective_value, report_metrics


def _it(i: int, fold_ua: list[float], wa: float) -> dict:
    return {"iteration": i, "alpha": None if i == 0 else 0.3, "wa": wa, "ua": wa - 0.01, "fold_wa": [wa, wa],
            "fold_ua": fold_ua, "confusion": [[3, 1], [0, 4]], "segment_accuracy": 0.5,
            "changed_label_share": 0.1 * i, "target_entropy": 0.2, "epochs": 3.0, "seconds": 1.0,
            "segments_per_second": 100.0}


def test_iteration_metrics_are_flat() -> None:
    m = iteration_metrics(_it(1, [0.5, 0.7], 0.6))
    assert m["mean_fold_ua"] == pytest.approx(0.6)
    assert m["fold_ua/0"] == 0.5 and m["fold_ua/1"] == 0.7 and m["fold_wa/1"] == 0.6
    assert "alpha" not in iteration_metrics(_it(0, [0.5, 0.5], 0.5))  # None is not a metric
    from tracking.schema import SELECTOR_AGREEMENT

    assert SELECTOR_AGREEMENT not in m  # transductive: no selector
    held_out = {**_it(1, [0.5, 0.7], 0.6), "val_ua": [0.6, 0.6], "selector_agreement": 0.5}
    assert iteration_metrics(held_out)[SELECTOR_AGREEMENT] == 0.5


def test_objective_is_the_last_iteration_not_a_running_maximum() -> None:
    h = [_it(0, [0.5, 0.5], 0.6), _it(1, [0.6, 0.6], 0.9), _it(2, [0.6, 0.6], 0.7)]
    r = report_metrics(h, 3, resumed_from=1)
    assert (r["iteration"], r["iterations_total"], r["resumed_from"]) == (2, 3, 1)
    assert r["objective"] == pytest.approx(0.69)  # iteration 2's UA, although iteration 1 scored higher
    with pytest.raises(ValueError, match="held-out protocol"):
        objective_value(h[-1], "selected")  # a transductive run has no selected score
    assert objective_value({**h[-1], "selected_ua": 0.55}, "selected") == 0.55


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    state = ChainState(2, [np.eye(3, dtype=np.float32)], [_it(0, [0.5, 0.5], 0.5), _it(1, [0.6, 0.6], 0.6)])
    TrialCheckpoint(state, "run123", {0: np.ones((4, 3)), 1: np.zeros((4, 3))}).save(tmp_path)
    back = TrialCheckpoint.load(tmp_path)
    assert back.state.next_iteration == 2 and back.mlflow_run_id == "run123"
    assert back.state.history == state.history
    np.testing.assert_array_equal(back.state.targets[0], state.targets[0])
    assert sorted(back.contour) == [0, 1]


def test_checkpoint_format_is_checked(tmp_path: Path) -> None:
    import json

    state = ChainState(1, [np.eye(3, dtype=np.float32)], [_it(0, [0.5, 0.5], 0.5)])
    TrialCheckpoint(state, "r", {}, {"iterations": 2}, ["a", "b"], "t", "x").save(tmp_path)
    info = json.loads((tmp_path / "trial.json").read_text())
    (tmp_path / "trial.json").write_text(json.dumps({**info, "format": 99}))
    with pytest.raises(ValueError, match="trial.json: trial checkpoint format 99 is newer"):
        TrialCheckpoint.load(tmp_path)
    old = {k: info[k] for k in ("mlflow_run_id", "next_iteration")}  # format 1
    (tmp_path / "trial.json").write_text(json.dumps(old))
    with pytest.warns(UserWarning, match="format 1"):
        assert TrialCheckpoint.load(tmp_path).config is None


def test_driver_logs_the_artifacts_of_a_trial_stopped_before_it_could(tmp_path: Path) -> None:
    """ASHA can stop a trial inside its first `tune.report`, after the checkpoint, before MLflow: the driver
    writes the missing steps and the artifacts from that checkpoint."""
    from types import SimpleNamespace

    from mlflow import MlflowClient
    from ray import tune

    from sweeps.search.callbacks import _backfill

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = c.create_run(c.create_experiment("x")).info.run_id
    cfg = ChainConfig().to_dict()
    state = ChainState(1, [np.eye(2, dtype=np.float32)], [_it(0, [0.5, 0.5], 0.5)])
    TrialCheckpoint(state, run_id, {0: np.random.rand(5, 2)}, cfg, ["anger", "neutral"], "u.wav", "t1").save(
        tmp_path / "ckpt")
    trial = SimpleNamespace(checkpoint=tune.Checkpoint.from_directory(tmp_path / "ckpt"), trial_id="t1")
    _backfill(TrialRun(c, run_id), trial)
    top = {a.path for a in c.list_artifacts(run_id)}
    assert {"result.json", "plots"} <= top
    assert {a.path for a in c.list_artifacts(run_id, "plots")} == {
        "plots/confusion_matrix.png", "plots/accuracy_per_iteration.png", "plots/segment_posteriors.png"}
    assert [m.step for m in c.get_metric_history(run_id, "mean_fold_ua")] == [0]
    result = c.download_artifacts(run_id, "result.json", str(tmp_path / "dl"))
    import json

    r = json.loads(Path(result).read_text())
    assert r["finished"] is False and r["trial_id"] == "t1" and r["label_names"] == ["anger", "neutral"]


def test_a_trial_plots_once_and_the_driver_plots_a_trial_that_failed_for_good(tmp_path: Path) -> None:
    """Mid-run the trial refreshes only result.json (plots cost ~0.5 s each, bench/trial_overhead.py); a trial
    that never finished, all of its steps logged, still gets its plots from the driver."""
    from types import SimpleNamespace

    from mlflow import MlflowClient
    from ray import tune

    from sweeps.search.callbacks import _backfill

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = c.create_run(c.create_experiment("y")).info.run_id
    state = ChainState(1, [np.eye(2, dtype=np.float32)], [_it(0, [0.5, 0.5], 0.5)])
    ckpt = TrialCheckpoint(state, run_id, {0: np.random.rand(5, 2)}, {**ChainConfig().to_dict(), "iterations": 2},
                           ["anger", "neutral"], "u.wav", "t2")
    run = TrialRun(c, run_id)
    assert run.publish(ckpt, finished=False, wait=False)  # what a trial does after an iteration
    assert {a.path for a in c.list_artifacts(run_id)} == {"result.json"}
    ckpt.save(tmp_path / "ckpt")
    _backfill(TrialRun(c, run_id), SimpleNamespace(checkpoint=tune.Checkpoint.from_directory(tmp_path / "ckpt"), trial_id="t2"))
    assert len(c.list_artifacts(run_id, "plots")) == 3
    assert [m.step for m in c.get_metric_history(run_id, "mean_fold_ua")] == [0]  # no step logged twice


def test_plots(tmp_path: Path) -> None:
    names = ["anger", "neutral"]
    h = [_it(0, [0.5, 0.5], 0.5), _it(1, [0.6, 0.6], 0.6)]
    for p in (confusion_plot([[3, 1], [0, 4]], names, tmp_path / "c.png"),
              accuracy_plot(h, tmp_path / "a.png"),
              contour_plot({0: np.random.rand(9, 2), 1: np.random.rand(9, 2)}, names, tmp_path / "s.png"),
              contour_plot({0: np.random.rand(1, 2)}, names, tmp_path / "one.png")):
        assert p.stat().st_size > 1000


def test_redact_uri() -> None:
    assert redact_uri("https://user:secret@mlflow.example.com") == "https://***@mlflow.example.com"
    assert redact_uri("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_schedule_cut_at_best_iteration() -> None:
    base = ChainConfig().replace(**{"iterations": 5, "labels.rule": "wdsl", "labels.alpha": 0.9,
                                    "labels.alpha_end": 0.1})
    from dsl.method.schedules import alpha_at, schedule_alpha
    from dsl.pipeline.checks import config_problems

    for schedule in ("constant", "step", "linear", "exponential", "cosine"):
        cfg = base.replace(**{"labels.schedule": schedule})
        cut, is_exact = at_iteration(cfg, 3)
        assert cut.iterations == 3 and is_exact and not config_problems(cut)
        want = [alpha_at(schedule, k, 5, 0.9, 0.1, cfg.labels.alpha_step) for k in (1, 2, 3)]
        got = [schedule_alpha(cut.labels, k, cut.iterations) for k in (1, 2, 3)]
        assert np.allclose(got, want, atol=1e-9), (schedule, got, want)
        # the horizon is only written where the schedule depends on the total
        assert cut.labels.horizon == (0 if schedule in ("constant", "step") else 5)
        again, _ = at_iteration(cut, 2)  # cutting a cut chain keeps the first horizon
        assert np.allclose([schedule_alpha(again.labels, k, 2) for k in (1, 2)], want[:2], atol=1e-9)
    assert at_iteration(base.replace(**{"labels.schedule": "linear"}), 1)[0].labels.horizon == 0
    assert config_problems(base.replace(**{"labels.horizon": 3}))  # shorter than the chain


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_trial_run_is_found_again_and_logs_missing_steps_only(sqlite_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    c = MlflowClient(sqlite_uri)
    exp = c.create_experiment("units", artifact_location=str(tmp_path / "art"))
    parent = c.create_run(exp, run_name="p", tags={"dsl.role": "parent"}).info.run_id
    run = TrialRun.open(sqlite_uri, exp, parent, "units", "abc_00001", "name")
    assert run.start({"a": 1, "protocol": {"name": "refinery"}}, "abc_00001", 0, "node1", True) == 1
    h = [_it(0, [0.5, 0.5], 0.5), _it(1, [0.6, 0.6], 0.6)]
    assert run.log_iterations(h[:1]) == [0]
    run.end("FAILED")
    again = TrialRun.open(sqlite_uri, exp, parent, "units", "abc_00001", "name")  # a retry: same run
    assert again.run_id == run.run_id
    assert again.start({"a": 1, "b": 2, "protocol": {"name": "refinery"}}, "abc_00001", 1, "node2", True) == 2
    assert again.log_iterations(h) == [1]  # step 0 exists
    assert again.log_iterations(h) == []
    hist = c.get_metric_history(run.run_id, "fold_ua/1")
    assert sorted(m.step for m in hist) == [0, 1]
    logged = c.get_run(run.run_id).data
    assert logged.params == {"a": "1", "b": "2", "protocol.name": "refinery", "ray_trial_id": "abc_00001"}
    assert {k: logged.tags[k] for k in ("dsl.resumed_from", "dsl.node_id", "dsl.leak_free", "dsl.attempts")} == {
        "dsl.resumed_from": "1", "dsl.node_id": "node2", "dsl.leak_free": "true", "dsl.attempts": "2"}
    assert c.get_run(run.run_id).info.status == "RUNNING"
    other = TrialRun.open(sqlite_uri, exp, parent, "units", "abc_00002", "name")
    assert other.run_id != run.run_id


def test_call_gives_up_after_dsl_mlflow_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from tracking.client import TrackingUnavailable, call

    monkeypatch.setenv("DSL_MLFLOW_TIMEOUT", "1.5")
    tries = []

    def down():
        tries.append(1)
        raise ConnectionError("Max retries exceeded with url: /api (Connection refused)")

    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="did not answer for 2 s"):
        call(down)
    assert 1.4 < time.monotonic() - t0 < 3 and len(tries) >= 3
    with pytest.raises(KeyError):  # not transient: at once
        call(lambda: (_ for _ in ()).throw(KeyError("RESOURCE_DOES_NOT_EXIST")))
    monkeypatch.setenv("DSL_MLFLOW_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="DSL_MLFLOW_TIMEOUT"):
        call(down)


def test_dead_tracking_server_holds_a_caller_up_for_the_timeout_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own HTTP retries (7, backoff factor 2: minutes) are off unless set: the deadline is ours."""
    import time

    from tracking.client import TrackingUnavailable, call, client
    from tracking.trial_run import TrialRun

    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DSL_MLFLOW_TIMEOUT", "3")
    c = client(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="DSL_MLFLOW_TIMEOUT"):
        call(c.search_experiments, max_results=1)
    assert time.monotonic() - t0 < 8
    run = TrialRun(c, "0" * 32)
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailable), run.briefly(0.5):
        run.logged_steps()
    assert time.monotonic() - t0 < 3


class _FlakyRun(TrialRun):
    """A TrialRun whose tracking server is away while `down` (steps and artifacts are only counted)."""

    def __init__(self):
        super().__init__(None, "flaky")
        self.down, self.steps, self.art = False, [], 0

    def log_iterations(self, history, skip=None):
        from tracking.client import TrackingUnavailable

        if self.down:
            raise TrackingUnavailable("away")
        new = [int(d["iteration"]) for d in history if int(d["iteration"]) not in set(skip or ())]
        self.steps += new
        return new

    def logged_steps(self):
        return set(self.steps)

    def log_artifacts(self, record, finished, plots_too=True):
        self.art += 1


def test_publish_buffers_steps_while_the_server_is_away() -> None:
    from types import SimpleNamespace

    from tracking.client import TrackingUnavailable

    run, h = _FlakyRun(), [_it(i, [0.5, 0.5], 0.5) for i in range(4)]

    def upto(n: int):
        return SimpleNamespace(state=SimpleNamespace(history=h[:n]))

    assert run.publish(upto(1), False, wait=False)
    run.down = True
    assert not run.publish(upto(2), False, wait=False)  # training goes on
    assert not run.publish(upto(3), False, wait=False)
    with pytest.raises(TrackingUnavailable):
        run.publish(upto(3), False, wait=True)
    run.down = False
    assert run.publish(upto(4), True, wait=False, refresh=True)
    assert run.steps == [0, 1, 2, 3] and run.logged == {0, 1, 2, 3} and run.art == 2  # each step once


def test_a_step_is_never_logged_twice_and_a_recomputed_difference_is_tagged(sqlite_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    c = MlflowClient(sqlite_uri)
    exp = c.create_experiment("units2", artifact_location=str(tmp_path / "art"))
    parent = c.create_run(exp, run_name="p", tags={"dsl.role": "parent"}).info.run_id
    run = TrialRun.open(sqlite_uri, exp, parent, "units2", "abc_00009", "name")
    first = [_it(0, [0.5, 0.5], 0.5), _it(1, [0.6, 0.6], 0.6)]
    assert run.log_iterations(first) == [0, 1]
    # a driver killed before Tune's snapshot: the retry restores iteration 0's checkpoint and computes 1 again
    again = TrialRun.open(sqlite_uri, exp, parent, "units2", "abc_00009", "name", known_run_id=run.run_id)
    logged = again.logged_steps()
    same = again.log_iterations(first, skip=logged)
    assert same == [] and "dsl.mlflow_mismatch" not in c.get_run(run.run_id).data.tags
    other = [first[0], _it(1, [0.7, 0.7], 0.7), _it(2, [0.7, 0.7], 0.7)]
    assert again.log_iterations(other, skip=logged) == [2]
    assert [m.value for m in c.get_metric_history(run.run_id, "mean_fold_ua") if m.step == 1] == [pytest.approx(0.6)]
    assert c.get_run(run.run_id).data.tags["dsl.mlflow_mismatch"] == "1"
