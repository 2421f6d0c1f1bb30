"""Leak tests that can fail, on synthetic tones: `dsl.studies.leakcheck` rotates the labels of one outer test fold
(or held-out speaker), reruns, and compares bit for bit, per iteration, the outer fold, prediction, stage
probabilities and segment posteriors of those utterances, and their fold's validation UA and selected
iteration; the other folds must move. The plan is the protocol's own (label-free by default), not fixed first.

The same check must fail on the paper's transductive `stratified` protocol, on a leak-free protocol whose outer
folds are stratified by label, on a plugin protocol that reads test labels, and on a planted leak of 1e-4 (and
1e-6) on the true class of the test posteriors. The default run covers seed 0; `slow` adds seeds 1 and 2 and the
other paths (ACP under nested, MTL-AUG with train.aux_data, pooled workers, the step cache, the matched stage
inputs; cross_corpus is in tests/test_cross_corpus.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from dsl import ChainConfig, prepare_data
from dsl.config import ConfigError
from dsl.studies.leakcheck import LeakCheck, Snapshot, compare, leakcheck
from tests.support.data import write_tone

TINY = {"segments.hop": 4, "train.epochs": 2, "train.batch_size": 16, "train.lr": 3e-3, "protocol.folds": 2,
        "protocol.eval_folds": 2, "protocol.inner_folds": 2, "protocol.select_folds": 2, "iterations": 1,
        "train.num_threads": 1, "train.workers": 1}


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """24 tone utterances, 3 'emotions' (pitch ranges) that overlap a little, 4 speakers, as a CSV manifest."""
    root = tmp_path_factory.mktemp("leak-tones")
    rng = np.random.default_rng(1)
    lines = ["path,label,speaker"]
    for c, base in enumerate((300.0, 500.0, 800.0)):
        for i in range(8):
            name = f"c{c}_{i}.wav"
            write_tone(root / name, seconds=0.5 + 0.05 * i, freq=base * (1 + 0.5 * rng.random()))
            lines.append(f"{name},class{c},spk{i % 4}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def _check(manifest, cache, seed: int = 0, **extra) -> LeakCheck:
    cfg = ChainConfig(corpus="csv", data=str(manifest), cache_dir=str(cache), seed=seed).replace(**{**TINY, **extra})
    return leakcheck(cfg, prepare_data(cfg, show_progress=False))


def _clean(check: LeakCheck) -> None:
    assert check.leak_free and check.outer == "balanced"
    assert check.exit_code == 0, check.format()
    assert 0 < len(check.relabelled) < 24
    assert all(c.others_moved for c in check.iterations)  # the relabelling reached every iteration's other folds


LEAK_FREE = {"refinery": {"protocol.name": "refinery"},
             "nested": {"protocol.name": "nested"},
             "speaker": {"protocol.name": "speaker", "protocol.folds": 4}}  # leave-one-speaker-out
# noisy and attacked test utterances (dsl.robustness): their predictions must not move either
CONDITIONS = {"eval.noise.types": "white", "eval.noise.snr": "5", "eval.adversarial.attacks": "fgsm",
              "eval.adversarial.eps": "0.3"}


@pytest.mark.parametrize("name", list(LEAK_FREE))
def test_leak_free_protocols_move_nothing_of_the_relabelled_fold(tones, feature_cache, name) -> None:
    _clean(_check(tones, feature_cache, **LEAK_FREE[name]))


def test_predictions_under_test_conditions_do_not_move_either(tones, feature_cache) -> None:
    """eval.noise / eval.adversarial: the relabelled fold's predictions under every test condition are compared
    too (and must stay), while the other folds' move."""
    check = _check(tones, feature_cache, **{"protocol.name": "refinery", **CONDITIONS})
    _clean(check)
    assert check.conditions == ["white_5dB", "fgsm_eps0.3"]
    assert all(c.conditions_moved == 0 for c in check.iterations)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", list(LEAK_FREE))
def test_leak_free_protocols_on_more_seeds(tones, feature_cache, name, seed) -> None:
    _clean(_check(tones, feature_cache, seed, **LEAK_FREE[name]))


PATHS = {"nested-acp": {"protocol.name": "nested", "stage.name": "acp", "stage.epochs": 5},
         "refinery-cross-fit": {"protocol.name": "refinery", "stage.fit_on": "cross_fit"},
         "nested-each-view": {"protocol.name": "nested", "stage.test_views": "each"},
         "nested-each-view-conditions": {"protocol.name": "nested", "stage.test_views": "each", **CONDITIONS},
         "refinery-two-workers": {"protocol.name": "refinery", "train.workers": 2},
         "refinery-wdsl-3-iterations": {"protocol.name": "refinery", "iterations": 3}}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PATHS))
def test_leak_free_paths(tones, feature_cache, name) -> None:
    _clean(_check(tones, feature_cache, **PATHS[name]))


@pytest.mark.slow
def test_mtl_aug_with_unlabelled_aux_data_is_leak_free(tones, feature_cache, tmp_path) -> None:
    aux = tmp_path / "unlabelled"
    aux.mkdir()
    for i in range(4):
        write_tone(aux / f"u{i}.wav", seconds=0.6, freq=350.0 + 150 * i)
    _clean(_check(tones, feature_cache, **{"protocol.name": "refinery", "train.aux": "mtl_aug",
                                           "train.aux_data": str(aux)}))


@pytest.mark.slow
def test_the_step_cache_serves_no_step_of_the_original_labels_to_the_relabelled_run(tones, feature_cache,
                                                                                     tmp_path) -> None:
    from dsl.execution.step_cache import StepCache

    cfg = ChainConfig(corpus="csv", data=str(tones), cache_dir=str(feature_cache)).replace(
        **{**TINY, "protocol.name": "nested"})
    data = prepare_data(cfg, show_progress=False)
    cache = StepCache(tmp_path / "steps")
    first = leakcheck(cfg, data, step_cache=cache)  # fills the cache with both runs' steps
    again = leakcheck(cfg, data, step_cache=cache)  # every step served from the cache
    _clean(first)
    _clean(again)
    assert [c.others_moved for c in again.iterations] == [c.others_moved for c in first.iterations]


def test_stratified_is_transductive_and_the_check_sees_it(tones, feature_cache) -> None:
    check = _check(tones, feature_cache, **{"protocol.name": "stratified"})
    assert not check.leak_free and check.exit_code == 1
    assert check.iterations[0].predicted_moved or check.iterations[0].proba_moved
    assert check.first_leak().startswith("iteration 0: ")


@pytest.mark.slow
def test_a_label_stratified_outer_partition_is_caught(tones, feature_cache) -> None:
    """`protocol.outer: stratified` reads every label, the test fold's too: relabelling it moves utterances
    between folds, which is a path from a test label to its score."""
    check = _check(tones, feature_cache, **{"protocol.name": "refinery", "protocol.outer": "stratified"})
    assert check.outer == "stratified" and check.exit_code == 1
    assert check.iterations[0].fold_moved > 0


def test_a_plugin_protocol_that_reads_test_labels_fails_the_cli(tones, feature_cache, capsys) -> None:
    from sweeps.cli import main

    sets = [f"{k}={v}" for k, v in TINY.items() if k not in ("iterations", "protocol.folds")]
    argv = ["leakcheck", "--corpus", "csv", "--data", str(tones), "--cache-dir", str(feature_cache),
            "--protocol", "leaky_refinery", "--folds", "2", "--iterations", "0", "-q",
            "--set", "plugins=[tests.support.leaky_protocol]", *[a for s in sets for a in ("--set", s)]]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "registered leak_free: true" in out and "LEAK: iteration 0: " in out and "outer fold" in out


@pytest.mark.parametrize("size", [1e-4, 1e-6])
def test_a_planted_leak_on_the_test_posteriors_is_caught(tones, feature_cache, monkeypatch, size) -> None:
    """A fold job that adds `size` to the posterior of each predicted segment's true class (reading the labels
    it must not read) under refinery: the check sees the relabelled fold's segment posteriors move."""
    import dsl.execution.fold_job as fold_job

    honest = fold_job._train_and_predict

    def leaky(job, data, cfg, segments):
        out = honest(job, data, cfg, segments)
        seg = segments.of_utterances(job.predict_utterances)
        out.posteriors[np.arange(len(seg)), data.labels[segments.utt[seg]]] += size
        return out

    monkeypatch.setattr(fold_job, "_train_and_predict", leaky)
    check = _check(tones, feature_cache, **{"protocol.name": "refinery", "iterations": 0})
    assert check.exit_code == 1, check.format()
    first = check.iterations[0]
    assert first.segments_moved == len(check.relabelled)
    assert first.max_segment_change == pytest.approx(size, rel=0.05)  # float32 rounding
    assert "segment posteriors moved by up to" in check.first_leak()


def _snap(it: int, proba: np.ndarray) -> Snapshot:
    n = len(proba)
    return Snapshot(it, np.array([0, 0, 1, 1][:n]), proba.argmax(axis=1), proba.astype(np.float32),
                    proba.astype(np.float32), [0.5, 0.5], [0, 0])


def test_compare_refuses_runs_of_different_lengths_and_sees_tiny_moves() -> None:
    p = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5], [0.2, 0.8]])
    mask, files, seg_utt = np.array([True, True, False, False]), ["a", "b", "c", "d"], np.arange(4)
    with pytest.raises(ValueError, match="2 and 1 iterations"):
        compare([_snap(0, p), _snap(1, p)], [_snap(0, p)], mask, files, seg_utt)
    q = p.copy()
    q[1, 0] += 1e-7  # float32 still tells 0.3 from 0.3 + 1e-7
    (c,) = compare([_snap(0, p)], [_snap(0, q)], mask, files, seg_utt)
    assert c.leaked and c.proba_moved == 1 and c.predicted_moved == 0 and c.others_moved == 0
    assert c.first.startswith("b: probabilities moved")
    (c,) = compare([_snap(0, p)], [_snap(0, p)], mask, files, seg_utt)
    assert not c.leaked and c.first is None


def test_the_subset_keeps_the_first_speakers_and_caps_grouped_folds() -> None:
    from dsl.data.corpora import Corpus
    from dsl.studies.leakcheck import fitted_config, subset_corpus

    corpus = Corpus("x", tuple(f"/c/{i}.wav" for i in range(12)), np.arange(12) % 3, ("a", "b", "c"),
                    tuple(f"s{i % 6}" for i in range(12)))
    cfg = ChainConfig().replace(**{"protocol.name": "speaker", "protocol.folds": 5})
    sub, text = subset_corpus(corpus, cfg, 4)
    assert sorted(set(sub.speakers)) == ["s0", "s1", "s2", "s3"] and len(sub.paths) == 8
    assert text.startswith("4 speaker(s) (s0, s1, s2, s3), 8 of 12 utterances")
    fitted = fitted_config(cfg, sub).protocol
    assert fitted.folds == 4 and fitted.inner_folds == 3  # one outer fold per speaker at most
    assert fitted.eval_folds == 2  # the subset's smallest class has 2 utterances: the forest CV gets 2 folds
    three, _ = subset_corpus(corpus, cfg, 3)
    fitted = fitted_config(cfg, three).protocol  # 2 speakers left in an outer training set: 2 inner folds
    assert (fitted.folds, fitted.inner_folds) == (3, 2)
    with pytest.raises(ConfigError, match="at least 3 speakers"):
        fitted_config(cfg, subset_corpus(corpus, cfg, 2)[0])
    refinery = cfg.replace(**{"protocol.name": "refinery"})
    assert fitted_config(refinery, sub).protocol.folds == 5  # utterance-level folds are not capped
    from dsl.studies.leakcheck import DEFAULT_SPEAKERS
    from sweeps.cli.app import build_parser

    assert build_parser().parse_args(["leakcheck"]).speakers == DEFAULT_SPEAKERS  # the CLI's default is the study's
    assert len(subset_corpus(corpus, cfg, 0)[0].paths) == 12
