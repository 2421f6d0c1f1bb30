"""Fold scheduling: the next iteration's folds start early when the rule is local, with identical results;
runners stop cleanly; the batcher's per-batch normalisation equals a normalised copy of the corpus."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
import torch

from dsl import ChainConfig, prepare_data, run_chain
from dsl.method.rules import RULES, register_rule
from dsl.pipeline.chain import FoldJob, FoldOutput, iterate_chain, run_fold_job
from dsl.training.train import SegmentBatcher
from tests.support.data import TINY

FAKE_SECONDS = 0.3


def _cfg(manifest, cache, **extra) -> ChainConfig:
    return ChainConfig(corpus="csv", data=str(manifest), cache_dir=str(cache)).replace(**{**TINY, **extra})


class BatchOnly:
    """A runner without `submit`: the chain must run it iteration by iteration."""

    def __init__(self, data, cfg):
        self.data, self.cfg = data, cfg

    def __call__(self, jobs):
        return [run_fold_job(j, self.data, self.cfg) for j in jobs]


def test_pipelined_chain_equals_iteration_by_iteration(tone_corpus, feature_cache) -> None:
    cfg = _cfg(tone_corpus, feature_cache, **{"protocol.folds": 3, "train.workers": 2, "train.epochs": 3})
    data = prepare_data(cfg, show_progress=False)
    pipelined = run_chain(cfg, data, show_progress=False).iterations
    batch = run_chain(cfg, data, runner=BatchOnly(data, cfg), show_progress=False).iterations
    assert [r.iteration for r in pipelined] == [0, 1, 2]
    for a, b in zip(pipelined, batch):
        np.testing.assert_allclose(a.posteriors, b.posteriors, atol=1e-6)
        assert (a.ua, a.wa, a.changed_label_share) == (b.ua, b.wa, b.changed_label_share)


class FakeWork:
    """Two 'workers' (threads); each job sleeps and returns posteriors derived from its seed.

    Logs ('submit' | 'done', iteration, fold) so a test can see when next-iteration jobs started."""

    def __init__(self, data, n_segments_of):
        self.pool = ThreadPoolExecutor(2)
        self.data, self.n_segments_of = data, n_segments_of
        self.log: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()

    def _run(self, job: FoldJob) -> FoldOutput:
        time.sleep(FAKE_SECONDS)
        rng = np.random.default_rng(job.seed)
        p = rng.random((self.n_segments_of(job.predict_utterances), self.data.n_classes)).astype(np.float32) + 0.1
        with self.lock:
            self.log.append(("done", job.iteration, job.fold))
        return FoldOutput(p / p.sum(axis=1, keepdims=True), 1, 1, FAKE_SECONDS, 1.0)

    def _submit(self, job: FoldJob) -> Future:
        with self.lock:
            self.log.append(("submit", job.iteration, job.fold))
        return self.pool.submit(self._run, job)

    def __call__(self, jobs):
        return [f.result() for f in [self._submit(j) for j in jobs]]

    def close(self) -> None:
        self.pool.shutdown()


class SubmittingFake(FakeWork):
    def submit(self, job: FoldJob) -> Future:
        return self._submit(job)


@pytest.fixture(scope="module")
def nonlocal_rule():
    name = "test_corpus_mean"
    if name not in RULES:
        @register_rule(name, local=False)
        def corpus_mean(q, y, utt):
            """New target = the corpus-wide mean posterior (needs every fold before any update)."""
            return np.repeat(q.mean(axis=0, keepdims=True), len(q), axis=0)
    return name


@pytest.mark.parametrize("rule", ["wdsl", "nonlocal"])
def test_next_iteration_starts_early_only_for_local_rules(tone_corpus, feature_cache, rule, nonlocal_rule) -> None:
    cfg = _cfg(tone_corpus, feature_cache, **{"protocol.folds": 5, "iterations": 1,
                                              "labels.rule": nonlocal_rule if rule == "nonlocal" else rule})
    data = prepare_data(cfg, show_progress=False)
    from dsl.data.segments import build_segments

    seg = build_segments(data.frame_offsets, cfg.segments, warn=False)
    def n_segments_of(utts):
        return len(seg.of_utterances(utts))

    fake = SubmittingFake(data, n_segments_of)
    results = [r for r, _ in iterate_chain(cfg, data, runner=fake, show_progress=False)]
    fake.close()
    assert [r.iteration for r in results] == [0, 1]
    log = fake.log
    last_done_0 = max(i for i, e in enumerate(log) if e[0] == "done" and e[1] == 0)
    first_submit_1 = min(i for i, e in enumerate(log) if e[0] == "submit" and e[1] == 1)
    if rule == "wdsl":  # 5 folds on 2 workers: fold 4 of iteration 1 needs folds 0-3 of iteration 0 only
        assert first_submit_1 < last_done_0, log
        assert log[first_submit_1] == ("submit", 1, 4), log
    else:
        assert first_submit_1 > last_done_0, log
    batch = FakeWork(data, n_segments_of)  # no `submit`: iteration by iteration, same numbers
    again = [r for r, _ in iterate_chain(cfg, data, runner=batch, show_progress=False)]
    batch.close()
    assert first_submit_1 < len(log) and all(e[1] == 0 for e in batch.log[:10])
    for a, b in zip(results, again):
        np.testing.assert_array_equal(a.posteriors, b.posteriors)
        assert a.ua == b.ua


class InProcessFake(SubmittingFake):
    """Trains in the caller's thread, as `LocalRunner` with one worker: `submit` returns a finished future."""

    concurrent = False

    def submit(self, job: FoldJob) -> Future:
        with self.lock:
            self.log.append(("submit", job.iteration, job.fold))
        fut: Future = Future()
        fut.set_result(self._run(job))
        return fut


def test_an_in_process_runner_reports_each_iteration_before_training_the_next(tone_corpus, feature_cache) -> None:
    """Starting iteration t+1's folds early gains nothing when they train in the caller's thread; it would only
    delay iteration t's report, and a scheduler that stops the trial there would have paid for t+1."""
    from dsl.data.segments import build_segments
    from dsl.execution.fold_runners import LocalRunner

    cfg = _cfg(tone_corpus, feature_cache, **{"protocol.folds": 3, "iterations": 2})
    data = prepare_data(cfg, show_progress=False)
    seg = build_segments(data.frame_offsets, cfg.segments, warn=False)
    fake = InProcessFake(data, lambda utts: len(seg.of_utterances(utts)))
    for result, _ in iterate_chain(cfg, data, runner=fake, show_progress=False):
        assert max(e[1] for e in fake.log) == result.iteration, fake.log  # nothing of the next iteration yet
    fake.close()
    assert not LocalRunner(data, cfg.replace(**{"train.workers": 1})).concurrent
    assert LocalRunner(data, cfg.replace(**{"train.workers": 2})).concurrent


def test_local_runner_close_kills_a_running_fold(tone_corpus, feature_cache) -> None:
    """A chain stopped early (scheduler, Ctrl+C) must not wait for a fold that is still training."""
    from dsl.execution.fold_runners import LocalRunner

    cfg = _cfg(tone_corpus, feature_cache, **{"train.workers": 2, "train.epochs": 100_000, "train.patience": 100_000})
    data = prepare_data(cfg, show_progress=False)
    runner = LocalRunner(data, cfg)
    gen = iterate_chain(cfg, data, runner=runner, show_progress=False)
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            next(gen, None)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    deadline = time.time() + 120
    while runner._pool is None or not runner._futures or not any(f.running() for f in runner._futures):
        assert time.time() < deadline, "no fold started"
        time.sleep(0.2)
    time.sleep(2)  # inside fit by now
    procs = list(runner._pool._processes.values())
    start = time.perf_counter()
    runner.close()
    assert time.perf_counter() - start < 60
    assert all(p.exitcode is not None for p in procs), [(p.pid, p.exitcode) for p in procs]
    t.join(timeout=30)
    assert not t.is_alive() and errors and "BrokenProcessPool" in type(errors[0]).__name__


def test_batcher_normalises_per_batch_like_a_normalised_copy() -> None:
    rng = np.random.default_rng(0)
    frames = rng.normal(3.0, 2.0, (200, 16)).astype(np.float32)
    mean, std = frames.mean(axis=0), frames.std(axis=0)
    rows = torch.from_numpy(np.stack([np.arange(s, s + 8) for s in range(0, 190, 7)]).astype(np.int64))
    copy = SegmentBatcher(torch.from_numpy((frames - mean) / std), channels_last=True)(rows)
    shared = torch.from_numpy(frames)
    per_batch = SegmentBatcher(shared, channels_last=True, mean=mean, std=std)(rows)
    assert torch.equal(copy, per_batch) and per_batch.shape == (len(rows), 1, 16, 8)
    assert torch.equal(shared, torch.from_numpy(frames))  # the shared frames are not modified
