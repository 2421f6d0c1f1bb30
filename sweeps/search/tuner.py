"""The Ray Tune Tuner of a sweep: Optuna searcher (persisted study), ASHA over iterations, failures."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sweeps.search.spec import METRIC, MODE, SweepSpec


def num_trials(spec: SweepSpec, grid: list[dict] | None, trials: int | None) -> int:
    """`num_samples`; for a grid, the grid size unless `--trials`/`num_samples` asks for fewer."""
    if grid is None:
        return spec.num_samples
    wanted = trials or (spec.num_samples if spec.num_samples_given else 0) or len(grid)
    return min(int(wanted), len(grid))


def build_tuner(spec: SweepSpec, trainable, exp_root: str, journal: Path, n: int, grid: list[dict] | None,
                callbacks: list, resume: bool, verbose: bool = False):
    """A fresh Tuner (new study, grid points enqueued), or `Tuner.restore` of the sweep for `--resume`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from sweeps.search.searcher import ChainOptunaSearch, journal_storage, make_sampler

    exp_path = f"{exp_root}/{spec.name}"
    if resume:
        return tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    searcher = ChainOptunaSearch(spec.space, journal_storage(journal), spec.name, make_sampler(spec.sampler))
    for params in grid[:n] if grid is not None else []:
        searcher.study.enqueue_trial(params)
    scheduler = None
    if spec.scheduler is not None:
        scheduler = ASHAScheduler(time_attr="iteration", metric=METRIC, mode=MODE, max_t=max(1, spec.max_iterations()),
                                  grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=n,
                                    max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=spec.name, storage_path=exp_root, callbacks=callbacks, verbose=1 if verbose else 0,
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


# Ray errors that Tune's actor manager (ray.air.execution._internal.actor_manager, Ray 2.60) does not route to
# its trial-failure path: it raises `RuntimeError("Caught unexpected exception: ...")` from them and the whole
# `fit()` ends, so `max_failures` never applies. Seen when Ray's memory monitor killed a starting trial.
WORKER_KILLS = ("OutOfMemoryError", "WorkerCrashedError", "NodeDiedError")


def worker_kill(exc: BaseException) -> BaseException | None:
    """The Ray worker kill behind a failed `fit()` (searched along `__cause__`/`__context__`), if any."""
    import ray.exceptions

    kinds = tuple(getattr(ray.exceptions, name) for name in WORKER_KILLS)
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kinds):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class TrialWorkerKilled(RuntimeError):
    """Ray killed trial workers more often than the sweep restores itself; its saved state is kept."""


def fit_with_restores(make_tuner: Callable[[bool], object], resume: bool, restores: int, where: str,
                      say: Callable[[str], None] = print):
    """`make_tuner(resume).fit()`, restoring the sweep from its saved state in `where` (as `--resume` would)
    when a Ray worker kill escapes Tune's own retries, at most `restores` times; other errors pass as they are."""
    tuner = make_tuner(resume)
    restored = 0
    while True:
        try:
            return tuner.fit()
        except RuntimeError as exc:
            kill = worker_kill(exc)
            if kill is None:
                raise
            what = f"{type(kill).__name__}: {(str(kill).strip().splitlines() or [''])[0][:160]}"
            if restored >= restores:
                raise TrialWorkerKilled(f"Ray killed a trial's worker outside Tune's retries ({what}) after "
                                        f"{restored} restore(s); the sweep's state is kept in {where}: free memory "
                                        "or lower max_concurrent, then continue it with --resume") from exc
            restored += 1
            say(f"restore  Ray killed a trial's worker outside Tune's retries ({what}); continuing the sweep "
                f"from its saved state ({restored}/{restores})")
            try:
                tuner = make_tuner(True)
            except Exception as again:  # nothing saved yet to restore from: the kill is the error to report
                raise TrialWorkerKilled(f"Ray killed a trial's worker outside Tune's retries ({what}) before the "
                                        f"sweep's state in {where} could be restored ({again}); start it again") from exc
