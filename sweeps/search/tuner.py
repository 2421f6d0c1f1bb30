"""The Ray Tune Tuner of a sweep: Optuna searcher (persisted study), ASHA over iterations, failures."""
from __future__ import annotations

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


