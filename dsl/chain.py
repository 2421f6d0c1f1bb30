"""The iterative DSL chain: train on noisy segment labels, update the labels, retrain from scratch.

`iterate_chain` yields after every iteration with a `ChainState` from which the chain resumes
exactly (targets are the only state; every seed is derived from the config), which is what a
checkpointing sweep trial needs. Per-fold trainings are `FoldJob`s handed to a runner, so a caller
may run the folds of one iteration in parallel (e.g. as Ray tasks); the default runs them in turn.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from .config import ChainConfig
from .data import CorpusData
from .evaluate import evaluate_utterances, utterance_features
from .progress import progress
from .protocols import FoldPlan, make_plan
from .rules import get_rule, one_hot
from .schedules import alpha_at
from .segments import SegmentIndex, build_segments
from .train import SegmentBatcher, fit, predict_proba, resolve_device


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31 - 1))


@dataclass(frozen=True)
class FoldJob:
    """One training of a fresh network and its predictions."""

    iteration: int
    scope: int
    fold: int
    train_utterances: np.ndarray  # training utterances (the validation split is carved from them)
    predict_utterances: np.ndarray  # held-out fold, then the scope's test utterances
    targets: np.ndarray  # (n_segments, K) targets; only rows of training segments are read
    seed: int


@dataclass(frozen=True)
class FoldOutput:
    posteriors: np.ndarray  # (segments of predict_utterances, K)
    epochs: int
    best_epoch: int
    seconds: float
    segments_per_second: float


Runner = Callable[[Sequence[FoldJob]], list[FoldOutput]]


def normalisation_stats(frames: np.ndarray, offsets: np.ndarray, utterances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-bin mean and std over the frames of `utterances` (the training folds only)."""
    n = 0
    s = np.zeros(frames.shape[1], dtype=np.float64)
    ss = np.zeros(frames.shape[1], dtype=np.float64)
    for u in utterances:
        block = np.asarray(frames[offsets[u]:offsets[u + 1]], dtype=np.float64)
        n += len(block)
        s += block.sum(axis=0)
        ss += np.square(block).sum(axis=0)
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(ss / max(n, 1) - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


def split_validation(utterances: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve a stratified validation split (for early stopping) out of the training utterances."""
    if fraction <= 0 or len(utterances) < 10:
        return utterances, utterances[:0]
    y = labels[utterances]
    stratify = y if np.bincount(y).max() > 1 and np.min(np.bincount(y)[np.bincount(y) > 0]) >= 2 else None
    try:
        tr, va = train_test_split(utterances, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:
        tr, va = train_test_split(utterances, test_size=fraction, random_state=seed)
    return np.sort(tr), np.sort(va)


def run_fold_job(job: FoldJob, data: CorpusData, cfg: ChainConfig, segments: SegmentIndex | None = None) -> FoldOutput:
    """Train one fresh network on the job's training utterances and predict its held-out ones."""
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    seg = segments if segments is not None else build_segments(data.frame_offsets, cfg.segments, warn=False)
    device = resolve_device(cfg.train.device)
    train_utts, val_utts = split_validation(job.train_utterances, data.labels, cfg.train.val_fraction, job.seed)
    mean, std = normalisation_stats(data.frames, data.frame_offsets, job.train_utterances)
    frames = torch.from_numpy((np.asarray(data.frames) - mean) / std).to(device)
    batcher = SegmentBatcher(frames, cfg.train.channels_last)
    tr_seg, va_seg = seg.of_utterances(train_utts), seg.of_utterances(val_utts)
    pr_seg = seg.of_utterances(job.predict_utterances)
    rows = torch.from_numpy(seg.rows.astype(np.int64)).to(device)
    targets = torch.from_numpy(np.ascontiguousarray(job.targets, dtype=np.float32))
    tr_t, va_t = torch.from_numpy(tr_seg).to(device), torch.from_numpy(va_seg).to(device)
    model, stats = fit(cfg.backbone, data.n_classes, batcher, rows[tr_t], targets[tr_seg].to(device),
                       rows[va_t], targets[va_seg].to(device), cfg.train, job.seed)
    post = predict_proba(model, batcher, rows[torch.from_numpy(pr_seg).to(device)], cfg.train)
    return FoldOutput(post, stats.epochs, stats.best_epoch, stats.seconds, stats.segments_per_second)


_WORKER: dict = {}


def _init_worker(data: CorpusData, cfg: ChainConfig) -> None:
    _WORKER["data"], _WORKER["cfg"] = data, cfg
    _WORKER["seg"] = build_segments(data.frame_offsets, cfg.segments, warn=False)


def _run_in_worker(job: FoldJob) -> FoldOutput:
    return run_fold_job(job, _WORKER["data"], _WORKER["cfg"], _WORKER["seg"])


def local_runner(data: CorpusData, cfg: ChainConfig, show_progress: bool = True) -> Runner:
    """Run fold jobs in this process, or in `cfg.train.workers` spawned processes (one fold each).

    On a 2-core CPU two single-threaded folds side by side train ~1.6x faster than one fold on two
    threads. Results do not depend on the number of workers: every job carries its own seed.
    """
    seg = build_segments(data.frame_offsets, cfg.segments, warn=False)
    workers = max(1, cfg.train.workers)
    pool = None

    def run(jobs: Sequence[FoldJob]) -> list[FoldOutput]:
        nonlocal pool
        bar = progress(total=len(jobs), desc=f"iteration {jobs[0].iteration}" if jobs else "", unit="fold",
                       disable=not show_progress, leave=False)
        out: list[FoldOutput | None] = [None] * len(jobs)
        if workers == 1 or len(jobs) == 1:
            for i, job in enumerate(jobs):
                out[i] = run_fold_job(job, data, cfg, seg)
                bar.update(1)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            if pool is None:  # kept for the whole chain: workers import torch once
                pool = ProcessPoolExecutor(min(workers, len(jobs)), mp.get_context("spawn"), _init_worker, (data, cfg))
            futures = {pool.submit(_run_in_worker, job): i for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                bar.update(1)
        bar.close()
        return out  # type: ignore[return-value]

    run.close = lambda: pool.shutdown(cancel_futures=True) if pool is not None else None  # type: ignore[attr-defined]
    return run


@dataclass
class ChainState:
    """Everything needed to resume: the next iteration and each scope's current targets."""

    next_iteration: int
    targets: list[np.ndarray]
    history: list[dict] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        import json

        np.savez(Path(path), next_iteration=self.next_iteration, history=json.dumps(self.history),
                 **{f"targets_{i}": t for i, t in enumerate(self.targets)})

    @classmethod
    def load(cls, path: str | Path) -> "ChainState":
        import json

        with np.load(Path(path)) as z:
            n = sum(1 for k in z.files if k.startswith("targets_"))
            return cls(int(z["next_iteration"]), [z[f"targets_{i}"] for i in range(n)], json.loads(str(z["history"])))


@dataclass
class IterationResult:
    iteration: int
    alpha: float | None
    wa: float
    ua: float
    fold_wa: list[float]
    fold_ua: list[float]
    confusion: list[list[int]]
    segment_accuracy: float  # argmax of out-of-sample segment posterior == utterance label
    changed_label_share: float  # training targets whose argmax differs from the utterance label
    target_entropy: float  # mean entropy (nats) of the training targets
    epochs: float  # mean epochs trained per fold
    seconds: float
    segments_per_second: float
    posteriors: np.ndarray | None = field(default=None, repr=False)  # out-of-sample, (n_segments, K)
    utterance_predictions: np.ndarray | None = field(default=None, repr=False)

    @property
    def mean_fold_ua(self) -> float:
        return float(np.mean(self.fold_ua))

    def to_dict(self) -> dict:
        skip = {"posteriors", "utterance_predictions"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def initial_state(data: CorpusData, plan: FoldPlan, n_segments_labels: np.ndarray) -> ChainState:
    y = one_hot(n_segments_labels, data.n_classes)
    return ChainState(0, [y.copy() for _ in plan.scopes])


def _label_stats(targets: list[np.ndarray], plan: FoldPlan, seg: SegmentIndex, seg_labels: np.ndarray) -> tuple[float, float]:
    changed, entropy = [], []
    for t, scope in zip(targets, plan.scopes):
        idx = seg.of_utterances(scope.train)
        tt = t[idx]
        changed.append(float(np.mean(np.argmax(tt, axis=1) != seg_labels[idx])))
        entropy.append(float(np.mean(-(tt * np.log(np.clip(tt, 1e-12, 1.0))).sum(axis=1))))
    return float(np.mean(changed)), float(np.mean(entropy))


def iterate_chain(cfg: ChainConfig, data: CorpusData, state: ChainState | None = None,
                  runner: Runner | None = None, show_progress: bool = True,
                  rf_jobs: int | None = None) -> Iterator[tuple[IterationResult, ChainState]]:
    """Run iterations `state.next_iteration .. cfg.iterations`, yielding each result and the state after it."""
    seg = build_segments(data.frame_offsets, cfg.segments, warn=state is None)
    seg_labels = data.labels[seg.utt]
    plan = make_plan(data.labels, data.speakers, cfg.protocol, cfg.seed)
    rule = get_rule(cfg.labels.rule)
    runner = runner or local_runner(data, cfg, show_progress)
    state = state or initial_state(data, plan, seg_labels)
    y = one_hot(seg_labels, data.n_classes)
    groups = data.speaker_ids() if plan.speaker_grouped else None
    for it in range(state.next_iteration, cfg.iterations + 1):
        start = time.perf_counter()
        alpha = None
        if it > 0 and rule.uses_alpha:
            alpha = alpha_at(cfg.labels.schedule, it, cfg.iterations, cfg.labels.alpha, cfg.labels.alpha_end,
                             cfg.labels.alpha_step)
        changed, entropy = _label_stats(state.targets, plan, seg, seg_labels)
        jobs = [FoldJob(it, s, f, np.setdiff1d(scope.train, fold), np.concatenate([fold, scope.test]),
                        state.targets[s], derive_seed(cfg.seed, it, s, f))
                for s, scope in enumerate(plan.scopes) for f, fold in enumerate(scope.folds)]
        outputs = runner(jobs)

        scope_oos = [np.zeros((seg.n_segments, data.n_classes), dtype=np.float32) for _ in plan.scopes]
        eval_post = np.zeros((seg.n_segments, data.n_classes), dtype=np.float32)
        for job, out in zip(jobs, outputs):
            scope = plan.scopes[job.scope]
            fold_seg = seg.of_utterances(scope.folds[job.fold])
            scope_oos[job.scope][fold_seg] = out.posteriors[:len(fold_seg)]
            if len(scope.test):
                eval_post[seg.of_utterances(scope.test)] += out.posteriors[len(fold_seg):] / len(scope.folds)
        for s, scope in enumerate(plan.scopes):
            if not len(scope.test):
                idx = seg.of_utterances(scope.train)
                eval_post[idx] = scope_oos[s][idx]

        feats = utterance_features(eval_post, seg.offsets)
        scores = evaluate_utterances(feats, data.labels, data.n_classes, cfg.protocol.eval_folds, cfg.seed,
                                     groups, rf_jobs)
        result = IterationResult(
            iteration=it, alpha=alpha, wa=scores.wa, ua=scores.ua, fold_wa=scores.fold_wa, fold_ua=scores.fold_ua,
            confusion=scores.confusion,
            segment_accuracy=float(np.mean(np.argmax(eval_post, axis=1) == seg_labels)),
            changed_label_share=changed, target_entropy=entropy,
            epochs=float(np.mean([o.epochs for o in outputs])), seconds=time.perf_counter() - start,
            segments_per_second=float(np.mean([o.segments_per_second for o in outputs])),
            posteriors=eval_post, utterance_predictions=scores.predictions)

        # Targets for the next iteration, per scope, from that scope's out-of-sample posteriors.
        new_targets = []
        next_alpha = alpha_at(cfg.labels.schedule, it + 1, cfg.iterations, cfg.labels.alpha, cfg.labels.alpha_end,
                              cfg.labels.alpha_step) if rule.uses_alpha else 0.0
        for s, scope in enumerate(plan.scopes):
            t = state.targets[s].copy()
            idx = seg.of_utterances(scope.train)
            t[idx] = rule(scope_oos[s][idx], y[idx], seg.utt[idx], alpha=next_alpha, epsilon=cfg.labels.epsilon)
            new_targets.append(t)
        state = ChainState(it + 1, new_targets, [*state.history, result.to_dict()])
        yield result, state


@dataclass
class ChainResult:
    config: ChainConfig
    label_names: tuple[str, ...]
    iterations: list[IterationResult]
    n_utterances: int
    n_segments: int
    seconds: float
    skipped_files: dict[str, str] = field(default_factory=dict)

    def best(self) -> IterationResult:
        return max(self.iterations, key=lambda r: (r.mean_fold_ua, r.wa, -r.iteration))

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "label_names": list(self.label_names),
                "n_utterances": self.n_utterances, "n_segments": self.n_segments, "seconds": self.seconds,
                "skipped_files": self.skipped_files, "iterations": [r.to_dict() for r in self.iterations]}


def run_chain(cfg: ChainConfig, data: CorpusData, runner: Runner | None = None, show_progress: bool = True,
              on_iteration: Callable[[IterationResult], None] | None = None) -> ChainResult:
    """Run the whole chain (iteration 0 + `cfg.iterations` label updates) and collect the results."""
    start = time.perf_counter()
    results = []
    own = runner is None
    runner = runner or local_runner(data, cfg, show_progress)
    try:
        for result, _ in iterate_chain(cfg, data, runner=runner, show_progress=show_progress):
            results.append(result)
            if on_iteration:
                on_iteration(result)
    finally:
        if own:
            runner.close()  # type: ignore[attr-defined]
    n_segments = len(results[0].posteriors) if results and results[0].posteriors is not None else 0
    return ChainResult(cfg, data.label_names, results, data.n_utterances, n_segments,
                       time.perf_counter() - start, dict(data.skipped))
