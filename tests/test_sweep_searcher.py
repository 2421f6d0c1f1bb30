"""ChainOptunaSearch without Ray running: PRUNED on early stop, FAIL, retries, orphan adoption."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.search.searcher import ChainOptunaSearch, journal_storage, make_sampler, outcome
from sweeps.search.spec import METRIC, SamplerSpec, parse_sweep


def _searcher(tmp_path: Path, name: str = "s") -> ChainOptunaSearch:
    spec = parse_sweep({"name": name, "base": {"preset": "cpu", "data": "/x"},
                        "search": {"rule": ["bdsl", "wdsl"], "alpha": {"low": 0.0, "high": 1.0},
                                   "iterations": {"low": 1, "high": 3}}})
    return ChainOptunaSearch(spec.space, journal_storage(tmp_path / "o.journal"), name, make_sampler(SamplerSpec(seed=0)))


def _result(it: int, total: int, value: float) -> dict:
    return {METRIC: value, "iteration": it, "iterations_total": total, "training_iteration": it + 1}


def test_outcome() -> None:
    assert outcome(_result(2, 2, 0.5), False) == TrialState.COMPLETE
    assert outcome(_result(1, 3, 0.5), False) == TrialState.PRUNED
    assert outcome(None, False) == TrialState.PRUNED
    assert outcome(_result(2, 2, 0.5), True) == TrialState.FAIL


def test_pruned_complete_fail_and_retry(tmp_path: Path) -> None:
    s = _searcher(tmp_path)
    for tid in ("a", "b", "c"):
        assert s.suggest(tid) is not None
    for it in range(2):  # a: stopped by ASHA after iteration 1 of 3
        s.on_trial_result("a", _result(it, 3, 0.4 + 0.1 * it))
    s.on_trial_result("a", _result(1, 3, 0.5))  # a retried trial re-reporting a step: ignored
    s.on_trial_complete("a", _result(1, 3, 0.5))
    s.on_trial_result("b", _result(0, 1, 0.6))
    s.on_trial_result("b", _result(1, 1, 0.7))
    s.on_trial_complete("b", _result(1, 1, 0.7))
    s.on_trial_complete("c", None, error=True)
    trials = {t.user_attrs["tune_trial_id"]: t for t in s.study.trials}
    assert trials["a"].state == TrialState.PRUNED and trials["a"].value == pytest.approx(0.5)
    assert trials["a"].intermediate_values == {0: pytest.approx(0.4), 1: pytest.approx(0.5)}
    assert trials["b"].state == TrialState.COMPLETE and trials["b"].value == pytest.approx(0.7)
    assert trials["c"].state == TrialState.FAIL
    # `--resume` finishes the errored trial: recorded as a retry with the same parameters
    s.on_trial_complete("c", _result(2, 2, 0.8))
    retry = [t for t in s.study.trials if t.user_attrs.get("retry_of") == trials["c"].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == trials["c"].params


def test_orphans_are_adopted_after_a_hard_stop(tmp_path: Path) -> None:
    s = _searcher(tmp_path, "orphans")
    s.suggest("a")
    s.save(str(tmp_path / "searcher.pkl"))  # the last experiment snapshot before the driver died
    lost = s.suggest("b")  # asked, but Tune never saved trial b
    s.on_trial_complete("a", _result(1, 1, 0.5))
    restored = _searcher(tmp_path, "orphans")
    restored.restore(str(tmp_path / "searcher.pkl"))
    adopted = restored.suggest("c")
    assert adopted == lost
    assert len(restored.study.trials) == 2
    restored.on_trial_complete("c", _result(1, 1, 0.6))
    states = sorted(t.state.name for t in optuna.load_study(study_name="orphans",
                                                             storage=journal_storage(tmp_path / "o.journal")).trials)
    assert states == ["COMPLETE", "COMPLETE"]
    assert restored.suggest("d") is not None and len(restored.study.trials) == 3  # no orphan left: a new trial


def test_finish_ends_runs_orphaned_by_a_killed_driver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A driver killed just after a trial started leaves that trial's MLflow run RUNNING; `--resume` runs
    the trial again under a new id, so the finished sweep must end the orphan instead of leaving it RUNNING."""
    from mlflow import MlflowClient

    from sweeps.search.launcher import SweepOutcome, finish
    from tracking.schema import PARENT_TAG, ROLE_TAG
    from tracking.sweep_runs import SweepRun

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.create_experiment("s")
    parent = c.create_run(exp, tags={ROLE_TAG: "parent"}).info.run_id
    orphan = c.create_run(exp, tags={PARENT_TAG: parent, ROLE_TAG: "trial", "ray_trial_id": "old"}).info.run_id
    done = c.create_run(exp, tags={PARENT_TAG: parent, ROLE_TAG: "trial", "ray_trial_id": "new"}).info.run_id
    c.set_terminated(done, "FINISHED")
    optuna.create_study(study_name="s", storage=journal_storage(tmp_path / "o.journal"))
    spec = parse_sweep({"name": "s", "base": {"preset": "cpu", "data": "/x"}, "search": {"rule": ["bdsl"]}})
    sweep = SweepRun(f"sqlite:///{tmp_path / 'mlflow.db'}", exp, parent)
    finish(SweepOutcome(str(tmp_path), str(tmp_path / "o.journal"), exp, parent, [], False, 0, 1.0), spec, sweep)
    assert c.get_run(orphan).info.status == "KILLED"
    assert c.get_run(done).info.status == "FINISHED"
    assert c.get_run(parent).info.status == "FINISHED"
