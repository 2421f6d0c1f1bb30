"""Fold plans split at the utterance level; nested scopes never train on their test utterances."""
from __future__ import annotations

import numpy as np
import pytest

from dsl.config import ProtocolSpec
from dsl.protocols import make_plan

LABELS = np.repeat(np.arange(4), 12)
SPEAKERS = np.tile(np.array([f"s{i}" for i in range(6)]), 8)


def _check_partition(folds, universe):
    joined = np.concatenate(folds)
    assert len(joined) == len(np.unique(joined)) == len(universe)
    assert set(joined) == set(universe)


def test_stratified_one_scope_partitions_everything() -> None:
    plan = make_plan(LABELS, SPEAKERS, ProtocolSpec("stratified", folds=4), seed=0)
    (scope,) = plan.scopes
    _check_partition(scope.folds, np.arange(len(LABELS)))
    for f in scope.folds:
        assert np.all(np.bincount(LABELS[f], minlength=4) == 3)  # stratified
    assert len(scope.test) == 0 and not plan.speaker_grouped


def test_speaker_folds_never_share_a_speaker() -> None:
    plan = make_plan(LABELS, SPEAKERS, ProtocolSpec("speaker", folds=3), seed=0)
    (scope,) = plan.scopes
    _check_partition(scope.folds, np.arange(len(LABELS)))
    spk = [set(SPEAKERS[f]) for f in scope.folds]
    assert all(not (a & b) for i, a in enumerate(spk) for b in spk[i + 1:])
    loso = make_plan(LABELS, SPEAKERS, ProtocolSpec("speaker", folds=6), seed=0)
    assert all(len(set(SPEAKERS[f])) == 1 for f in loso.scopes[0].folds)
    with pytest.raises(ValueError, match="speakers"):
        make_plan(LABELS, SPEAKERS, ProtocolSpec("speaker", folds=7), seed=0)


def test_nested_scopes_keep_test_labels_out() -> None:
    plan = make_plan(LABELS, SPEAKERS, ProtocolSpec("nested", folds=4, inner_folds=3), seed=0)
    assert len(plan.scopes) == 4
    _check_partition([s.test for s in plan.scopes], np.arange(len(LABELS)))
    for s in plan.scopes:
        assert not set(s.train) & set(s.test)
        assert len(s.folds) == 3
        _check_partition(s.folds, s.train)
