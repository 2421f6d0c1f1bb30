"""`dsl-sweep sweep FILE.yaml`: load the corpus once, then run the Optuna-driven Ray Tune sweep.

Fresh sweep: a new Optuna study in `<storage>/<name>/optuna.journal`, a new MLflow parent run.
`--resume`: `Tuner.restore(..., resume_errored=True)` with the same study and parent run; finished
trials are not run again, interrupted and errored ones continue from their last checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from dsl.config import ConfigError, FeatureSpec
from dsl.data.bundle import CorpusData, load_corpus_for, prepare_data
from dsl.pipeline.checks import check_data
from dsl.protocols.holdout import HoldoutAssignment, describe_split, make_holdout, split
from dsl.protocols.plans import is_leak_free
from dsl.results.naming import describe
from dsl.runtime.paths import WriteTarget, default_cache_dir, is_uri, require_writable
from sweeps.cluster.node_probe import node_preflight
from sweeps.cluster.preflight import cluster_preflight
from sweeps.search.session import check_resumable, init_ray, journal_path, quiet_ray, storage_root
from sweeps.search.space import enumerate_grid, feature_variants
from sweeps.search.spec import SweepSpec, load_sweep
from sweeps.search.trial_table import TrialRow, best_row, format_table, rows_from_results
from sweeps.search.tuner import build_tuner, fit_with_restores, num_trials
from tracking.client import check_access, redact_uri, resolve_tracking_uri, sqlite_file
from tracking.schema import BASE_ARTIFACT, HOLDOUT_ARTIFACT
from tracking.sweep_runs import SweepRun
from tracking.sweep_settings import SweepSettings
from trainables.context import TrialContext

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What a sweep run leaves behind (for the CLI's exit code and for tests)."""

    experiment_path: str
    journal: str
    experiment_id: str | None
    parent_run_id: str | None
    rows: list[TrialRow] = field(default_factory=list)
    interrupted: bool = False
    errors: int = 0
    seconds: float = 0.0

    @property
    def best(self) -> TrialRow | None:
        return best_row(self.rows)


def contour_index(data: CorpusData, which: int | str) -> int:
    if isinstance(which, int):
        return which % data.n_utterances
    hits = [i for i, p in enumerate(data.paths) if str(which) in p]
    if not hits:
        raise ConfigError(f"plots.contour_utterance: no utterance path the search sees contains {which!r} (an "
                          "utterance of the holdout is never shown to a trial)")
    return hits[0]


def load_data(spec: SweepSpec, cache_dir: str | None = None, shared_cache: str | None = None,
              holdout: HoldoutAssignment | None = None) -> CorpusData:
    """The base config's corpus and features (see `load_feature_data`)."""
    return next(iter(load_feature_data(spec, cache_dir, shared_cache, holdout).values()))


def holdout_path(spec: SweepSpec, root: str) -> Path:
    """Where the sweep's holdout assignment is stored: `holdout.assignment`, else next to the Tune experiment
    (`<storage>/<name>/holdout.json`), or next to the Optuna journal when the storage is a URI."""
    assert spec.holdout is not None
    if spec.holdout.assignment:
        return Path(spec.holdout.assignment).expanduser().resolve()
    if "://" in root:
        return journal_path(spec, root).with_name(f"{spec.name}.holdout.json")
    return Path(root) / spec.name / "holdout.json"


def sweep_holdout(spec: SweepSpec, root: str) -> HoldoutAssignment | None:
    """The sweep's holdout assignment, made once (before any trial) and read back on every later start."""
    if spec.holdout is None:
        return None
    corpus, _ = load_corpus_for(spec.base)
    return make_holdout(spec.holdout, corpus.paths, corpus.speakers, corpus.labels, holdout_path(spec, root))


def load_feature_data(spec: SweepSpec, cache_dir: str | None = None, shared_cache: str | None = None,
                      holdout: HoldoutAssignment | None = None) -> dict[FeatureSpec, CorpusData]:
    """Parse the corpus, check the base and the spec's sampled trial configs fit it, extract/load the features of
    every front end the search can pick once, the base's first (into `cache_dir`, default the base config's;
    mirrored to the URI `shared_cache` when given). With a `holdout`, what is returned (and checked) is the search
    part alone: the held-out utterances' frames, labels and speakers never reach a trial."""
    from dsl.data.feature_cache import corpus_key
    from sweeps.cluster.shared_storage import pull_dir, push_dir

    base = spec.base if cache_dir is None else spec.base.replace(cache_dir=cache_dir)
    corpus, _ = load_corpus_for(base)
    seen = ~holdout.mask(corpus.paths) if holdout is not None else np.ones(len(corpus), dtype=bool)
    for cfg in (base, *spec.samples):
        check_data(cfg, corpus.labels[seen], np.asarray(corpus.speakers)[seen], corpus.label_names)
    out: dict[FeatureSpec, CorpusData] = {}
    for features in feature_variants(spec.space):
        fcfg = dataclasses.replace(base, features=features)
        entry = key = None
        if shared_cache:
            key = corpus_key(corpus.paths, features)
            entry = Path(base.cache_dir or default_cache_dir()) / "corpora" / key
            if pull_dir(f"{shared_cache}/corpora/{key}", entry):
                print(f"features: pulled from {shared_cache}/corpora/{key}", flush=True)
        out[features] = prepare_data(fcfg, corpus, show_progress=os.environ.get("DSL_PROGRESS", "1") != "0")
        if holdout is not None:
            out[features] = split(out[features], holdout)[0]
        if shared_cache and entry is not None and entry.exists() and push_dir(entry, f"{shared_cache}/corpora/{key}"):
            print(f"features: kept under the storage path, {shared_cache}/corpora/{key}", flush=True)
    return out


def sweep_settings(spec: SweepSpec, n: int, holdout: HoldoutAssignment | None = None,
                   step_cache: str = "") -> SweepSettings:
    """What the parent run keeps of the sweep (and `dsl-sweep best` reads back)."""
    sel = spec.select
    return SweepSettings(name=spec.name, num_samples=n, max_concurrent=spec.max_concurrent,
                         sampler=spec.sampler.type, sampler_seed=spec.sampler.seed,
                         scheduler=spec.scheduler.type if spec.scheduler else "none",
                         max_failures=spec.max_failures, resources=str(spec.resources),
                         search=", ".join(p.key for p in spec.search), objective=spec.objective,
                         protocol=spec.base.protocol.name, leak_free=is_leak_free(spec.base.protocol.name),
                         objective_seeds=spec.objective_seeds, select_protocol=sel.protocol,
                         select_top_k=sel.top_k, select_seeds=sel.seeds, select_budget=sel.budget,
                         select_alpha=sel.alpha, select_exam_seeds=sel.exam_seeds,
                         holdout=holdout.spec.how if holdout else "none",
                         holdout_utterances=len(holdout.files) if holdout else 0,
                         holdout_assignment=holdout.path if holdout else "", step_cache=step_cache)


def parent_files(spec: SweepSpec, holdout: HoldoutAssignment | None) -> dict[str, str]:
    """What the parent run keeps besides the sweep file, for `dsl-sweep best`: the resolved base config (its
    reference is built on it) and the holdout assignment."""
    files = {BASE_ARTIFACT: spec.base.to_yaml()}
    if holdout is not None:
        files[HOLDOUT_ARTIFACT] = Path(holdout.path).read_text()
    return files


def run_sweep(spec: SweepSpec, address: str | None = None, tracking_uri: str | None = None,
              resume: bool = False, trials: int | None = None) -> SweepOutcome:
    """Run (or resume) a sweep end to end; prints progress and the final table."""
    import ray

    from sweeps.cluster.shared_storage import JournalMirror, feature_cache_dir, pull_file
    from sweeps.search.callbacks import FinalizeRuns, ProgressPrinter
    from trainables.chain_trainable import train_chain
    from trainables.fold_runner import placement
    from trainables.shared_data import with_corpus

    start = time.time()
    root = storage_root(spec.storage_path)
    require_writable(sweep_outputs(spec, root, resolve_tracking_uri(tracking_uri)))
    exp_path = f"{root}/{spec.name}"
    journal = journal_path(spec, root)
    on_cluster = bool(address or os.environ.get("RAY_ADDRESS"))
    mirror = JournalMirror(journal, f"{exp_path}/optuna.journal") if is_uri(root) else None
    if mirror is not None and resume and pull_file(mirror.uri, journal):
        print(f"Optuna journal: pulled from {mirror.uri}", flush=True)
    check_resumable(exp_path, journal, resume)
    grid = enumerate_grid(spec.space) if spec.sampler.type == "grid" else None
    n = num_trials(spec, grid, trials)
    uri = resolve_tracking_uri(tracking_uri)
    print(f"sweep {spec.name}: {n} trials, {spec.max_concurrent} at a time, sampler {spec.sampler.type}"
          f"{' (grid of ' + str(len(grid)) + ')' if grid is not None else ''}, scheduler "
          f"{spec.scheduler.type if spec.scheduler else 'none'} | storage {exp_path} | MLflow {redact_uri(uri)}"
          f"{' | resuming' if resume else ''}", flush=True)

    check_access(uri)  # a server that refuses us fails here, before data, Ray and training
    holdout = sweep_holdout(spec, root)
    variants = load_feature_data(spec, feature_cache_dir(spec.base.cache_dir, root, on_cluster) or None,
                                 f"{root}/dsl-cache" if is_uri(root) else None, holdout)
    data = next(iter(variants.values()))
    if holdout is not None:
        print(f"{describe_split(holdout)}; no trial, scheduler rung or sampler update sees them (they are the final "
              "exam of `dsl-sweep best`)", flush=True)
    steps = step_cache_dir(spec, root)
    for features, d in variants.items():
        print(f"corpus {spec.base.corpus} ({features.kind} features): {d.n_utterances} utterances, "
              f"{d.frames.shape[0]} frames ({d.frames.nbytes / 2**20:.0f} MiB, shared through the object store)",
              flush=True)
    sweep = SweepRun.open(uri, spec.name, exp_path, sweep_settings(spec, n, holdout, steps), spec.base.to_dict(),
                          yaml.safe_dump(spec.raw, sort_keys=False), resume, parent_files(spec, holdout))
    exp_id, parent = sweep.experiment_id, sweep.run_id
    print(f"MLflow UI: {sweep.ui_link()}", flush=True)
    verbose = quiet_ray()
    started = init_ray(address, verbose)
    try:
        cluster_preflight(uri, placement(spec.resources).bundles, remote=on_cluster)
        if on_cluster:  # from every node: the tracking server takes a run and an artifact, storage is writable
            node_preflight(uri, exp_id, root)
        print(f"step cache: {steps or 'off'}", flush=True)
        ctx = TrialContext(spec.name, spec.base, uri, exp_id, parent, spec.resources,
                           contour_index(data, spec.contour_utterance), spec.objective, steps, spec.objective_seeds)
        from ray import tune

        trainable = tune.with_resources(with_corpus(train_chain, data, variants=variants, context=ctx),
                                        placement(ctx.resources))
        callbacks = [ProgressPrinter(spec.base, n), FinalizeRuns(uri, exp_id, parent), *([mirror] if mirror else [])]
        results = fit_with_restores(
            lambda again: build_tuner(spec, trainable, root, journal, n, grid, callbacks, again, verbose),
            resume, max(1, spec.max_failures), exp_path, say=lambda line: print(line, flush=True))
        rows = rows_from_results(results, spec.base)
    except BaseException:  # a broken sweep must not leave its parent run RUNNING
        sweep.fail()
        raise
    finally:
        if mirror is not None:
            mirror.push()
        if started:
            ray.shutdown()
    errors = sum(r.status == "error" for r in rows)
    interrupted = any(r.status in ("interrupted", "pending") for r in rows) or len(rows) < n
    outcome = SweepOutcome(exp_path, str(journal), exp_id, parent, rows, interrupted, errors, time.time() - start)
    finish(outcome, spec, sweep)
    return outcome


def compare_trials(sweep: SweepRun, spec: SweepSpec, study) -> None:
    """The parent run's comparison of its trials (figure, sortable table, importances); never fails the sweep."""
    from sweeps.search.importance import param_importances
    from tracking.comparison import log_comparison

    try:
        importances, note = param_importances(study)
        logged = log_comparison(sweep, spec.name, importances, note)
        print(f"MLflow: trial comparison on the parent run: {', '.join(logged)}", flush=True)
    except Exception as exc:  # bookkeeping: the sweep's results are already safe
        print(f"warning: could not log the trial comparison: {type(exc).__name__}: {exc}", flush=True)


def finish(outcome: SweepOutcome, spec: SweepSpec, sweep: SweepRun) -> None:
    """Close the parent run, print the table, the study's trial states and the best config."""
    import optuna

    from sweeps.search.searcher import journal_storage, study_counts

    table = format_table(outcome.rows)
    best = outcome.best
    # Every trial has ended its own run by now. A child still RUNNING is either from this interrupted
    # sweep or an orphan of a driver killed earlier (its trial was rerun under a new id on --resume).
    study = optuna.load_study(study_name=spec.name, storage=journal_storage(Path(outcome.journal)))
    rerun_as = {t.user_attrs["adopted_from"]: t.user_attrs.get("tune_trial_id", "?")
                for t in study.trials if "adopted_from" in t.user_attrs}
    orphans = sweep.close_orphans({r.trial_id for r in outcome.rows}, rerun_as)
    if orphans:
        print(f"MLflow: {len(orphans)} orphan child run(s) of a killed driver ended KILLED, tagged dsl.orphan and "
              f"deleted (their configurations ran again as other trials): {', '.join(orphans)}", flush=True)
    sweep.close_children("KILLED")
    sweep.log_table(table + "\n")
    compare_trials(sweep, spec, study)
    top = best if best is not None and best.objective is not None else None
    sweep.finish("KILLED" if outcome.interrupted else "FINISHED", outcome.errors,
                 top.trial_id if top else None, top.objective if top else None, outcome.seconds)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(study_counts(study).items()))
    print(f"\n{table}\n\nOptuna study {spec.name}: {len(study.trials)} trials ({counts}) | "
          f"{outcome.seconds / 60:.1f} min", flush=True)
    if best is not None and best.objective is not None:
        pr = best.config.protocol.name  # the search may choose it
        print(f"top of the sweep: trial #{best.trial_id.split('_')[-1]} ({describe(best.config, best.overrides)}): "
              f"objective ({spec.objective} UA) {100 * best.objective:.2f} % at iteration {best.iteration}, WA "
              f"{100 * (best.wa or 0):.2f} % | protocol {pr}, leak_free: {str(is_leak_free(pr)).lower()}, seed "
              f"{spec.base.seed}\nthis score graded itself (the search chose it on the same folds and seed); "
              f"race the top {spec.select.top_k} on up to {spec.select.seeds} fresh seeds under "
              f"{spec.select.protocol}{' and sit the final exam on the holdout' if spec.holdout else ''} with: "
              f"dsl-sweep best {spec.name} --out best.yaml", flush=True)
    if outcome.interrupted:
        print(f"sweep interrupted: continue it with --resume (state in {outcome.experiment_path})", flush=True)


def step_cache_dir(spec: SweepSpec, root: str) -> str:
    """Where the sweep's trials share chain steps: `<storage>/step_cache` (every node and every later sweep
    on the same storage path and data), or the local feature cache's `steps/` when the storage is a URI
    (entries are small files written by rename, which an object store does not offer); "" when off."""
    if not spec.step_cache:
        return ""
    if is_uri(root):
        return str(Path(spec.base.cache_dir or default_cache_dir()) / "steps")
    return str(Path(root) / "step_cache")


def sweep_outputs(spec: SweepSpec, root: str, tracking_uri: str) -> list[WriteTarget]:
    """What a sweep writes on this machine: the storage path (Tune's state, checkpoints, the Optuna journal, the
    step cache) or, for a URI, the local journal; an SQLite tracking store. The feature cache is checked where
    it is known whether it must be written; other nodes are checked by `node_preflight`."""
    targets = [WriteTarget.file(journal_path(spec, root), "the Optuna journal")] if is_uri(root) else \
        [WriteTarget.dir(root, "--storage-path (storage_path)")]
    if (store := sqlite_file(tracking_uri)) is not None:
        targets.append(WriteTarget.file(store, "--tracking-uri (SQLite store)"))
    return targets


def launch_sweep(file: str, data: str | None = None, storage_path: str | None = None, trials: int | None = None,
                 step_cache: bool | None = None, address: str | None = None, tracking_uri: str | None = None,
                 resume: bool = False, objective_seeds: int | None = None) -> SweepOutcome:
    """`dsl-sweep sweep FILE`: load the sweep definition (the arguments override its data path, storage path,
    number of trials, step cache and seeds per trial) and run or resume it. `trials` is ignored with `resume`."""
    if resume and trials:
        print("note: --trials is ignored with --resume (the sweep keeps its number of trials)", flush=True)
        trials = None
    spec = load_sweep(file, data=data, trials=trials, storage_path=storage_path, step_cache=step_cache,
                      objective_seeds=objective_seeds)
    return run_sweep(spec, address=address, tracking_uri=tracking_uri, resume=resume, trials=trials)
