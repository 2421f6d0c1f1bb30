"""Optuna behind Ray Tune, with the study persisted and chain-aware trial outcomes.

`ChainOptunaSearch` differs from Ray's `OptunaSearch` in five deliberate ways:
* a chain stopped early by the scheduler (its last `iteration` < `iterations_total`) is told to
  Optuna as PRUNED (Optuna then keeps its last intermediate value), not COMPLETE;
* intermediate values are reported at step = chain iteration, so a retried trial never reports a
  step twice;
* after a hard stop of the driver, RUNNING Optuna trials that no Tune trial knows (asked after the
  last experiment snapshot) are adopted by the next new Tune trials, so the study does not grow
  orphans and `len(study.trials)` stays equal to the number of Tune trials;
* an errored trial is told FAIL; if `--resume` later finishes it, its outcome is added to the study
  as a new trial with the same parameters (user attribute `retry_of`), since Optuna cannot reopen
  a finished trial;
* it limits concurrency itself (see `set_max_concurrency`).
Every Optuna trial carries the user attribute `tune_trial_id`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from .spec import METRIC, MODE, SamplerSpec

log = logging.getLogger(__name__)


def outcome(result: dict | None, error: bool, metric: str = METRIC) -> TrialState:
    """COMPLETE for a chain that reached its last iteration, PRUNED for one stopped early, FAIL on error."""
    if error:
        return TrialState.FAIL
    if not result or result.get(metric) is None:
        return TrialState.PRUNED
    done, total = result.get("iteration"), result.get("iterations_total")
    if done is not None and total is not None and int(done) < int(total):
        return TrialState.PRUNED
    return TrialState.COMPLETE


def make_sampler(spec: SamplerSpec) -> optuna.samplers.BaseSampler:
    """TPE (default), random, or, for `grid`, TPE over a study whose grid points are all enqueued."""
    if spec.type == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, **spec.options)


def journal_storage(path: Path) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


class ChainOptunaSearch(OptunaSearch):
    """OptunaSearch for DSL chains: PRUNED on early stop, steps = iterations, orphan adoption."""

    def __init__(self, space: Callable, storage: optuna.storages.BaseStorage, study_name: str,
                 sampler: optuna.samplers.BaseSampler, metric: str = METRIC, mode: str = MODE):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        super().__init__(space=space, metric=metric, mode=mode, sampler=sampler, study_name=study_name,
                         storage=storage)
        self._max_concurrent = 0
        self._live: set[str] = set()

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Limit concurrency here rather than in Tune's ConcurrencyLimiter, which drops the completion of
        trials it did not suggest in this session (an errored trial finished by `--resume`)."""
        self._max_concurrent = max_concurrent
        return True

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def _orphan(self) -> optuna.trial.Trial | None:
        owned = {t._trial_id for t in self._ot_trials.values()}
        for ft in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if ft._trial_id not in owned:
                log.info("adopting Optuna trial %d (asked before the sweep stopped, unknown to Tune)", ft.number)
                adopted = optuna.trial.Trial(self._ot_study, ft._trial_id)
                if "tune_trial_id" in ft.user_attrs:  # the Tune trial the killed driver had started with it
                    adopted.set_user_attr("adopted_from", ft.user_attrs["tune_trial_id"])
                return adopted
        return None

    def suggest(self, trial_id: str) -> dict | None:
        if self._max_concurrent and len(self._live) >= self._max_concurrent:
            return None
        if callable(self._space) and trial_id not in self._ot_trials:
            orphan = self._orphan()
            if orphan is not None:
                self._ot_trials[trial_id] = orphan
        params = super().suggest(trial_id)
        if params is not None:
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
            self._live.add(trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or result.get(self.metric) is None:
            return
        step = int(result.get("iteration", result.get("training_iteration", 0)))
        if step not in self._frozen(ot_trial).intermediate_values:
            ot_trial.report(float(result[self.metric]), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._live.discard(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        state = outcome(result, error, self.metric)
        frozen = self._frozen(ot_trial)
        if frozen.state.is_finished():
            if frozen.state == TrialState.FAIL and state != TrialState.FAIL:
                self._record_retry(frozen, trial_id, state, result)
            self._completed_trials.add(trial_id)
            return
        value = float(result[self.metric]) if state == TrialState.COMPLETE and result else None
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as exc:  # e.g. a NaN metric
            log.warning("could not tell Optuna trial %d: %s", frozen.number, exc)
        self._completed_trials.add(trial_id)

    def _frozen(self, ot_trial: optuna.trial.Trial) -> optuna.trial.FrozenTrial:
        return self._ot_study._storage.get_trial(ot_trial._trial_id)

    def _record_retry(self, failed: optuna.trial.FrozenTrial, trial_id: str, state: TrialState,
                      result: dict | None) -> None:
        value = float(result[self.metric]) if state == TrialState.COMPLETE and result else None
        trial = optuna.trial.create_trial(params=failed.params, distributions=failed.distributions, value=value,
                                          state=state, user_attrs={"tune_trial_id": trial_id,
                                                                   "retry_of": failed.number})
        self._ot_study.add_trial(trial)
        log.info("trial %s finished after --resume; added to the study as a retry of Optuna trial %d",
                 trial_id, failed.number)


def study_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


__all__ = ["ChainOptunaSearch", "journal_storage", "make_sampler", "outcome", "study_counts"]
