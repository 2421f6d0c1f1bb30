"""The iterative DSL chain: train on noisy segment labels, update the labels, retrain from scratch.

`iterate_chain` yields after every iteration with a `ChainState` from which the chain resumes
exactly (targets are the only state; every seed is derived from the config), which is what a
checkpointing sweep trial needs; it is a thin wrapper over `ChainIterator`, which holds one pass's
plan, runner and iterations in flight. Per-fold trainings are `FoldJob`s handed to a runner, so a
caller may run the folds of one iteration in parallel (e.g. as Ray tasks); the default runs them in turn.

How an iteration is scored depends on the fold plan (`dsl.protocols.plans`) and the utterance stage
(`stage.name`, `dsl.method.stages`: the paper's random forest or attentive correlation pooling): a transductive
plan cross-validates one stage over all utterances; a held-out plan trains one stage per scope on the
scope's training utterances, predicts its test utterances, and picks each scope's iteration by a CV of
the stage over its training utterances (`dsl.protocols.selection`), so no scored label reaches its score.

What the stage trains on should be what it predicts on. A refinery scope's one network relabels the
utterances it trained on, so its posteriors of them are in-sample (confident) while those of the test
utterances are not; with `stage.fit_on: cross_fit` two more networks per scope and iteration, each trained
on one half of the scope's training utterances (with the same targets), predict the other half, and the
stage and the iteration selector read these out-of-sample posteriors instead (`ChainIterator.stage_folds`;
they never change a target). A nested scope's stage trains on single inner networks' posteriors; with
`stage.test_views: each` the forest predicts from each inner network's posteriors of a test utterance and
averages its probabilities, instead of reading their mean.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsl.config import ChainConfig, ConfigError
from dsl.data.bundle import CorpusData
from dsl.data.segments import SegmentIndex, build_segments
from dsl.execution.fold_job import (
    FoldJob,
    FoldOutput,
    TrainedFold,
    derive_seed,
    normalisation_stats,
    run_fold_job,
    split_validation,
    train_fold,
)
from dsl.execution.fold_runners import LocalRunner, Runner, local_runner, submitter
from dsl.execution.step_cache import StepCache, StepKeys
from dsl.execution.step_claims import StepElsewhere, claim_of, is_live
from dsl.method.evaluate import UtteranceScores, scores
from dsl.method.rules import LabelRule, get_rule, one_hot
from dsl.method.schedules import schedule_alpha
from dsl.method.stages import make_stage, per_utterance, stage_input, standardised
from dsl.plugins import load_plugins
from dsl.protocols.plans import (
    FoldPlan,
    make_plan,
    outer_folds,
    outer_partition,
    plan_leak_free,
    speaker_folds,
    stratified_folds,
)
from dsl.protocols.selection import reported_iteration, selected_condition_scores, selected_scores, selector_agreement
from dsl.robustness.conditions import ChainConditions, with_summaries
from dsl.runtime.environment import machine_info
from dsl.runtime.progress import progress

__all__ = ["ChainIterator", "ChainResult", "ChainState", "FoldJob", "FoldOutput", "IterationResult", "LocalRunner",
           "Runner", "TrainedFold", "derive_seed", "iterate_chain", "local_runner", "normalisation_stats", "run_chain",
           "run_fold_job", "split_validation", "train_fold"]


STATE_FORMAT = 2  # layout of a saved ChainState (1: no "format" entry)


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
        np.savez(Path(path), format=STATE_FORMAT, next_iteration=self.next_iteration, history=json.dumps(self.history),
                 **{f"targets_{i}": t for i, t in enumerate(self.targets)}, **extra)

    @classmethod
    def load(cls, path: str | Path) -> ChainState:
        import json

        from dsl.formats import check_format

        with np.load(Path(path)) as z:
            check_format(path, int(z["format"]) if "format" in z.files else 1, STATE_FORMAT, "chain state",
                         "resume from it", "it has no format entry (written before states carried one)")
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
    val_ua: list[float] | None = None  # held out: per scope, stage CV UA over its training utterances
    selected_iterations: list[int] | None = None  # held out: per scope, the iteration val_ua picks so far
    selected_wa: float | None = None
    selected_ua: float | None = None
    # held out: share of outer folds whose pick has the best outer-test UA of iterations 0..this (ties agree)
    selector_agreement: float | None = None
    # eval.noise / eval.adversarial: per test condition (`dsl.robustness.conditions`) wa, ua, fold_wa, fold_ua,
    # confusion, segment_accuracy, per-utterance `predicted` (corpus order) and, held out, selected_wa/ua at the
    # iterations the clean validation picked; plus `noise_mean` / `attack_mean`
    conditions: dict[str, dict] = field(default_factory=dict)
    from_cache: bool = False  # every fold training and the scores were served by the step cache
    cached_folds: int = 0  # fold trainings the step cache served (stored before, or by a concurrent trial)
    fold_trainings: int = 0  # fold trainings the iteration needs (served by the step cache or computed)
    utterances: list[dict] = field(default_factory=list, repr=False)  # corpus order: file, fold, label, predicted, proba
    posteriors: np.ndarray | None = field(default=None, repr=False)  # out-of-sample, (n_segments, K)
    utterance_predictions: np.ndarray | None = field(default=None, repr=False)
    utterance_probabilities: np.ndarray | None = field(default=None, repr=False)  # the stage's, unrounded (n, K)

    @property
    def mean_fold_ua(self) -> float:
        return float(np.mean(self.fold_ua))

    def to_dict(self) -> dict:
        skip = {"posteriors", "utterance_predictions", "utterance_probabilities"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def utterance_records(paths: tuple[str, ...], labels: np.ndarray, fold_of: np.ndarray, proba: np.ndarray,
                      target_entropy: np.ndarray | None = None) -> list[dict]:
    """Per utterance in corpus order: file name, outer fold, true and predicted label, the stage's probabilities,
    and the mean entropy of the targets its segments were trained on (None where no scope trains on it)."""
    pred = np.argmax(proba, axis=1)
    ent = np.full(len(paths), np.nan) if target_entropy is None else target_entropy
    return [{"file": Path(p).name, "fold": int(f), "label": int(y), "predicted": int(k),
             "proba": [round(float(v), 6) for v in row],
             "target_entropy": None if not np.isfinite(e) else round(float(e), 6)}
            for p, f, y, k, row, e in zip(paths, fold_of, labels, pred, proba, ent)]


def initial_state(data: CorpusData, plan: FoldPlan, n_segments_labels: np.ndarray) -> ChainState:
    y = one_hot(n_segments_labels, data.n_classes)
    return ChainState(0, [y.copy() for _ in plan.scopes])


def _label_stats(targets: list[np.ndarray], plan: FoldPlan, seg: SegmentIndex,
                 seg_labels: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Share of training targets whose argmax left the utterance label, their mean entropy (nats), and per
    utterance the mean entropy of its segments' targets over the scopes that train on it (NaN: none does)."""
    changed, entropy = [], []
    n_utt = len(seg.offsets) - 1
    utt_sum, utt_count = np.zeros(n_utt), np.zeros(n_utt)
    for t, scope in zip(targets, plan.scopes):
        idx = seg.of_utterances(scope.train)
        tt = t[idx]
        h = -(tt * np.log(np.clip(tt, 1e-12, 1.0))).sum(axis=1)
        changed.append(float(np.mean(np.argmax(tt, axis=1) != seg_labels[idx])))
        entropy.append(float(np.mean(h)))
        np.add.at(utt_sum, seg.utt[idx], h)
        np.add.at(utt_count, seg.utt[idx], 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_utt = np.where(utt_count > 0, utt_sum / np.maximum(utt_count, 1.0), np.nan)
    return float(np.mean(changed)), float(np.mean(entropy)), per_utt


@dataclass
class _Iteration:
    """One iteration while its folds run: the outputs so far and the next iteration's targets, fold by fold."""

    it: int
    alpha: float | None
    next_alpha: float
    next_targets: list[np.ndarray]  # filled fold by fold as outputs arrive
    outputs: dict[tuple[int, int], FoldOutput] = field(default_factory=dict)
    submitted: set[tuple[int, int]] = field(default_factory=set)
    label_stats: tuple[float, float, np.ndarray] | None = None  # of the targets this iteration trains on
    keys: dict[tuple[int, int], str] = field(default_factory=dict)  # step-cache key of each fold training
    cached: set[tuple[int, int]] = field(default_factory=set)  # fold trainings the step cache served
    jobs: dict[tuple[int, int], FoldJob] = field(default_factory=dict)  # as submitted (with a cache: claimed)


def _done_future(value: FoldOutput) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


WAIT_POLL_S = 0.5  # how often a chain looks for the steps it waits for (`dsl.execution.step_claims`)


class ChainIterator:
    """One pass of the chain from a state to `cfg.iterations`; `iterate_chain` iterates one, once.

    Set-up (segments, fold plan, runner) happens in `__init__`. Iterating submits the fold jobs, keeps
    their outputs in one `_Iteration` book per iteration in flight (two while pipelined), and yields each
    finished iteration's result and the state after it. The attributes are what the steps share: fixed
    by the set-up, except `state`, `pending` and `books`, which track the progress of the pass.
    """

    cfg: ChainConfig
    data: CorpusData
    show_progress: bool  # show a bar over the fold trainings
    rf_jobs: int | None  # n_jobs of the utterance-level forests (stage forest)
    seg: SegmentIndex  # the corpus cut into segments, the unit the networks train on
    seg_labels: np.ndarray  # each segment's utterance label
    y: np.ndarray  # one-hot `seg_labels`: the original targets the label rule mixes with posteriors
    plan: FoldPlan  # the protocol's scopes and their folds
    fold_of: np.ndarray  # each utterance's outer fold, for per-fold scores and records
    scored_segments: np.ndarray  # segments of utterances that are scored (fold >= 0)
    groups: np.ndarray | None  # speaker ids when the stage's CV must keep speakers apart
    fold_segments: list[list[np.ndarray]]  # per scope, per fold: its segments (where its targets change)
    stage_folds: list[tuple[np.ndarray, ...]]  # per scope: the cross-fit halves of `stage.fit_on: cross_fit`, or ()
    test_segments: list[np.ndarray]  # per scope: the segments of its test utterances
    rule: LabelRule  # turns a fold's posteriors into its segments' next targets
    runner: Runner  # trains the fold jobs
    own_runner: bool  # the runner was made here, so it is closed here
    submit: Callable[[FoldJob], Future] | None  # the runner's `submit`, if it starts single jobs
    state: ChainState  # after the last finished iteration: `finish` extends its history
    first: int  # the first iteration this pass runs
    last: int  # the last iteration of the chain (`cfg.iterations`)
    concurrent: bool  # the runner's jobs run beside this thread (`SubmittingRunner.concurrent`), not in it
    pipelined: bool  # a fold of iteration t+1 may start while iteration t still runs (a concurrent runner)
    n_jobs: int  # fold trainings per iteration, over all scopes (label folds, then cross-fit halves)
    pending: dict[Future, tuple[int, int, int]]  # running jobs -> (iteration, scope, fold)
    waiting: set[tuple[int, int, int]]  # jobs another process computes: their entries are awaited in the cache
    books: dict[int, _Iteration]  # iterations with jobs submitted and not yet finished
    cache: StepCache | None  # serves and keeps fold trainings and scores (see `dsl.execution.step_cache`)
    keys: StepKeys | None  # the key parts fixed for this chain (with a cache)
    conditions: ChainConditions | None  # eval.*: the test conditions every fold job also scores its test utterances in

    def __init__(self, cfg: ChainConfig, data: CorpusData, state: ChainState | None = None,
                 runner: Runner | None = None, show_progress: bool = True, rf_jobs: int | None = None,
                 step_cache: StepCache | None = None) -> None:
        self.cfg, self.data, self.show_progress, self.rf_jobs = cfg, data, show_progress, rf_jobs
        self.cache = step_cache
        self.keys = StepKeys.of(cfg, data) if step_cache is not None else None
        load_plugins(cfg.plugins)
        self.seg = build_segments(data.frame_offsets, cfg.segments, warn=False)  # `prepare_data` names them
        self.seg_labels = data.labels[self.seg.utt]
        outer = outer_folds(cfg.protocol, data.paths)
        self.plan = make_plan(data.labels, data.speakers, cfg.protocol, cfg.seed, outer, data.paths)
        self.fold_of = self.plan.outer_fold(data.n_utterances)
        # segments of scored utterances: all, except a cross-corpus training corpus (only ever trained on)
        self.scored_segments = self.fold_of[self.seg.utt] >= 0
        self.rule = get_rule(cfg.labels.rule)
        self.own_runner = runner is None
        self.runner = runner or local_runner(data, cfg)
        self.state = state or initial_state(data, self.plan, self.seg_labels)
        self.y = one_hot(self.seg_labels, data.n_classes)
        self.groups = data.speaker_ids() if self.plan.speaker_grouped else None
        self.fold_segments = [[self.seg.of_utterances(fold) for fold in scope.folds] for scope in self.plan.scopes]
        self.test_segments = [self.seg.of_utterances(scope.test) for scope in self.plan.scopes]
        self.stage_folds = self.cross_fit_halves()
        self.submit = submitter(self.runner)
        self.first, self.last = self.state.next_iteration, cfg.iterations
        self.concurrent = self.submit is not None and getattr(self.runner, "concurrent", True)
        self.pipelined = self.concurrent and self.rule.local and self.last > self.first
        self.n_jobs = sum(self.jobs_of(s) for s in range(len(self.plan.scopes)))
        self.pending = {}
        self.waiting = set()
        self.books = {}
        self.conditions = (ChainConditions(cfg, data.paths, data.speakers, self.fold_of, show_progress)
                           if cfg.eval.enabled and self.first <= self.last else None)

    def __iter__(self) -> Iterator[tuple[IterationResult, ChainState]]:
        """Run iterations `first .. last`, yielding each result and the state after it."""
        if self.first > self.last:
            return
        bar = progress(total=self.n_jobs * (self.last - self.first + 1), desc="fold trainings", unit="fold",
                       disable=not self.show_progress)
        self.open_iteration(self.first, self.state.targets)
        since = time.perf_counter()
        try:
            self.start_iteration(self.books[self.first], self.state.targets)
            current = self.first
            while self.pending or self.waiting:
                if self.pending:
                    done, _ = wait(list(self.pending), timeout=WAIT_POLL_S if self.waiting else None,
                                   return_when=FIRST_COMPLETED)
                else:
                    time.sleep(WAIT_POLL_S)
                    done = set()
                for fut in sorted(done, key=lambda d: self.pending[d]):
                    it, s, f = self.pending.pop(fut)
                    out = fut.result()
                    if isinstance(out, StepElsewhere):
                        self.waiting.add((it, s, f))
                        continue
                    self.record(self.books[it], s, f, out)
                    bar.update(1)
                bar.update(self.poll_waiting())
                while current in self.books and len(self.books[current].outputs) == self.n_jobs:
                    result, self.state = self.finish(self.books.pop(current), since)
                    current += 1
                    if current <= self.last and self.concurrent:  # the workers go on while the result is handled
                        self.start_iteration(self.open_iteration(current, self.state.targets), self.state.targets)
                    since = time.perf_counter()
                    yield result, self.state
                    if current <= self.last and not self.concurrent:  # report first: training blocks this thread
                        since = time.perf_counter()
                        self.start_iteration(self.open_iteration(current, self.state.targets), self.state.targets)
        finally:
            for fut in self.pending:
                fut.cancel()
            bar.close()
            if self.own_runner:
                self.runner.close()  # type: ignore[attr-defined]

    def alpha_for(self, it: int) -> float | None:
        """The scheduled WDSL alpha of iteration `it`; None for a rule without one."""
        if not self.rule.uses_alpha:
            return None
        return schedule_alpha(self.cfg.labels, it, self.cfg.iterations)

    def new_book(self, it: int, targets: list[np.ndarray]) -> _Iteration:
        """The book of iteration `it`, whose next targets start as a copy of the ones it trains on."""
        return _Iteration(it, self.alpha_for(it) if it > 0 else None, self.alpha_for(it + 1) or 0.0,
                          [t.copy() for t in targets])

    def open_iteration(self, it: int, targets: list[np.ndarray]) -> _Iteration:
        """Iteration `it`'s book (made now unless pipelining made it) with the stats of its targets."""
        book = self.books.setdefault(it, self.new_book(it, targets))
        book.label_stats = _label_stats(targets, self.plan, self.seg, self.seg_labels)
        return book

    def cross_fit_halves(self) -> list[tuple[np.ndarray, ...]]:
        """Per scope, the two halves of its training utterances whose networks feed its stage under
        `stage.fit_on: cross_fit` (in-sample scopes only; () elsewhere). Cut like inner folds: stratified by
        the scope's own training labels (grouped by speaker when the plan is), seeded per scope."""
        if self.cfg.stage.fit_on != "cross_fit":
            return [() for _ in self.plan.scopes]
        if not any(scope.in_sample for scope in self.plan.scopes):
            raise ConfigError(f"stage.fit_on: cross_fit applies to in-sample scopes (refinery); protocol "
                              f"{self.cfg.protocol.name!r}'s stages already train on out-of-fold posteriors")
        labels, speakers, out = self.data.labels, self.data.speakers, []
        for s, scope in enumerate(self.plan.scopes):
            seed = self.cfg.seed + 2000 + s
            halves = (() if not scope.in_sample else
                      speaker_folds(labels[scope.train], speakers[scope.train], 2, seed) if self.plan.speaker_grouped
                      else stratified_folds(labels[scope.train], 2, seed))
            out.append(tuple(scope.train[h] for h in halves))
        return out

    def jobs_of(self, s: int) -> int:
        """Fold trainings of scope `s` per iteration: its folds (which update targets), then its cross-fit halves."""
        return len(self.plan.scopes[s].folds) + len(self.stage_folds[s])

    def needs(self, s: int, f: int) -> list[int]:
        """Jobs of the previous iteration whose targets job `f` of scope `s` trains on (a cross-fit half trains
        on targets that the scope's folds set)."""
        scope = self.plan.scopes[s]
        return scope.needs(f) if f < len(scope.folds) else list(range(len(scope.folds)))

    def job(self, it: int, s: int, f: int, targets: np.ndarray) -> FoldJob:
        """Fold `f` of scope `s` in iteration `it`: it predicts its fold and the scope's test utterances (also under
        the test conditions of `eval.*`); a cross-fit job (f beyond the folds) trains on one half of the scope's
        training utterances and predicts the other (clean only: it feeds the stage's training vectors). The job
        carries only its training segments' targets."""
        scope, n_folds = self.plan.scopes[s], len(self.plan.scopes[s].folds)
        conditions = None
        if f < n_folds:
            train, predict = scope.job_train(f), np.concatenate([scope.folds[f], scope.test])
            if self.conditions is not None:  # the utterances it scores: its scope's test set, or its held-out fold
                conditions = self.conditions.for_job(scope.test if len(scope.test) else scope.folds[f])
        else:
            predict = self.stage_folds[s][f - n_folds]
            train = np.setdiff1d(scope.train, predict)
        return FoldJob.of(it, s, f, train, predict, targets, derive_seed(self.cfg.seed, it, s, f), self.seg,
                          conditions=conditions)

    def plan_order(self) -> list[tuple[int, int]]:
        """Every (scope, job) of an iteration, in plan order (sums and keys never depend on completion order)."""
        return [(s, f) for s in range(len(self.plan.scopes)) for f in range(self.jobs_of(s))]

    def start_iteration(self, book: _Iteration, targets: list[np.ndarray]) -> None:
        """Submit the iteration's jobs that are not running yet (all of them unless pipelined) and not cached."""
        todo = [(s, f) for s, f in self.plan_order() if (s, f) not in book.submitted]
        for s, f in todo:
            if (cached := self.cached_output(book, s, f, self.job(book.it, s, f, targets[s]))) is not None:
                self.track(book, s, f, cached)
        todo = [sf for sf in todo if sf not in book.submitted]
        jobs = [book.jobs[sf] for sf in todo]
        futures = ([self.submit(job) for job in jobs] if self.submit is not None
                   else [_done_future(o) for o in self.runner(jobs)])
        for (s, f), fut in zip(todo, futures):
            self.track(book, s, f, fut)

    def cached_output(self, book: _Iteration, s: int, f: int, job: FoldJob) -> Future | None:
        """Note in `book` the job to submit; with a step cache, its key, and its cached output as a done future
        if there is one. A job that misses is submitted with a claim on its step (`dsl.execution.step_claims`)."""
        book.jobs[(s, f)] = job
        if self.cache is None or self.keys is None:
            return None
        key = book.keys[(s, f)] = self.keys.fold(job.iteration, job.seed, job.train_utterances,
                                                  job.predict_utterances, job.targets,
                                                  job.conditions.key_parts() if job.conditions is not None else ())
        out = self.cache.get_fold(key)
        if out is not None and job.conditions is not None and out.condition_names != job.conditions.names:
            out = None  # (cannot happen with the conditions in the key; a clean-only output never stands in)
        if out is None:
            book.jobs[(s, f)] = dataclasses.replace(job, claim=claim_of(self.cache, key))
            return None
        book.cached.add((s, f))
        return _done_future(out)

    def poll_waiting(self) -> int:
        """Record the awaited steps another process has stored; resubmit, without a claim, those whose claim
        died without an entry (so no job waits twice). Returns how many were recorded."""
        assert self.cache is not None or not self.waiting
        recorded = 0
        for it, s, f in sorted(self.waiting):
            book = self.books[it]
            key = book.keys[(s, f)]
            if (out := self.cache.get_fold(key)) is not None:
                self.waiting.discard((it, s, f))
                book.cached.add((s, f))
                self.record(book, s, f, out)
                recorded += 1
            elif not is_live(claim_of(self.cache, key).path):
                self.waiting.discard((it, s, f))
                job = book.jobs[(s, f)] = dataclasses.replace(book.jobs[(s, f)], claim=None)
                self.pending[self.start_job(job)] = (it, s, f)
        return recorded

    def start_job(self, job: FoldJob) -> Future:
        """Start one job: submitted to a submitting runner, else run as a batch of one."""
        return self.submit(job) if self.submit is not None else _done_future(self.runner([job])[0])

    def track(self, book: _Iteration, s: int, f: int, fut: Future) -> None:
        """Note that fold `f` of scope `s` runs (or ran) for `book`'s iteration."""
        book.submitted.add((s, f))
        self.pending[fut] = (book.it, s, f)

    def record(self, book: _Iteration, s: int, f: int, out: FoldOutput) -> None:
        """Keep the output; the fold's segments get their targets for the next iteration right away."""
        if self.cache is not None and (s, f) not in book.cached:
            out = self.cache.put_fold(book.keys[(s, f)], out)  # the stored one: equal for every reader
        book.outputs[(s, f)] = out
        if f >= len(self.plan.scopes[s].folds):  # a cross-fit half feeds the stage only
            return
        idx = self.fold_segments[s][f]
        q = out.posteriors[:len(idx)]
        book.next_targets[s][idx] = self.rule(q, self.y[idx], self.seg.utt[idx], alpha=book.next_alpha,
                                              epsilon=self.cfg.labels.epsilon, params=self.cfg.labels.params)
        if self.pipelined and book.it < self.last:
            self.start_ready_folds(book, s)

    def start_ready_folds(self, book: _Iteration, s: int) -> None:
        """Start each fold of scope `s` in the next iteration whose training folds are done in `book`."""
        assert self.submit is not None  # pipelined
        if book.it + 1 not in self.books:
            self.books[book.it + 1] = self.new_book(book.it + 1, book.next_targets)
        nxt = self.books[book.it + 1]
        for g in range(self.jobs_of(s)):
            needed_done = all((s, h) in book.outputs for h in self.needs(s, g))
            if (s, g) not in nxt.submitted and needed_done:
                # The job reads only the rows of the folds it needs, and those rows are final.
                job = self.job(nxt.it, s, g, book.next_targets[s])  # the job copies its rows
                self.track(nxt, s, g, self.cached_output(nxt, s, g, job) or self.start_job(nxt.jobs[(s, g)]))

    def posteriors(self, book: _Iteration) -> tuple[list[np.ndarray], np.ndarray]:
        """Per scope, its out-of-fold segment posteriors; and the posteriors the scores are taken from."""
        seg, k = self.seg, self.data.n_classes
        scope_oos = [np.zeros((seg.n_segments, k), dtype=np.float32) for _ in self.plan.scopes]
        eval_post = np.zeros((seg.n_segments, k), dtype=np.float32)
        for s, scope in enumerate(self.plan.scopes):  # in fold order, so sums do not depend on completion order
            for f in range(len(scope.folds)):
                out, idx = book.outputs[(s, f)], self.fold_segments[s][f]
                scope_oos[s][idx] = out.posteriors[:len(idx)]
                if len(scope.test):
                    eval_post[self.test_segments[s]] += out.posteriors[len(idx):] / len(scope.folds)
            if not len(scope.test):
                idx = seg.of_utterances(scope.train)
                eval_post[idx] = scope_oos[s][idx]
        return scope_oos, eval_post

    def segment_vectors(self, book: _Iteration, s: int) -> tuple[dict[int, np.ndarray], list[list[np.ndarray]]]:
        """What the utterance stage reads of scope `s` (`dsl.method.stages`): per training utterance its out-of-fold
        segment vectors, and per fold network the test utterances' vectors (in `scope.test` order).
        Posteriors as they are; embeddings standardised per network over its out-of-fold segments."""
        scope, offsets = self.plan.scopes[s], self.seg.offsets
        embedding = stage_input(self.cfg.stage) == "embedding"
        cross_fit = bool(self.stage_folds[s])  # the training vectors come from the cross-fit halves instead
        train: dict[int, np.ndarray] = {}
        views: list[list[np.ndarray]] = []

        def vectors(f: int, n: int) -> np.ndarray:
            out = book.outputs[(s, f)]
            if embedding and out.embeddings is None:
                raise RuntimeError(f"fold job ({book.it}, {s}, {f}) returned no embeddings for stage.input: "
                                   "embedding (a runner built for another config?)")
            return standardised(out.embeddings, n) if embedding else out.posteriors

        for f, fold in enumerate(scope.folds):  # in fold order, so the views' order does not depend on completion
            n = len(self.fold_segments[s][f])
            x = vectors(f, n)
            if not cross_fit:
                train.update(per_utterance(x[:n], offsets, fold))
            if len(scope.test):
                views.append(list(per_utterance(x[n:], offsets, scope.test).values()))
        for c, half in enumerate(self.stage_folds[s]):
            f = len(scope.folds) + c
            train.update(per_utterance(vectors(f, len(self.seg.of_utterances(half))), offsets, half))
        return train, views

    def condition_vectors(self, book: _Iteration, s: int) -> list[dict[str, dict[int, np.ndarray]]]:
        """Per fold network of scope `s` (in fold order), per test condition, its segment vectors of the utterances it
        scores under that condition (`dsl.robustness.conditions`), by utterance; embeddings standardised with the
        statistics of the same network's clean out-of-fold segments."""
        scope, offsets = self.plan.scopes[s], self.seg.offsets
        embedding = stage_input(self.cfg.stage) == "embedding"
        out = []
        for f, fold in enumerate(scope.folds):
            o, n = book.outputs[(s, f)], len(self.fold_segments[s][f])
            if o.condition_posteriors is None or (embedding and o.condition_embeddings is None):
                raise RuntimeError(f"fold job ({book.it}, {s}, {f}) returned no outputs under the test conditions")
            scored = scope.test if len(scope.test) else fold
            per_condition = {}
            for c, name in enumerate(o.condition_names):
                x = standardised(o.condition_embeddings[c], n, o.embeddings) if embedding else o.condition_posteriors[c]
                per_condition[name] = per_utterance(x, offsets, scored)
            out.append(per_condition)
        return out

    def stage_scores(self, book: _Iteration) -> tuple[UtteranceScores, list[float] | None, dict[str, UtteranceScores]]:
        """Utterance scores of the configured utterance stage (`dsl.method.stages`), under a held-out plan each
        scope's validation UA (a CV of the stage over its training utterances), which picks its iteration, and the
        scores under each test condition: the same fitted stage (trained on clean training utterances) scores the
        perturbed test utterances."""
        labels, k, cfg = self.data.labels, self.data.n_classes, self.cfg
        stage = make_stage(cfg.stage, k, self.rf_jobs, cfg.train.num_threads)
        names = self.conditions.names if self.conditions is not None else ()
        if self.plan.held_out:  # each scope's stage sees only its training utterances; their CV picks the iteration
            proba = np.zeros((self.data.n_utterances, k), dtype=np.float32)
            cond_proba = {name: np.zeros_like(proba) for name in names}
            val_ua: list[float] = []
            for s, scope in enumerate(self.plan.scopes):
                vectors, views = self.segment_vectors(book, s)
                train = [vectors[int(u)] for u in scope.train]
                tests = {"": views}
                if names:
                    per_fold = self.condition_vectors(book, s)
                    tests.update({name: [list(v[name].values()) for v in per_fold] for name in names})
                many = stage.fit_proba_many(train, labels[scope.train], tests, cfg.seed + s)
                proba[scope.test] = many.pop("")
                for name, p in many.items():
                    cond_proba[name][scope.test] = p
                groups = self.groups[scope.train] if self.groups is not None else None
                val_ua.append(stage.validation_ua(train, labels[scope.train], cfg.protocol.select_folds,
                                                  cfg.seed + s, groups))
            return (scores(labels, proba, self.fold_of, k), val_ua,
                    {name: scores(labels, p, self.fold_of, k) for name, p in cond_proba.items()})
        # transductive: the stage is cross-validated over all utterances, as in the paper
        vectors, _ = self.segment_vectors(book, 0)
        every = [vectors[u] for u in range(self.data.n_utterances)]
        proba, stage_fold = stage.cross_validated_proba(every, labels, cfg.protocol.eval_folds, cfg.seed, self.groups)
        conditions = {}
        if names:
            merged: dict[str, dict[int, np.ndarray]] = {name: {} for name in names}
            for per_condition in self.condition_vectors(book, 0):
                for name in names:
                    merged[name].update(per_condition[name])
            many = stage.cross_validated_many(every, labels, cfg.protocol.eval_folds, cfg.seed, self.groups,
                                              {name: [merged[name][u] for u in range(self.data.n_utterances)]
                                               for name in names})
            conditions = {name: scores(labels, p, stage_fold, k) for name, p in many.items()}
        return scores(labels, proba, stage_fold, k), None, conditions

    def scores(self, book: _Iteration) -> tuple[UtteranceScores, list[float] | None, dict[str, UtteranceScores], bool]:
        """`stage_scores`, through the step cache when there is one; True when the cache served them."""
        if self.cache is None or self.keys is None:
            return (*self.stage_scores(book), False)
        key = self.keys.scores_of([book.keys[sf] for sf in self.plan_order()])
        if (hit := self.cache.get_scores(key)) is not None:
            return (*hit, True)
        return (*self.cache.put_scores(key, *self.stage_scores(book)), False)

    def condition_results(self, book: _Iteration, conditions: dict[str, UtteranceScores]) -> dict[str, dict]:
        """What a result records per test condition (before the selected scores, which need the history)."""
        if not conditions:
            return {}
        seg = self.seg
        k = self.data.n_classes
        post = {name: np.zeros((seg.n_segments, k), dtype=np.float32) for name in conditions}
        for s, scope in enumerate(self.plan.scopes):  # each scored segment: the mean over the networks that score it
            for f in range(len(scope.folds)):
                out = book.outputs[(s, f)]
                idx = self.test_segments[s] if len(scope.test) else self.fold_segments[s][f]
                share = 1.0 / len(scope.folds) if len(scope.test) else 1.0
                for c, name in enumerate(out.condition_names):
                    post[name][idx] += out.condition_posteriors[c] * share
        right = {name: (np.argmax(p, axis=1) == self.seg_labels)[self.scored_segments] for name, p in post.items()}
        return {name: {"wa": sc.wa, "ua": sc.ua, "fold_wa": sc.fold_wa, "fold_ua": sc.fold_ua,
                       "confusion": sc.confusion, "segment_accuracy": float(np.mean(right[name])),
                       "predicted": [int(v) for v in sc.predictions]}
                for name, sc in conditions.items()}

    def finish(self, book: _Iteration, since: float) -> tuple[IterationResult, ChainState]:
        """Score a finished iteration; the state after it carries its next targets and the history."""
        _, eval_post = self.posteriors(book)
        sc, val_ua, cond_scores, scores_cached = self.scores(book)
        outputs = [book.outputs[(s, f)] for s, scope in enumerate(self.plan.scopes) for f in range(len(scope.folds))]
        changed, entropy, utt_entropy = book.label_stats  # type: ignore[misc]
        result = IterationResult(
            iteration=book.it, alpha=book.alpha, wa=sc.wa, ua=sc.ua, fold_wa=sc.fold_wa,
            fold_ua=sc.fold_ua, confusion=sc.confusion,
            segment_accuracy=float(np.mean((np.argmax(eval_post, axis=1) == self.seg_labels)[self.scored_segments])),
            changed_label_share=changed, target_entropy=entropy,
            epochs=float(np.mean([o.epochs for o in outputs])), seconds=time.perf_counter() - since,
            segments_per_second=float(np.mean([o.segments_per_second for o in outputs])), val_ua=val_ua,
            utterances=utterance_records(self.data.paths, self.data.labels, self.fold_of, sc.probabilities,
                                         utt_entropy),
            posteriors=eval_post, utterance_predictions=sc.predictions,
            utterance_probabilities=np.asarray(sc.probabilities, dtype=np.float32),
            conditions=self.condition_results(book, cond_scores),
            from_cache=scores_cached and len(book.cached) == self.n_jobs, cached_folds=len(book.cached),
            fold_trainings=self.n_jobs)
        history = self.state.history
        if val_ua is not None:
            so_far = [*history, result.to_dict()]
            picks, chosen = selected_scores(so_far, self.data.n_classes)
            result.selected_iterations, result.selected_wa, result.selected_ua = picks, chosen.wa, chosen.ua
            result.selector_agreement = selector_agreement(so_far)
            for name, entry in result.conditions.items():  # at the same picks: no condition chooses anything
                picked = selected_condition_scores(so_far, name, self.data.n_classes)
                entry["selected_wa"], entry["selected_ua"] = picked.wa, picked.ua
        if result.conditions:
            result.conditions = with_summaries(result.conditions)
        return result, ChainState(book.it + 1, book.next_targets, [*history, result.to_dict()])


def iterate_chain(cfg: ChainConfig, data: CorpusData, state: ChainState | None = None,
                  runner: Runner | None = None, show_progress: bool = True, rf_jobs: int | None = None,
                  step_cache: StepCache | None = None) -> Iterator[tuple[IterationResult, ChainState]]:
    """Run iterations `state.next_iteration .. cfg.iterations`, yielding each result and the state after it.

    With a runner that can `submit` single jobs to run concurrently (worker processes, Ray tasks) and a
    label rule that is local to an utterance (every built-in rule), fold f of iteration t+1 starts as soon
    as the other folds of iteration t are done:
    its training segments lie in those folds, so their new targets are already known. Results equal
    the iteration-by-iteration schedule exactly (each job carries its seed and reads only its training
    rows); 5 folds on 2 workers then keep both busy instead of leaving one idle for a sixth of every
    iteration. `IterationResult.seconds` is the wall time since the previous iteration finished.
    """
    yield from ChainIterator(cfg, data, state, runner, show_progress, rf_jobs, step_cache)


@dataclass
class ChainResult:
    """A whole chain. `reported()` is its headline by a rule fixed in advance (see `dsl.protocols.selection`)."""

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
                "protocol": {"name": pr.name, "leak_free": self.leak_free, "outer": outer_partition(pr), "folds": pr.folds,
                             "inner_folds": pr.inner_folds, "eval_folds": pr.eval_folds, "seed": self.config.seed},
                "environment": self.environment, "config": self.config.to_dict(),
                "label_names": list(self.label_names), "n_utterances": self.n_utterances,
                "n_segments": self.n_segments, "seconds": self.seconds, "skipped_files": self.skipped_files,
                "reported": self.reported() if self.iterations else None,
                "iterations": [r.to_dict() for r in self.iterations]}


RESULT_FORMAT = 2  # result JSON layout version (2: protocol, environment, per-utterance records)


def run_chain(cfg: ChainConfig, data: CorpusData, runner: Runner | None = None, show_progress: bool = True,
              on_iteration: Callable[[IterationResult], None] | None = None,
              step_cache: StepCache | None = None) -> ChainResult:
    """Run the whole chain (iteration 0 + `cfg.iterations` label updates) and collect the results."""
    start = time.perf_counter()
    results = []
    own = runner is None
    runner = runner or local_runner(data, cfg)
    try:
        for result, _ in iterate_chain(cfg, data, runner=runner, show_progress=show_progress, step_cache=step_cache):
            results.append(result)
            if on_iteration:
                on_iteration(result)
    finally:
        if own:
            runner.close()  # type: ignore[attr-defined]
    n_segments = len(results[0].posteriors) if results and results[0].posteriors is not None else 0
    return ChainResult(cfg, data.label_names, results, data.n_utterances, n_segments,
                       time.perf_counter() - start, dict(data.skipped), plan_leak_free(cfg.protocol))
