"""A Ray worker kill that escapes Tune's retries restores the sweep instead of ending it.

Ray 2.60's actor manager raises `RuntimeError("Caught unexpected exception: ...")` from an
`OutOfMemoryError` (Ray's memory monitor killed a starting trial) instead of failing the trial, so
`max_failures` never applied and the sweep ended. `fit_with_restores` restores it from its saved state.
"""
from __future__ import annotations

import os
import sys

import pytest

ray_exceptions = pytest.importorskip("ray.exceptions")

from sweeps.search.tuner import TrialWorkerKilled, fit_with_restores, worker_kill  # noqa: E402


def _escaped_kill(kind: str = "OutOfMemoryError") -> RuntimeError:
    """What Ray's actor manager raises for a kill it does not route to the trial (its exact form)."""
    kill = getattr(ray_exceptions, kind)("Task was killed due to the node running low on memory.")
    try:
        raise RuntimeError(f"Caught unexpected exception: {kill}") from kill
    except RuntimeError as exc:
        return exc


class _Tuner:
    def __init__(self, outcome):
        self.outcome = outcome

    def fit(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _factory(outcomes: list):
    made: list[bool] = []

    def make(resume: bool):
        made.append(resume)
        outcome = outcomes.pop(0)
        if isinstance(outcome, type) and issubclass(outcome, Exception):
            raise outcome("no experiment state to restore from")
        return _Tuner(outcome)
    return make, made


@pytest.mark.parametrize("kind", ["OutOfMemoryError", "WorkerCrashedError", "NodeDiedError"])
def test_an_escaped_worker_kill_restores_the_sweep_and_says_so(kind):
    make, made = _factory([_escaped_kill(kind), "results"])
    said: list[str] = []
    assert fit_with_restores(make, False, 1, "/exp/sweep", say=said.append) == "results"
    assert made == [False, True]  # the fresh tuner, then Tuner.restore
    assert len(said) == 1 and said[0].startswith("restore  ") and kind in said[0] and "(1/1)" in said[0]


def test_restores_are_counted_and_the_last_kill_is_one_tool_error():
    make, made = _factory([_escaped_kill(), _escaped_kill(), _escaped_kill()])
    with pytest.raises(TrialWorkerKilled, match=r"after 2 restore\(s\); the sweep's state is kept in /exp/s") as err:
        fit_with_restores(make, True, 2, "/exp/s", say=lambda line: None)
    assert made == [True, True, True]
    assert "--resume" in str(err.value) and worker_kill(err.value) is not None


def test_other_errors_pass_through_untouched():
    boom = RuntimeError("a bug in a callback")
    make, made = _factory([boom])
    with pytest.raises(RuntimeError) as err:
        fit_with_restores(make, False, 3, "/exp/s", say=lambda line: None)
    assert err.value is boom and made == [False]
    task_error = ValueError("not a RuntimeError")
    make, _ = _factory([task_error])
    with pytest.raises(ValueError):
        fit_with_restores(make, False, 3, "/exp/s", say=lambda line: None)


def test_a_kill_before_anything_was_saved_is_reported_as_the_kill():
    make, made = _factory([_escaped_kill(), FileNotFoundError])
    with pytest.raises(TrialWorkerKilled, match="before the sweep's state in /exp/s could be restored"):
        fit_with_restores(make, False, 1, "/exp/s", say=lambda line: None)
    assert made == [False, True]


def test_the_cli_prints_it_as_one_line_with_the_worker_exit_code(capsys):
    from sweeps.cli.errors import EXIT_WORKER, tool_error_code

    assert tool_error_code(TrialWorkerKilled("x")) == EXIT_WORKER


@pytest.mark.slow
def test_a_real_tune_sweep_restored_after_an_escaped_kill_finishes_every_trial(tmp_path):
    """Real Tune: the kill is raised from inside `fit()`'s event loop (where Ray raises it) after one trial
    finished; the restored experiment finishes the others and does not rerun the finished one."""
    import ray
    from ray import tune

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"  # save the experiment state at every step
    marker = tmp_path / "runs.txt"

    def trainable(config):
        with open(marker, "a") as f:
            f.write(f"{config['x']}\n")
        for i in range(2):
            tune.report({"score": config["x"] + i})

    class KillOnce(tune.Callback):  # the restored experiment unpickles its own copy: the flag is the driver's env
        def on_step_end(self, iteration, trials, **info):  # as Ray's actor manager: inside the step, uncaught
            if any(t.status == "TERMINATED" for t in trials) and not os.environ.get("DSL_TEST_KILLED"):
                os.environ["DSL_TEST_KILLED"] = "1"
                raise _escaped_kill()

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        def make(resume: bool):
            path = str(tmp_path / "exp" / "s")
            if resume:
                return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
            return tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2, 3])},
                              tune_config=tune.TuneConfig(max_concurrent_trials=1),
                              run_config=tune.RunConfig(name="s", storage_path=str(tmp_path / "exp"),
                                                        callbacks=[KillOnce()], verbose=0))
        said: list[str] = []
        results = fit_with_restores(make, False, 1, str(tmp_path / "exp" / "s"), say=said.append)
    finally:
        ray.shutdown()
        os.environ.pop("TUNE_GLOBAL_CHECKPOINT_S", None)
        os.environ.pop("DSL_TEST_KILLED", None)
    assert len(said) == 1 and "OutOfMemoryError" in said[0]
    assert sorted(r.metrics["config"]["x"] for r in results) == [1, 2, 3]
    assert all(r.error is None and r.metrics["score"] == r.metrics["config"]["x"] + 1 for r in results)
    runs = marker.read_text().split()
    assert runs.count("1") == 1, runs  # the trial finished before the kill was not run again
    assert sorted(set(runs)) == ["1", "2", "3"]
