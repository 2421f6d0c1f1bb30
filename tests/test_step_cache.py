"""The chain-step cache (`dsl.execution.step_cache`): served steps equal computed ones, a changed recipe or code misses,
concurrent writers do not corrupt it, and a killed writer leaves no half entry."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dsl import ChainConfig, prepare_data, run_chain
from dsl.execution.fold_job import FoldOutput
from dsl.execution.step_cache import StepCache, StepKeys
from tests.support.data import TINY

FIELDS = ("wa", "ua", "fold_wa", "fold_ua", "confusion", "segment_accuracy", "changed_label_share", "target_entropy",
          "epochs", "val_ua", "selected_iterations", "selected_wa", "selected_ua", "utterances")


def _cfg(manifest, cache, **extra) -> ChainConfig:
    return ChainConfig(corpus="csv", data=str(manifest), cache_dir=str(cache)).replace(
        **{**TINY, "iterations": 1, "train.epochs": 3, **extra})


def _same(a, b) -> None:
    """Two iteration results carry the same numbers (everything but timing and the cache flag)."""
    for name in FIELDS:
        assert getattr(a, name) == getattr(b, name), name
    np.testing.assert_array_equal(a.posteriors, b.posteriors)
    np.testing.assert_array_equal(a.utterance_predictions, b.utterance_predictions)


@pytest.fixture(scope="module")
def tone_data(tone_corpus, feature_cache):
    cfg = _cfg(tone_corpus, feature_cache)
    return cfg, prepare_data(cfg, show_progress=False)


def test_cached_prefix_equals_computed_chain_and_a_longer_chain_reuses_it(tone_data, tmp_path) -> None:
    cfg, data = tone_data
    plain = run_chain(cfg, data, show_progress=False).iterations
    cache = StepCache(tmp_path / "steps")
    first = run_chain(cfg, data, show_progress=False, step_cache=cache).iterations
    assert [r.from_cache for r in first] == [False, False]
    again = run_chain(cfg, data, show_progress=False, step_cache=cache).iterations
    assert [r.from_cache for r in again] == [True, True]
    for a, b, c in zip(plain, first, again):
        _same(a, b)
        _same(a, c)
    # T=2 with the same rule and alphas: iterations 0 and 1 are the T=1 chain's, iteration 2 is new
    longer = run_chain(cfg.replace(iterations=2), data, show_progress=False, step_cache=cache).iterations
    assert [r.from_cache for r in longer] == [True, True, False]
    _same(longer[1], plain[1])
    assert cache.entries() == {"folds": 6, "scores": 3}


def test_iteration_zero_is_shared_by_every_rule_and_a_changed_recipe_misses(tone_data, tmp_path) -> None:
    cfg, data = tone_data
    cache = StepCache(tmp_path / "steps")
    run_chain(cfg, data, show_progress=False, step_cache=cache)
    bdsl = run_chain(cfg.replace(**{"labels.rule": "bdsl"}), data, show_progress=False, step_cache=cache).iterations
    assert [r.from_cache for r in bdsl] == [True, False]  # iteration 0 trains on the original labels either way
    other_alpha = run_chain(cfg.replace(**{"labels.alpha": 0.5}), data, show_progress=False, step_cache=cache)
    assert [r.from_cache for r in other_alpha.iterations] == [True, False]
    res = run_chain(cfg.replace(**{"train.lr": 1e-3, "iterations": 0}), data, show_progress=False, step_cache=cache)
    assert not res.iterations[0].from_cache  # another recipe: computed
    base = StepKeys.of(cfg, data)
    for change in ({"train.epochs": 2}, {"segments.hop": 3}, {"train.batch_size": 8}, {"backbone": "vgg19"},
                   {"train.precision": "bf16"}, {"train.aux": "mtl_aug"}, {"protocol.eval_folds": 3}):
        assert StepKeys.of(cfg.replace(**change), data).folds != base.folds, change
    acp = StepKeys.of(cfg.replace(**{"stage.name": "acp"}), data)
    assert acp.folds != base.folds  # the fold jobs then also return embeddings
    acp_posterior = StepKeys.of(cfg.replace(**{"stage.name": "acp", "stage.input": "posterior"}), data)
    assert acp_posterior.folds == base.folds and acp_posterior.scores != base.scores  # same folds, other stage
    # the seed is in the key twice: it seeds the forest, and each fold job carries a seed derived from it
    assert StepKeys.of(cfg.replace(seed=1), data).folds != base.folds


def test_key_covers_code_and_machine(tone_data, monkeypatch) -> None:
    cfg, data = tone_data
    import dsl.execution.step_cache as sc

    before = StepKeys.of(cfg, data)
    real = sc.code_fingerprint
    monkeypatch.setattr(sc, "code_fingerprint", lambda plugins=(): {**real(plugins), "machine": "another-cpu"})
    assert StepKeys.of(cfg, data).folds != before.folds
    monkeypatch.setattr(sc, "code_fingerprint", lambda plugins=(): {**real(plugins), "source": "edited"})
    assert StepKeys.of(cfg, data).scores != before.scores
    monkeypatch.setattr(sc, "code_fingerprint", real)
    assert StepKeys.of(cfg, data) == before
    # execution-only settings stay out of the key: the fold runner does not change a fold's numbers
    assert StepKeys.of(cfg.replace(**{"train.workers": 2}), data) == before
    assert StepKeys.of(cfg.replace(**{"train.num_threads": 2}), data) != before  # thread count may round differently


def _output(value: float) -> FoldOutput:
    return FoldOutput(np.full((4, 3), value, dtype=np.float32), 3, 2, 1.5, 100.0)


def test_first_writer_wins_and_both_see_its_entry(tmp_path) -> None:
    cache = StepCache(tmp_path)
    a = cache.put_fold("ab" * 20, _output(0.25))
    b = cache.put_fold("ab" * 20, _output(0.75))  # a second writer of the same step (e.g. another machine)
    np.testing.assert_array_equal(a.posteriors, b.posteriors)
    assert float(b.posteriors[0, 0]) == 0.25


def _chain_in_process(cfg_dict: dict, cache_dir: str, out: str) -> None:
    from dsl import prepare_data, run_chain
    from dsl.config import from_dict

    cfg = from_dict(cfg_dict)
    res = run_chain(cfg, prepare_data(cfg, show_progress=False), show_progress=False, step_cache=StepCache(cache_dir))
    np.save(out, np.stack([r.posteriors for r in res.iterations]))
    Path(out).with_suffix(".served").write_text(str(sum(r.cached_folds for r in res.iterations)))


def test_concurrent_trials_needing_the_same_steps_do_not_corrupt_the_cache(tone_data, tmp_path) -> None:
    cfg, data = tone_data
    cfg = cfg.replace(**{"train.epochs": 1})
    cache_dir = tmp_path / "steps"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_chain_in_process, args=(cfg.to_dict(), str(cache_dir), str(tmp_path / f"{i}.npy")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    cache = StepCache(cache_dir)
    assert cache.entries() == {"folds": 4, "scores": 2}  # one entry per step, however many wrote it
    assert not list(cache_dir.glob("*/*/.tmp-*"))
    a, b = np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy")
    np.testing.assert_array_equal(a, b)  # both trials carry the stored winner's numbers
    # each of the 4 fold trainings was trained by one process only (under its claim); the other's chain got it
    # from the cache, whether it was stored already or the chain waited for it while training other folds
    served = [int((tmp_path / f"{i}.served").read_text()) for i in range(2)]
    assert sum(served) == 4, served
    assert not list(cache_dir.glob("claims/*/*")), "claims are dropped once their steps are stored"
    served = run_chain(cfg, data, show_progress=False, step_cache=cache).iterations
    assert all(r.from_cache for r in served)
    np.testing.assert_array_equal(np.stack([r.posteriors for r in served]), a)


WRITER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from dsl.execution.fold_job import FoldOutput
    from dsl.execution.step_cache import StepCache

    def stall(*a, **k):  # the entry's bytes are on disk under a temporary name: be killed before the rename
        print("written", flush=True)
        time.sleep(600)

    os.link = stall
    StepCache(sys.argv[1]).put_fold(sys.argv[2], FoldOutput(np.ones((50000, 7), np.float32), 1, 1, 1.0, 1.0))
""")


def test_killed_writer_leaves_no_half_entry(tmp_path) -> None:
    key = "cd" * 20
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), key], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    cache = StepCache(tmp_path)
    assert cache.get_fold(key) is None  # no entry: the step is computed again
    assert len(list(tmp_path.glob("folds/*/.tmp-*"))) == 1  # the dead writer's bytes, under a name nothing reads
    assert cache.prune_temporaries(older_than_s=0) == 1
    assert cache.put_fold(key, _output(0.5)).epochs == 3  # and the step can then be stored


def test_unreadable_entry_is_recomputed_with_a_warning_naming_it(tmp_path) -> None:
    cache = StepCache(tmp_path)
    key = "ef" * 20
    cache.put_fold(key, _output(0.5))
    path = next(tmp_path.glob("folds/*/*.npz"))
    path.write_bytes(path.read_bytes()[:100])  # e.g. a disk that filled up under another tool
    with pytest.warns(UserWarning, match=path.name):
        assert cache.get_fold(key) is None  # computed again, and the broken entry is removed ...
    assert cache.put_fold(key, _output(0.75)).posteriors[0, 0] == 0.75  # ... so the new result can be kept
    assert cache.get_fold(key) is not None


def test_key_covers_the_unlabelled_corpus_of_mtl_aug(tone_data) -> None:
    """`train.aux_data`'s frames are part of the data's hash: other (or no) unlabelled frames never hit an MTL-AUG
    entry, its path alone does not matter, and without MTL-AUG the unlabelled frames do not split the cache."""
    import dataclasses

    cfg, data = tone_data
    rng = np.random.default_rng(0)
    unlabelled = rng.normal(size=(81, data.frames.shape[1])).astype(np.float32)
    offsets = np.array([0, 40, 80], dtype=np.int64)
    with_aux = dataclasses.replace(data, aux_frames=unlabelled, aux_offsets=offsets)
    changed = dataclasses.replace(data, aux_frames=unlabelled + 1.0, aux_offsets=offsets)
    mtl = cfg.replace(**{"train.aux": "mtl_aug", "train.aux_data": "/unlabelled"})
    keys = {name: StepKeys.of(mtl, d).folds for name, d in (("none", data), ("aux", with_aux), ("changed", changed))}
    assert len(set(keys.values())) == 3, keys
    assert StepKeys.of(mtl.replace(**{"train.aux_data": "/moved"}), with_aux).folds == keys["aux"]
    assert StepKeys.of(cfg, with_aux) == StepKeys.of(cfg, data)  # aux none: the unlabelled frames are never read


def test_a_claim_is_taken_over_only_when_its_owner_is_gone(tmp_path) -> None:
    import json
    import socket
    import time

    from dsl.execution import step_claims
    from dsl.execution.step_claims import StepClaim, try_claim

    claim = StepClaim(str(tmp_path), "aa" * 20)
    assert try_claim(claim) and not try_claim(claim)  # held by this (live) process
    claim.path.unlink()
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"host": socket.gethostname(), "pid": int(done.stdout), "since": time.time()}
    claim.path.write_text(json.dumps(dead))
    assert try_claim(claim)  # its owner on this host has exited
    assert json.loads(claim.path.read_text())["pid"] == os.getpid()
    other_node = {"host": "some-other-node", "pid": 1, "since": time.time()}
    claim.path.write_text(json.dumps(other_node))
    assert not try_claim(claim)  # another node's claim, touched recently: alive as far as we can tell
    old = time.time() - step_claims.STALE_AFTER_S - 1
    os.utime(claim.path, (old, old))
    assert try_claim(claim)  # no heartbeat for too long: taken over
    claim.path.write_text("{not json")  # a damaged claim file: live while young, taken over once stale
    assert not try_claim(claim)
    os.utime(claim.path, (old, old))
    assert try_claim(claim)


def _fold_keys(cache_dir: Path) -> list[str]:
    return sorted(p.stem for p in cache_dir.glob("folds/*/*.npz"))


@pytest.mark.parametrize("owner_stores_it", [True, False])
def test_a_chain_waits_for_a_step_another_process_holds(tone_data, tmp_path, owner_stores_it) -> None:
    """A fold whose step another process has claimed is not trained: the chain trains its other folds, then
    takes the entry when it appears; if the claim is dropped without an entry, the chain trains the fold."""
    import shutil
    import threading
    import time

    from dsl.execution.step_claims import StepClaim, try_claim

    cfg, data = tone_data
    cfg = cfg.replace(**{"iterations": 0, "train.epochs": 1})
    reference = run_chain(cfg, data, show_progress=False, step_cache=StepCache(tmp_path / "ref")).iterations[0]
    keys = _fold_keys(tmp_path / "ref")
    held = keys[0]
    claim = StepClaim(str(tmp_path / "steps"), held)
    assert try_claim(claim)  # "another process" holds fold `held` (this process: alive)
    results = []
    chain = threading.Thread(target=lambda: results.append(
        run_chain(cfg, data, show_progress=False, step_cache=StepCache(tmp_path / "steps")).iterations[0]))
    chain.start()
    deadline = time.time() + 120
    while _fold_keys(tmp_path / "steps") != keys[1:] and time.time() < deadline:
        time.sleep(0.2)
    assert _fold_keys(tmp_path / "steps") == keys[1:]  # the other folds are trained ...
    time.sleep(1.5)
    assert chain.is_alive()  # ... and the chain waits for the claimed one
    if owner_stores_it:
        entry = next((tmp_path / "ref").glob(f"folds/*/{held}.npz"))
        target = tmp_path / "steps" / "folds" / held[:2] / entry.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry, target)
    claim.path.unlink()
    chain.join(120)
    assert not chain.is_alive() and results
    result = results[0]
    assert result.cached_folds == (1 if owner_stores_it else 0)
    _same(result, reference)
