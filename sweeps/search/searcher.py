"""Optuna behind Ray Tune, with the study persisted and chain-aware trial outcomes.

`ChainOptunaSearch` is a Ray Tune `Searcher` over Optuna's ask-and-tell interface (`Study.ask`,
`Study.tell`). Like Ray's `OptunaSearch` it asks one Optuna trial per Tune trial, runs the
define-by-run space on it (a trial's config holds only the parameters its branch suggested, plus the
constants the space returns) and tells Optuna the outcome; the study lives in `storage` under
`study_name`, with Optuna's NopPruner (early stopping is the Tune scheduler's). It differs from
`OptunaSearch` in five deliberate ways:
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

What Tune snapshots (`save`/`restore`) is plain data: Tune trial id -> Optuna trial number, the
finished and the live Tune trials, the concurrency limit and the sampler (a seeded sampler goes on
with its random stream after `--resume` instead of replaying it). Trials are read back from the
study's storage.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from sweeps.search.spec import METRIC, MODE, SamplerSpec

log = logging.getLogger(__name__)

STATE_VERSION = 1  # of the dict `get_state` returns and `save` pickles


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


class ChainOptunaSearch(Searcher):
    """Optuna ask-and-tell for DSL chains: PRUNED on early stop, steps = iterations, orphan adoption.

    `space(trial)` suggests the parameters of one branch and returns a dict of constants (or None).
    `sampler` defaults to `TPESampler(seed=seed)`; a sampler passed in carries its own seed.
    Setting the space through Tune's `param_space` is not supported (`set_search_properties` is
    Searcher's, returning False), nor are evaluated points (the space is define-by-run).
    """

    def __init__(self, space: Callable[[Any], dict[str, Any] | None], storage: optuna.storages.BaseStorage,
                 study_name: str, sampler: optuna.samplers.BaseSampler | None = None, metric: str = METRIC,
                 mode: str = MODE, seed: int | None = None):
        if not callable(space):
            raise TypeError("space must be a define-by-run function: Optuna trial -> dict of constants or None")
        if not isinstance(storage, optuna.storages.BaseStorage):
            raise TypeError(f"storage must be an optuna.storages.BaseStorage, not {type(storage).__name__}")
        if not metric or mode not in ("min", "max"):
            raise ValueError(f"a metric and a mode of 'min' or 'max' are needed (got {metric!r}, {mode!r})")
        super().__init__(metric=metric, mode=mode)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if sampler is not None and seed is not None:
            log.warning("a sampler was passed: seed %s is ignored (seed the sampler itself)", seed)
        self._space = space
        self._storage = storage
        self._study_name = study_name
        self._sampler = sampler if sampler is not None else optuna.samplers.TPESampler(seed=seed)
        self._trials: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._completed: set[str] = set()  # Tune trials told to Optuna (or finished before they could be)
        self._live: set[str] = set()  # suggested and not completed: what the concurrency limit counts
        self._max_concurrent = 0
        self._handles: dict[int, optuna.trial.Trial] = {}  # Optuna trial number -> handle, this process only
        # created or loaded now (grid points are enqueued on it before the sweep starts); after unpickling or
        # `restore`, reopened on first use
        self._study: optuna.Study | None = self._open_study()

    # --- the study and its trials -------------------------------------------------------------------

    def _open_study(self) -> optuna.Study:
        return optuna.create_study(storage=self._storage, sampler=self._sampler, pruner=optuna.pruners.NopPruner(),
                                   study_name=self._study_name,
                                   direction="minimize" if self.mode == "min" else "maximize", load_if_exists=True)

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = self._open_study()
        return self._study

    def _trial(self, number: int) -> optuna.trial.Trial:
        """The handle of Optuna trial `number`: the one `ask` returned in this process, else one opened on
        the stored trial (a trial of a restored sweep, or an adopted orphan). Optuna opens trials by storage
        id, not number: the id comes from the storage's lookup methods (`BaseStorage`, not private)."""
        trial = self._handles.get(number)
        if trial is None:
            study_id = self._storage.get_study_id_from_name(self._study_name)
            trial_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, number)
            trial = self._handles[number] = optuna.trial.Trial(self.study, trial_id)
        return trial

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        """Optuna trial `number` as stored now."""
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)

    def _orphan(self) -> optuna.trial.Trial | None:
        owned = set(self._trials.values())
        for ft in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if ft.number not in owned:
                log.info("adopting Optuna trial %d (asked before the sweep stopped, unknown to Tune)", ft.number)
                adopted = self._trial(ft.number)
                if "tune_trial_id" in ft.user_attrs:  # the Tune trial the killed driver had started with it
                    adopted.set_user_attr("adopted_from", ft.user_attrs["tune_trial_id"])
                return adopted
        return None

    def _params(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        """The Tune config of `trial`: what the space suggests on its branch, plus the constants it returns.
        On a trial that already has parameters (adopted, or suggested again) the space gets them back."""
        constants = self._space(trial)
        if constants is not None and not (isinstance(constants, dict) and all(isinstance(k, str) for k in constants)):
            raise TypeError(f"the define-by-run space must return None or a dict with str keys, "
                            f"not {type(constants).__name__}")
        return {**trial.params, **(constants or {})}

    # --- Searcher ------------------------------------------------------------------------------------

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Limit concurrency here rather than in Tune's ConcurrencyLimiter, which drops the completion of
        trials it did not suggest in this session (an errored trial finished by `--resume`)."""
        self._max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if self._max_concurrent and len(self._live) >= self._max_concurrent:
            return None
        if trial_id not in self._trials:
            trial = self._orphan() or self.study.ask()
            self._trials[trial_id] = trial.number
            self._handles[trial.number] = trial
        trial = self._trial(self._trials[trial_id])
        params = self._params(trial)
        trial.set_user_attr("tune_trial_id", trial_id)
        self._live.add(trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        number = self._trials.get(trial_id)
        if number is None or trial_id in self._completed or result.get(self.metric) is None:
            return
        step = int(result.get("iteration", result.get("training_iteration", 0)))
        frozen = self._frozen(number)
        if frozen.state == TrialState.RUNNING and step not in frozen.intermediate_values:
            self._trial(number).report(float(result[self.metric]), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._live.discard(trial_id)
        number = self._trials.get(trial_id)
        if number is None:
            return
        state = outcome(result, error, self.metric)
        frozen = self._frozen(number)
        if frozen.state.is_finished():
            if frozen.state == TrialState.FAIL and state != TrialState.FAIL:
                self._record_retry(frozen, trial_id, state, result)
            self._completed.add(trial_id)
            return
        value = float(result[self.metric]) if state == TrialState.COMPLETE and result else None
        try:
            self.study.tell(number, value, state=state)
        except Exception as exc:
            log.warning("could not tell Optuna trial %d: %s", number, exc)
        self._completed.add(trial_id)

    def _record_retry(self, failed: optuna.trial.FrozenTrial, trial_id: str, state: TrialState,
                      result: dict | None) -> None:
        value = float(result[self.metric]) if state == TrialState.COMPLETE and result else None
        trial = optuna.trial.create_trial(params=failed.params, distributions=failed.distributions, value=value,
                                          state=state, user_attrs={"tune_trial_id": trial_id,
                                                                   "retry_of": failed.number})
        self.study.add_trial(trial)
        log.info("trial %s finished after --resume; added to the study as a retry of Optuna trial %d",
                 trial_id, failed.number)

    def add_evaluated_point(self, parameters: dict, value: float, error: bool = False, pruned: bool = False,
                            intermediate_values: list[float] | None = None) -> None:
        raise TypeError("evaluated points need a space of fixed distributions; this searcher's is define-by-run")

    # --- snapshots -----------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "study_name": self._study_name, "sampler": self._sampler,
                "trials": dict(self._trials), "completed": set(self._completed), "live": set(self._live),
                "max_concurrent": self._max_concurrent}

    def set_state(self, state: dict[str, Any]) -> None:
        state = _upgrade(state)
        if state["study_name"] != self._study_name:
            raise ValueError(f"searcher snapshot of study {state['study_name']!r}, not {self._study_name!r}")
        self.__dict__.update(_attributes(state))
        self._study, self._handles = None, {}  # reopened with the restored sampler

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the searcher with the Tuner (tuner.pkl)
        state = self.__dict__.copy()
        state["_study"], state["_handles"] = None, {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_ot_trials" in state:  # pickled by the OptunaSearch-based version: keep its settings, convert its state
            settings = {k: v for k, v in state.items() if k in ("_metric", "_mode", "_space", "_storage", "_study_name")}
            state = {**settings, **_attributes(_upgrade(state))}
        self.__dict__.update(state)
        self._study, self._handles = None, {}


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A snapshot as `get_state` returns it, also from the OptunaSearch-based version (its `__dict__`)."""
    if "version" in state:
        return state
    return {"version": STATE_VERSION, "study_name": state["_study_name"], "sampler": state["_sampler"],
            "trials": {tid: t.number for tid, t in state["_ot_trials"].items()},
            "completed": set(state.get("_completed_trials", ())), "live": set(state.get("_live", ())),
            "max_concurrent": state.get("_max_concurrent", 0)}


def _attributes(state: dict[str, Any]) -> dict[str, Any]:
    return {"_study_name": state["study_name"], "_sampler": state["sampler"], "_trials": dict(state["trials"]),
            "_completed": set(state["completed"]), "_live": set(state["live"]),
            "_max_concurrent": state["max_concurrent"]}


def study_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


__all__ = ["ChainOptunaSearch", "journal_storage", "make_sampler", "outcome", "study_counts"]
