"""Fold plans split at the utterance level; held-out scopes never train on their test utterances."""
from __future__ import annotations

import numpy as np
import pytest

from dsl.config import ProtocolSpec
from dsl.protocols.plans import PROTOCOLS, make_plan

LABELS = np.repeat(np.arange(4), 12)
SPEAKERS = np.tile(np.array([f"s{i}" for i in range(6)]), 8)


def _check_partition(folds, universe):
    joined = np.concatenate(folds)
    assert len(joined) == len(np.unique(joined)) == len(universe)
    assert set(joined) == set(universe)


def test_stratified_one_scope_partitions_everything() -> None:
    plan = make_plan(LABELS, SPEAKERS, ProtocolSpec("stratified", folds=4, outer="stratified"), seed=0)
    (scope,) = plan.scopes
    _check_partition(scope.folds, np.arange(len(LABELS)))
    for f in scope.folds:
        assert np.all(np.bincount(LABELS[f], minlength=4) == 3)  # stratified
    assert len(scope.test) == 0 and not plan.speaker_grouped


def test_speaker_transductive_folds_never_share_a_speaker() -> None:
    plan = make_plan(LABELS, SPEAKERS, ProtocolSpec("speaker_transductive", folds=3), seed=0)
    (scope,) = plan.scopes
    _check_partition(scope.folds, np.arange(len(LABELS)))
    spk = [set(SPEAKERS[f]) for f in scope.folds]
    assert all(not (a & b) for i, a in enumerate(spk) for b in spk[i + 1:])
    assert not plan.leak_free and plan.speaker_grouped
    loso = make_plan(LABELS, SPEAKERS, ProtocolSpec("speaker_transductive", folds=6), seed=0)
    assert all(len(set(SPEAKERS[f])) == 1 for f in loso.scopes[0].folds)
    with pytest.raises(ValueError, match="speakers"):
        make_plan(LABELS, SPEAKERS, ProtocolSpec("speaker_transductive", folds=7), seed=0)


def test_speaker_protocol_groups_outer_and_inner_folds_by_speaker() -> None:
    plan = make_plan(LABELS, SPEAKERS, ProtocolSpec("speaker", folds=6, inner_folds=3), seed=0)  # LOSO outside
    assert plan.leak_free and plan.speaker_grouped and plan.held_out and len(plan.scopes) == 6
    _check_partition([s.test for s in plan.scopes], np.arange(len(LABELS)))
    for s in plan.scopes:
        assert len(set(SPEAKERS[s.test])) == 1 and not set(SPEAKERS[s.train]) & set(SPEAKERS[s.test])
        _check_partition(s.folds, s.train)
        spk = [set(SPEAKERS[f]) for f in s.folds]
        assert all(not (a & b) for i, a in enumerate(spk) for b in spk[i + 1:])


def test_refinery_scopes_relabel_their_own_training_set() -> None:
    plan = make_plan(LABELS, SPEAKERS, ProtocolSpec("refinery", folds=4), seed=0)
    assert plan.leak_free and plan.held_out and len(plan.scopes) == 4
    for s in plan.scopes:
        assert s.in_sample and len(s.folds) == 1 and np.array_equal(s.folds[0], s.train)
        assert np.array_equal(s.job_train(0), s.train) and s.needs(0) == [0]
        assert not set(s.train) & set(s.test)


def test_outer_folds_can_be_fixed_independently_of_labels() -> None:
    outer = tuple(np.arange(len(LABELS))[i::4] for i in range(4))
    a = make_plan(LABELS, SPEAKERS, ProtocolSpec("nested", folds=4), seed=0, outer=outer)
    b = make_plan(LABELS[::-1].copy(), SPEAKERS, ProtocolSpec("nested", folds=4), seed=0, outer=outer)
    assert all(np.array_equal(x.test, y.test) for x, y in zip(a.scopes, b.scopes))


def test_registry_says_which_protocols_are_leak_free() -> None:
    assert {n for n, p in PROTOCOLS.items() if p.leak_free} >= {"nested", "speaker", "refinery"}
    assert not PROTOCOLS["stratified"].leak_free and not PROTOCOLS["speaker_transductive"].leak_free


def test_nested_scopes_keep_test_labels_out() -> None:
    plan = make_plan(LABELS, SPEAKERS, ProtocolSpec("nested", folds=4, inner_folds=3), seed=0)
    assert len(plan.scopes) == 4 and plan.leak_free and plan.held_out
    _check_partition([s.test for s in plan.scopes], np.arange(len(LABELS)))
    for s in plan.scopes:
        assert not set(s.train) & set(s.test)
        assert len(s.folds) == 3
        _check_partition(s.folds, s.train)


def _tests(plan) -> list[np.ndarray]:
    return [s.test for s in plan.scopes] if plan.held_out else list(plan.scopes[0].folds)


@pytest.mark.parametrize("name", ["nested", "refinery", "speaker", "stratified", "speaker_transductive"])
def test_the_default_outer_partition_reads_no_label(name) -> None:
    """`protocol.outer: balanced`: relabelling any utterances leaves every outer fold (and the inner folds of
    the scope that tests them) as it was."""
    spec = ProtocolSpec(name, folds=3, inner_folds=2)
    files = [f"u{i:02d}.wav" for i in range(len(LABELS))]
    a = make_plan(LABELS, SPEAKERS, spec, seed=3, files=files)
    changed = LABELS.copy()
    first = _tests(a)[0]
    changed[first] = (changed[first] + 1) % 4
    b = make_plan(changed, SPEAKERS, spec, seed=3, files=files)
    assert all(np.array_equal(x, y) for x, y in zip(_tests(a), _tests(b)))
    assert all(np.array_equal(x, y) for x, y in zip(a.scopes[0].folds, b.scopes[0].folds))
    stratified = ProtocolSpec(name, folds=3, inner_folds=2, outer="stratified")  # the old split reads labels
    c, d = (make_plan(y, SPEAKERS, stratified, seed=3, files=files) for y in (LABELS, changed))
    if name not in ("speaker", "speaker_transductive"):  # 3 of 6 speakers' folds may not depend on the labels
        assert not all(np.array_equal(x, y) for x, y in zip(_tests(c), _tests(d)))


def test_balanced_utterance_folds_are_equal_sized_seeded_and_keyed_by_file_name() -> None:
    from dsl.protocols.plans import balanced_folds

    files = [f"/corpus/a/{i:03d}.wav" for i in range(23)]
    folds = balanced_folds(files, 5, seed=0)
    _check_partition(folds, np.arange(23))
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    moved = [f.replace("/corpus/a", "/elsewhere") for f in files[::-1]]  # other folder, reversed listing
    back = balanced_folds(moved, 5, seed=0)
    by_name = [{files[i].rsplit("/", 1)[1] for i in f} for f in folds]
    assert by_name == [{moved[i].rsplit("/", 1)[1] for i in f} for f in back]
    assert not all(np.array_equal(x, y) for x, y in zip(folds, balanced_folds(files, 5, seed=1)))


def test_balanced_speaker_folds_keep_speakers_apart_and_balance_utterances() -> None:
    from dsl.protocols.plans import balanced_speaker_folds

    speakers = np.array([f"s{i}" for i in range(10) for _ in range(10 + 3 * i)])  # 10 to 37 utterances each
    for seed in range(5):
        folds = balanced_speaker_folds(speakers, 5, seed)
        _check_partition(folds, np.arange(len(speakers)))
        sets = [set(speakers[f]) for f in folds]
        assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])
        sizes = [len(f) for f in folds]
        assert max(sizes) - min(sizes) <= 37  # within one speaker's utterances
    loso = balanced_speaker_folds(speakers, 10, 0)
    assert sorted(len(set(speakers[f])) for f in loso) == [1] * 10
    with pytest.raises(ValueError, match="11 folds but only 10 speakers"):
        balanced_speaker_folds(speakers, 11, 0)


def test_the_outer_partition_is_named_and_checked() -> None:
    from dsl.config import ConfigError
    from dsl.protocols.plans import outer_partition

    assert outer_partition(ProtocolSpec("refinery")) == "balanced"
    assert outer_partition(ProtocolSpec("nested", outer="stratified")) == "stratified"
    assert outer_partition(ProtocolSpec("nested", assignment="folds.json")) == "assignment"
    assert outer_partition(ProtocolSpec("cross_corpus")) == "test corpus"
    with pytest.raises(ConfigError, match="protocol.outer 'random' is unknown; allowed: balanced, stratified"):
        make_plan(LABELS, SPEAKERS, ProtocolSpec("nested", outer="random"), seed=0)
