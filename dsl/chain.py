"""The iterative DSL chain: train on noisy segment labels, update the labels, retrain from scratch.

`iterate_chain` yields after every iteration with a `ChainState` from which the chain resumes
exactly (targets are the only state; every seed is derived from the config), which is what a
checkpointing sweep trial needs. Per-fold trainings are `FoldJob`s handed to a runner, so a caller
may run the folds of one iteration in parallel (e.g. as Ray tasks); the default runs them in turn.

How an iteration is scored depends on the fold plan (`dsl.protocols`): a transductive plan
cross-validates one forest over all utterances; a held-out plan trains one forest per scope on the
scope's training utterances, predicts its test utterances, and picks each scope's iteration by a forest
CV over its training utterances (`dsl.selection`), so no scored label reaches its score.
"""
from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .config import ChainConfig
from .data import CorpusData
from .environment import machine_info
from .evaluate import cross_validated_proba, forest_proba, scores, utterance_features, validation_ua
from .fold_job import (FoldJob, FoldOutput, TrainedFold, derive_seed, normalisation_stats, run_fold_job,
                       split_validation, train_fold)
from .plugins import load_plugins
from .progress import progress
from .protocols import FoldPlan, is_leak_free, load_assignment, make_plan
from .rules import get_rule, one_hot
from .runners import LocalRunner, Runner, local_runner, submitter
from .schedules import schedule_alpha
from .segments import SegmentIndex, build_segments
from .selection import reported_iteration, selected_scores

__all__ = ["ChainResult", "ChainState", "FoldJob", "FoldOutput", "IterationResult", "LocalRunner", "Runner",
           "TrainedFold", "derive_seed", "iterate_chain", "local_runner", "normalisation_stats", "run_chain",
           "run_fold_job", "split_validation", "train_fold"]


@dataclass
class ChainState:
    """Everything needed to resume: the next iteration and each scope's current targets (and, where a
    caller sets it, the config they were computed with, so a resume can check it is the same)."""

    next_iteration: int
    targets: list[np.ndarray]
    history: list[dict] = field(default_factory=list)
    config: dict | None = None

    def save(self, path: str | Path) -> None:
        import json

        extra = {} if self.config is None else {"config": json.dumps(self.config)}
        np.savez(Path(path), next_iteration=self.next_iteration, history=json.dumps(self.history),
                 **{f"targets_{i}": t for i, t in enumerate(self.targets)}, **extra)

    @classmethod
    def load(cls, path: str | Path) -> "ChainState":
        import json

        with np.load(Path(path)) as z:
            n = sum(1 for k in z.files if k.startswith("targets_"))
            config = json.loads(str(z["config"])) if "config" in z.files else None
            return cls(int(z["next_iteration"]), [z[f"targets_{i}"] for i in range(n)], json.loads(str(z["history"])),
                       config)


@dataclass
class IterationResult:
    """One iteration's scores. Under a held-out protocol `val_ua` (per scope) is what picks each scope's
    iteration, and `selected_*` pool the outer test predictions at those picks (over iterations 0..this)."""

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
    val_ua: list[float] | None = None  # held out: per scope, forest CV UA over its training utterances
    selected_iterations: list[int] | None = None  # held out: per scope, the iteration val_ua picks so far
    selected_wa: float | None = None
    selected_ua: float | None = None
    utterances: list[dict] = field(default_factory=list, repr=False)  # corpus order: file, fold, label, predicted, proba
    posteriors: np.ndarray | None = field(default=None, repr=False)  # out-of-sample, (n_segments, K)
    utterance_predictions: np.ndarray | None = field(default=None, repr=False)

    @property
    def mean_fold_ua(self) -> float:
        return float(np.mean(self.fold_ua))

    def to_dict(self) -> dict:
        skip = {"posteriors", "utterance_predictions"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def utterance_records(paths: tuple[str, ...], labels: np.ndarray, fold_of: np.ndarray, proba: np.ndarray) -> list[dict]:
    """Per utterance in corpus order: file name, outer fold, true and predicted label, forest probabilities."""
    pred = np.argmax(proba, axis=1)
    return [{"file": Path(p).name, "fold": int(f), "label": int(y), "predicted": int(k),
             "proba": [round(float(v), 6) for v in row]}
            for p, f, y, k, row in zip(paths, fold_of, labels, pred, proba)]


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


@dataclass
class _Iteration:
    """One iteration while its folds run: the outputs so far and the next iteration's targets, fold by fold."""

    it: int
    alpha: float | None
    next_alpha: float
    next_targets: list[np.ndarray]  # filled fold by fold as outputs arrive
    outputs: dict[tuple[int, int], FoldOutput] = field(default_factory=dict)
    submitted: set[tuple[int, int]] = field(default_factory=set)
    label_stats: tuple[float, float] | None = None  # of the targets this iteration trains on


def _done_future(value: FoldOutput) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def iterate_chain(cfg: ChainConfig, data: CorpusData, state: ChainState | None = None,
                  runner: Runner | None = None, show_progress: bool = True,
                  rf_jobs: int | None = None) -> Iterator[tuple[IterationResult, ChainState]]:
    """Run iterations `state.next_iteration .. cfg.iterations`, yielding each result and the state after it.

    With a runner that can `submit` single jobs and a label rule that is local to an utterance (every
    built-in rule), fold f of iteration t+1 starts as soon as the other folds of iteration t are done:
    its training segments lie in those folds, so their new targets are already known. Results equal
    the iteration-by-iteration schedule exactly (each job carries its seed and reads only its training
    rows); 5 folds on 2 workers then keep both busy instead of leaving one idle for a sixth of every
    iteration. `IterationResult.seconds` is the wall time since the previous iteration finished.
    """
    load_plugins(cfg.plugins)
    seg = build_segments(data.frame_offsets, cfg.segments, warn=state is None)
    seg_labels = data.labels[seg.utt]
    outer = load_assignment(cfg.protocol.assignment, data.paths) if cfg.protocol.assignment else None
    plan = make_plan(data.labels, data.speakers, cfg.protocol, cfg.seed, outer)
    fold_of = plan.outer_fold(data.n_utterances)
    rule = get_rule(cfg.labels.rule)
    own = runner is None
    runner = runner or local_runner(data, cfg)
    state = state or initial_state(data, plan, seg_labels)
    if state.next_iteration > cfg.iterations:
        return
    y = one_hot(seg_labels, data.n_classes)
    groups = data.speaker_ids() if plan.speaker_grouped else None
    fold_segments = [[seg.of_utterances(fold) for fold in scope.folds] for scope in plan.scopes]
    test_segments = [seg.of_utterances(scope.test) for scope in plan.scopes]
    submit = submitter(runner)
    pipelined = submit is not None and rule.local and cfg.iterations > state.next_iteration
    first, last = state.next_iteration, cfg.iterations
    n_jobs = sum(len(scope.folds) for scope in plan.scopes)
    bar = progress(total=n_jobs * (last - first + 1), desc="fold trainings", unit="fold", disable=not show_progress)
    pending: dict[Future, tuple[int, int, int]] = {}

    def alpha_for(it: int) -> float | None:
        if not rule.uses_alpha:
            return None
        return schedule_alpha(cfg.labels, it, cfg.iterations)

    def new_book(it: int, targets: list[np.ndarray]) -> _Iteration:
        return _Iteration(it, alpha_for(it) if it > 0 else None, alpha_for(it + 1) or 0.0, [t.copy() for t in targets])

    def job(it: int, s: int, f: int, targets: np.ndarray) -> FoldJob:
        scope = plan.scopes[s]
        return FoldJob(it, s, f, scope.job_train(f), np.concatenate([scope.folds[f], scope.test]), targets,
                       derive_seed(cfg.seed, it, s, f))

    def start_iteration(book: _Iteration, targets: list[np.ndarray]) -> None:
        """Submit the iteration's jobs that are not running yet (all of them unless pipelined)."""
        todo = [(s, f) for s, scope in enumerate(plan.scopes) for f in range(len(scope.folds))
                if (s, f) not in book.submitted]
        jobs = [job(book.it, s, f, targets[s]) for s, f in todo]
        futures = [submit(j) for j in jobs] if submit is not None else [_done_future(o) for o in runner(jobs)]
        for (s, f), fut in zip(todo, futures):
            track(book, s, f, fut)

    def track(book: _Iteration, s: int, f: int, fut: Future) -> None:
        book.submitted.add((s, f))
        pending[fut] = (book.it, s, f)

    def record(book: _Iteration, s: int, f: int, out: FoldOutput) -> None:
        """Keep the output; the fold's segments get their targets for the next iteration right away."""
        book.outputs[(s, f)] = out
        idx = fold_segments[s][f]
        q = out.posteriors[:len(idx)]
        book.next_targets[s][idx] = rule(q, y[idx], seg.utt[idx], alpha=book.next_alpha, epsilon=cfg.labels.epsilon)
        if not pipelined or book.it >= last:
            return
        if book.it + 1 not in books:
            books[book.it + 1] = new_book(book.it + 1, book.next_targets)
        nxt = books[book.it + 1]
        n_folds = len(plan.scopes[s].folds)
        for g in range(n_folds):
            needed_done = all((s, h) in book.outputs for h in plan.scopes[s].needs(g))
            if (s, g) not in nxt.submitted and needed_done:
                # The job reads only the rows of the folds it needs, and those rows are final.
                track(nxt, s, g, submit(job(nxt.it, s, g, book.next_targets[s].copy())))

    def finish(book: _Iteration, since: float) -> tuple[IterationResult, ChainState]:
        scope_oos = [np.zeros((seg.n_segments, data.n_classes), dtype=np.float32) for _ in plan.scopes]
        eval_post = np.zeros((seg.n_segments, data.n_classes), dtype=np.float32)
        outputs = [book.outputs[(s, f)] for s, scope in enumerate(plan.scopes) for f in range(len(scope.folds))]
        for s, scope in enumerate(plan.scopes):  # in fold order, so sums do not depend on completion order
            for f in range(len(scope.folds)):
                out, idx = book.outputs[(s, f)], fold_segments[s][f]
                scope_oos[s][idx] = out.posteriors[:len(idx)]
                if len(scope.test):
                    eval_post[test_segments[s]] += out.posteriors[len(idx):] / len(scope.folds)
            if not len(scope.test):
                idx = seg.of_utterances(scope.train)
                eval_post[idx] = scope_oos[s][idx]
        labels, k = data.labels, data.n_classes
        val_ua: list[float] | None = None
        if plan.held_out:  # each scope's forest sees only its training utterances; their CV picks the iteration
            proba = np.zeros((data.n_utterances, k), dtype=np.float32)
            val_ua = []
            for s, scope in enumerate(plan.scopes):
                train_feats = utterance_features(scope_oos[s], seg.offsets, scope.train)
                test_feats = utterance_features(eval_post, seg.offsets, scope.test)
                proba[scope.test] = forest_proba(train_feats, labels[scope.train], test_feats, k, cfg.seed + s, rf_jobs)
                val_ua.append(validation_ua(train_feats, labels[scope.train], k, cfg.protocol.select_folds,
                                            cfg.seed + s, groups[scope.train] if groups is not None else None, rf_jobs))
            sc = scores(labels, proba, fold_of, k)
        else:  # transductive: the forest is cross-validated over all utterances, as in the paper
            proba, forest_fold = cross_validated_proba(utterance_features(eval_post, seg.offsets), labels, k,
                                                       cfg.protocol.eval_folds, cfg.seed, groups, rf_jobs)
            sc = scores(labels, proba, forest_fold, k)
        changed, entropy = book.label_stats  # type: ignore[misc]
        result = IterationResult(
            iteration=book.it, alpha=book.alpha, wa=sc.wa, ua=sc.ua, fold_wa=sc.fold_wa,
            fold_ua=sc.fold_ua, confusion=sc.confusion,
            segment_accuracy=float(np.mean(np.argmax(eval_post, axis=1) == seg_labels)),
            changed_label_share=changed, target_entropy=entropy,
            epochs=float(np.mean([o.epochs for o in outputs])), seconds=time.perf_counter() - since,
            segments_per_second=float(np.mean([o.segments_per_second for o in outputs])), val_ua=val_ua,
            utterances=utterance_records(data.paths, labels, fold_of, sc.probabilities),
            posteriors=eval_post, utterance_predictions=sc.predictions)
        if val_ua is not None:
            picks, chosen = selected_scores([*state.history, result.to_dict()], k)
            result.selected_iterations, result.selected_wa, result.selected_ua = picks, chosen.wa, chosen.ua
        return result, ChainState(book.it + 1, book.next_targets, [*state.history, result.to_dict()])

    books = {first: new_book(first, state.targets)}
    books[first].label_stats = _label_stats(state.targets, plan, seg, seg_labels)
    since = time.perf_counter()
    try:
        start_iteration(books[first], state.targets)
        current = first
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda d: pending[d]):
                it, s, f = pending.pop(fut)
                record(books[it], s, f, fut.result())
                bar.update(1)
            while current in books and len(books[current].outputs) == n_jobs:
                result, state = finish(books.pop(current), since)
                since = time.perf_counter()
                current += 1
                if current <= last:
                    book = books.setdefault(current, new_book(current, state.targets))
                    book.label_stats = _label_stats(state.targets, plan, seg, seg_labels)
                    start_iteration(book, state.targets)
                yield result, state
    finally:
        for fut in pending:
            fut.cancel()
        bar.close()
        if own:
            runner.close()  # type: ignore[attr-defined]


@dataclass
class ChainResult:
    """A whole chain. `reported()` is its headline by a rule fixed in advance (see `dsl.selection`)."""

    config: ChainConfig
    label_names: tuple[str, ...]
    iterations: list[IterationResult]
    n_utterances: int
    n_segments: int
    seconds: float
    skipped_files: dict[str, str] = field(default_factory=dict)
    leak_free: bool = False
    environment: dict = field(default_factory=machine_info)
    command: str = ""

    def reported(self) -> dict[str, float]:
        """WA/UA of the final iteration (transductive) or of the validation-selected iterations (held out)."""
        return reported_iteration(self.iterations[-1].to_dict())

    def to_dict(self) -> dict:
        pr = self.config.protocol
        return {"format": RESULT_FORMAT, "kind": "run", "command": self.command,
                "protocol": {"name": pr.name, "leak_free": self.leak_free, "folds": pr.folds,
                             "inner_folds": pr.inner_folds, "eval_folds": pr.eval_folds, "seed": self.config.seed},
                "environment": self.environment, "config": self.config.to_dict(),
                "label_names": list(self.label_names), "n_utterances": self.n_utterances,
                "n_segments": self.n_segments, "seconds": self.seconds, "skipped_files": self.skipped_files,
                "reported": self.reported() if self.iterations else None,
                "iterations": [r.to_dict() for r in self.iterations]}


RESULT_FORMAT = 2  # result JSON layout version (2: protocol, environment, per-utterance records)


def run_chain(cfg: ChainConfig, data: CorpusData, runner: Runner | None = None, show_progress: bool = True,
              on_iteration: Callable[[IterationResult], None] | None = None) -> ChainResult:
    """Run the whole chain (iteration 0 + `cfg.iterations` label updates) and collect the results."""
    start = time.perf_counter()
    results = []
    own = runner is None
    runner = runner or local_runner(data, cfg)
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
                       time.perf_counter() - start, dict(data.skipped), is_leak_free(cfg.protocol.name))
