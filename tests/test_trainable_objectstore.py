"""Frames reach trials and fold tasks through Ray's object store: zero-copy, read-only, never duplicated.

Also: the Ray-task fold runner gives the same chain as the in-process runner, and a sweep whose
trials run their folds as parallel tasks in a placement group completes.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from dsl.config import ChainConfig
from dsl.data.bundle import CorpusData
from tests.support.sweep import tiny_data, tiny_sweep

pytestmark = pytest.mark.slow


def _synthetic(n_utt: int = 16, frames_per_utt: int = 60, seed: int = 0) -> CorpusData:
    rng = np.random.default_rng(seed)
    labels = np.arange(n_utt) % 2
    frames = rng.normal(size=(n_utt * frames_per_utt + 1, 64)).astype(np.float32)
    for u, y in enumerate(labels):  # make the two classes separable
        frames[u * frames_per_utt:(u + 1) * frames_per_utt, :8] += 2.0 * y
    return CorpusData(frames=frames, frame_offsets=np.arange(n_utt + 1, dtype=np.int64) * frames_per_utt,
                      labels=labels.astype(np.int64), speakers=np.array([f"s{u % 4}" for u in range(n_utt)]),
                      label_names=("a", "b"), paths=tuple(f"u{u}.wav" for u in range(n_utt)))


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _probe(config: dict, frames: np.ndarray, meta) -> None:
    import ray
    from ray import tune

    from trainables.shared_data import attach, is_shared_view

    base, depth = frames, 0
    while isinstance(base, np.ndarray) and base.base is not None:
        base, depth = base.base, depth + 1
    data = attach(frames, meta)
    tune.report({"writeable": frames.flags.writeable, "owndata": frames.flags.owndata,
                 "is_shared_view": is_shared_view(frames), "root_is_ndarray": isinstance(base, np.ndarray),
                 "root_type": type(base).__name__, "checksum": float(frames.astype(np.float64).sum()),
                 "attached_same": data.frames is frames, "meta_has_ref": isinstance(meta.frames_ref, ray.ObjectRef),
                 "write_blocked": _write_blocked(frames)})


def _write_blocked(arr: np.ndarray) -> bool:
    try:
        arr[0, 0] = 1.0
    except ValueError:
        return True
    return False


def test_trial_frames_are_the_object_store_buffer(ray_local, tmp_path) -> None:
    from ray import tune

    from trainables.shared_data import with_corpus

    data = _synthetic()
    tuner = tune.Tuner(with_corpus(_probe, data),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="probe", verbose=0))
    result = tuner.fit()[0]
    m = result.metrics
    assert m["writeable"] is False and m["owndata"] is False and m["is_shared_view"] is True
    assert m["write_blocked"] is True
    assert m["root_is_ndarray"] is False, m["root_type"]  # memory owned by the object store, not a numpy copy
    assert m["checksum"] == pytest.approx(float(data.frames.astype(np.float64).sum()))
    assert m["attached_same"] is True and m["meta_has_ref"] is True


def test_ray_fold_runner_matches_local_runner(ray_local) -> None:
    from dsl.pipeline.chain import iterate_chain
    from trainables.context import TrialResources
    from trainables.fold_runner import ray_runner
    from trainables.shared_data import share_corpus

    data = _synthetic()
    cfg = ChainConfig().replace(**{"iterations": 0, "labels.rule": "bdsl", "segments.hop": 8,
                                   "protocol.folds": 2, "protocol.eval_folds": 2,
                                   "train.epochs": 1, "train.num_threads": 1, "train.workers": 1})
    _, meta = share_corpus(data)
    remote = [r for r, _ in iterate_chain(cfg, data, runner=ray_runner(meta, cfg, TrialResources(cpu=1)),
                                          show_progress=False)]
    local = [r for r, _ in iterate_chain(cfg, data, show_progress=False)]
    for a, b in zip(remote, local):
        np.testing.assert_allclose(a.posteriors, b.posteriors, atol=1e-6)
        assert (a.wa, a.ua, a.fold_ua) == (b.wa, b.ua, b.fold_ua)


def test_sweep_with_parallel_fold_tasks(tmp_path_factory: pytest.TempPathFactory) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    from sweeps.search.launcher import run_sweep
    from sweeps.search.spec import parse_sweep

    data, cache = tiny_data(tmp_path_factory)  # or skip: no EmoDB
    tmp = tmp_path_factory.mktemp("folds")
    raw = tiny_sweep("fold_tasks", data, cache, tmp / "ray_results", num_samples=1, max_concurrent=1,
                     resources={"cpu": 0.5, "fold_workers": 2, "head_cpu": 0.5},
                     search={"rule": ["bdsl"], "iterations": 0})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSL_PROGRESS", "0")
        out = run_sweep(parse_sweep(raw), tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    assert not out.interrupted and out.errors == 0
    assert [r.status for r in out.rows] == ["done"] and out.rows[0].iterations_done == 1


def test_aux_data_frames_travel_by_reference_zero_copy(ray_local) -> None:
    """`train.aux_data`'s frames go into the object store once, next to the corpus's, and a fold task attaches
    a read-only view of them (never re-extracted, never copied)."""
    import dataclasses

    from trainables.shared_data import attach, is_shared_view, share_corpus

    data = _synthetic()
    aux = np.arange(41 * 64, dtype=np.float32).reshape(41, 64)
    data = dataclasses.replace(data, aux_frames=aux, aux_offsets=np.array([0, 20, 40], dtype=np.int64))
    ref, meta = share_corpus(data)

    @ray_local.remote
    def task(frames, meta):
        got = attach(frames, meta)
        return is_shared_view(got.aux_frames), float(got.aux_frames.astype(np.float64).sum()), got.aux_offsets.tolist()

    shared, total, offsets = ray_local.get(task.remote(ref, meta))
    assert shared and total == float(aux.astype(np.float64).sum()) and offsets == [0, 20, 40]
    assert attach(ray_local.get(ref), dataclasses.replace(meta, aux_ref=None)).aux_frames is None
