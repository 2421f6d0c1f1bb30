"""The Ray Tune function trainable: one full DSL chain per trial, resumable at its last finished iteration.

After every iteration the trial `tune.report`s the flat metrics with a checkpoint holding the
ChainState, the MLflow run id and the contour utterance's posteriors, then logs to its MLflow child run
every step of the checkpoint's history that MLflow lacks and refreshes its plots: MLflow never has a
step the checkpoints lack. While the tracking server is away the trial keeps training (it gives MLflow
a few seconds per iteration) and catches up when the server is back; at the end it waits
`$DSL_MLFLOW_TIMEOUT` seconds for it, then fails with `TrackingUnavailable` and its retry logs the
missing steps from the last checkpoint. A trial that Tune stops inside `tune.report` has its last steps
logged by the driver (`sweeps.search.callbacks.FinalizeRuns`). A retried or restored trial starts from
`tune.get_checkpoint()`: it re-logs steps MLflow lacks from the checkpoint's history and continues at
`next_iteration`; it never starts over. With `objective_seeds: r` the trial runs r chains in lockstep on the
seeds base.seed .. base.seed + r - 1 (the same for every trial, so trials are compared paired) and reports, logs
and is judged by their means (`trainables.metrics.seed_mean`); each seed's state is in the checkpoint.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dsl.config import ChainConfig
from dsl.data.segments import build_segments
from dsl.execution.fold_job import release_device_memory
from dsl.execution.step_cache import StepCache
from dsl.pipeline.chain import ChainState, iterate_chain, local_runner
from dsl.pipeline.checks import check_config
from dsl.pipeline.trial_config import trial_config
from dsl.results.naming import run_name
from tracking.trial_run import open_trial_run

from .checkpoint import TrialCheckpoint
from .context import TrialContext
from .fold_runner import ray_runner
from .metrics import report_metrics, seed_mean
from .shared_data import CorpusMeta, attach, is_shared_view, select_variant

log = logging.getLogger(__name__)


def runtime_config(cfg: ChainConfig, ctx: TrialContext) -> ChainConfig:
    """Execution-only settings for inside a trial: Ray provides the parallelism, torch threads match it. A
    trial that asks for a GPU trains on CUDA by name: with fold tasks the trial's own bundle has no GPU, so
    `auto` would read as the CPU here (and in the step cache's key) while its folds train on the GPU."""
    gpu = {"train.device": "cuda"} if ctx.resources.gpu > 0 and cfg.train.device == "auto" else {}
    return cfg.replace(**{"train.workers": 1, "train.num_threads": ctx.resources.threads, **gpu})


def _restore() -> TrialCheckpoint | None:
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return TrialCheckpoint.load(d)


def _node_id() -> str:
    """The Ray node this attempt of the trial runs on (MLflow tag `dsl.node_id`, rewritten on each attempt)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _runner(ctx: TrialContext, meta: CorpusMeta, data, run_cfg: ChainConfig):
    """Folds as Ray tasks in the trial's placement group, or in this process."""
    if ctx.resources.fold_workers > 0:
        return ray_runner(meta, run_cfg, ctx.resources)
    return local_runner(data, run_cfg)


def _iterations(ctx: TrialContext, meta: CorpusMeta, data, run_cfg: ChainConfig, saved: TrialCheckpoint | None,
                steps: StepCache | None) -> Iterator[tuple[Any, ChainState, list[ChainState]]]:
    """Per finished iteration: the first seed's `IterationResult` (its posteriors draw the contour), the trial's
    state and, with `objective_seeds` > 1, each seed's chain state. Several seeds run in lockstep, one iteration
    of each in turn (the same seeds for every trial: paired), and the trial's state holds their means
    (`trainables.metrics.seed_mean`)."""
    n = max(1, ctx.objective_seeds)
    seeds = [run_cfg.seed + i for i in range(n)]
    cfgs = [run_cfg.replace(seed=s) for s in seeds] if n > 1 else [run_cfg]
    starts = (saved.seed_states if n > 1 else [saved.state]) if saved else [None] * n
    runners = [_runner(ctx, meta, data, c) for c in cfgs]
    chains = [iterate_chain(c, data, st, rn, show_progress=False, rf_jobs=ctx.resources.head_threads,
                            step_cache=steps) for c, st, rn in zip(cfgs, starts, runners)]
    history = list(saved.state.history) if saved and n > 1 else []
    try:
        while True:
            start = time.perf_counter()  # the seeds run one after another: the iteration's time is all of theirs
            step = [next(ch, None) for ch in chains]
            if step[0] is None:
                return
            results, states = [x[0] for x in step], [x[1] for x in step]
            if n == 1:
                yield results[0], states[0], []
                continue
            history = [*history, seed_mean([r.to_dict() for r in results], seeds, time.perf_counter() - start)]
            yield results[0], ChainState(results[0].iteration + 1, [], history), states
    finally:
        for ch in chains:
            ch.close()
        for rn in runners:
            getattr(rn, "close", lambda: None)()


def train_chain(config: dict[str, Any], frames: np.ndarray, meta: CorpusMeta, context: TrialContext,
                variants: Mapping[Any, CorpusMeta] | None = None) -> None:
    """Function trainable: `config` holds the trial's dotted overrides of `context.base` (a ChainConfig);
    `variants` (FeatureSpec -> CorpusMeta) when the sweep searches the front end."""
    from ray import tune

    ctx = context
    trial_id = tune.get_context().get_trial_id() or "local"
    cfg = trial_config(ctx.base, config)
    check_config(cfg)
    frames, meta = select_variant(frames, meta, variants, cfg.features)
    run_cfg = runtime_config(cfg, ctx)
    data = attach(frames, meta)  # zero-copy view of the object-store frames
    seg = build_segments(data.frame_offsets, cfg.segments, warn=False)
    u = int(ctx.contour_utterance) % data.n_utterances
    lo, hi = int(seg.offsets[u]), int(seg.offsets[u + 1])
    utt_title = f"{Path(data.paths[u]).name} (label: {data.label_names[int(data.labels[u])]})"

    saved = _restore()
    state: ChainState | None = saved.state if saved else None
    resumed_from = state.next_iteration if state else 0
    contour = dict(saved.contour) if saved else {}
    extra = {"frames_zero_copy": float(is_shared_view(frames))}
    run = open_trial_run(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, ctx.sweep, trial_id,
                         run_name(cfg, config, trial_id), saved.mlflow_run_id if saved else None)
    cfg_dict = cfg.to_dict()  # the trial's config as checkpoints and MLflow params hold it

    def checkpoint(st: ChainState, seed_states: list[ChainState] | None = None) -> TrialCheckpoint:
        return TrialCheckpoint(st, run.run_id, dict(contour), cfg_dict, list(data.label_names), utt_title,
                               trial_id, list(seed_states if seed_states is not None else saved.seed_states
                                              if saved else []))
    try:
        run.start(cfg_dict, trial_id, resumed_from, _node_id(), is_shared_view(frames),
                  [cfg.seed + i for i in range(max(1, ctx.objective_seeds))])
        if resumed_from == 0:
            run.log_config(cfg.to_yaml())
        run.catch_up(state.history if state is not None else [])  # the checkpoint's history is the truth
        if state is not None and state.next_iteration > cfg.iterations:  # finished before a restore
            run.log_artifacts(checkpoint(state), finished=True)
            tune.report({**report_metrics(state.history, cfg.iterations, resumed_from, ctx.objective), **extra})
            run.end("FINISHED")
            return
        published, ckpt, finished = True, None, False
        try:
            steps = StepCache(ctx.step_cache) if ctx.step_cache else None
            for result, state, seed_states in _iterations(ctx, meta, data, run_cfg, saved, steps):
                assert result.posteriors is not None
                contour[result.iteration] = np.asarray(result.posteriors[lo:hi], dtype=np.float32)
                history = state.history
                # report + checkpoint first, then MLflow: a step MLflow has is in a checkpoint Tune knows
                ckpt = checkpoint(state, seed_states)
                with tempfile.TemporaryDirectory(prefix="dsl-ckpt-") as tmp:
                    ckpt.save(tmp)
                    tune.report({**report_metrics(history, cfg.iterations, resumed_from, ctx.objective), **extra},
                                checkpoint=tune.Checkpoint.from_directory(tmp))
                finished = state.next_iteration > cfg.iterations
                published = run.publish(ckpt, finished, wait=False, refresh=not published)  # plots once finished
        finally:
            release_device_memory()  # Tune may reuse this process for a trial that shares the GPU
        if not published and ckpt is not None:  # the server was away at the last iteration: wait for it
            run.publish(ckpt, finished, wait=True, refresh=True)
        run.end("FINISHED")
    except SystemExit as exc:
        if exc.code not in (0, None):
            _failed(run, exc, trial_id)
        raise  # code 0: Tune stopped the trial inside tune.report (scheduler or end of sweep): the driver ends the run
    except BaseException as exc:
        _failed(run, exc, trial_id)
        raise


def _failed(run, exc: BaseException, trial_id: str) -> None:
    log.exception("trial %s failed", trial_id)
    run.fail(exc)
