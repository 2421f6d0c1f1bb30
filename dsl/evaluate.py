"""Utterance-level evaluation: 8 statistics per class of segment posteriors -> random forest.

Statistics (paper, Sec. III-C): mean, 1st and 99th percentile, quartiles 1-3, and the share of
segments with posterior above 0.2 and 0.3. The forest has scikit-learn's default settings and is
scored by stratified K-fold CV (speaker-grouped when the protocol is), reporting WA and UA.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

STAT_NAMES = ("mean", "p1", "p99", "q1", "q2", "q3", "gt0.2", "gt0.3")


def utterance_features(posteriors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n_utterances, 8K) features; segments of utterance u are `posteriors[offsets[u]:offsets[u+1]]`.

    Columns are statistic-major: all classes' means, then all classes' 1st percentiles, ...
    """
    n_utt = len(offsets) - 1
    k = posteriors.shape[1]
    out = np.empty((n_utt, len(STAT_NAMES) * k), dtype=np.float32)
    for u in range(n_utt):
        p = posteriors[offsets[u]:offsets[u + 1]]
        pct = np.percentile(p, [1, 99, 25, 50, 75], axis=0)
        out[u] = np.concatenate([p.mean(axis=0), pct[0], pct[1], pct[2], pct[3], pct[4],
                                 (p > 0.2).mean(axis=0), (p > 0.3).mean(axis=0)])
    return out


@dataclass(frozen=True)
class UtteranceScores:
    wa: float  # weighted accuracy (plain accuracy) over all utterances' out-of-fold predictions
    ua: float  # unweighted accuracy (macro recall)
    fold_wa: list[float]
    fold_ua: list[float]
    confusion: list[list[int]]
    predictions: np.ndarray
    probabilities: np.ndarray


def evaluate_utterances(features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, seed: int,
                        groups: np.ndarray | None = None, n_jobs: int | None = None) -> UtteranceScores:
    """Random forest (default settings) under stratified K-fold CV, grouped by `groups` when given."""
    labels = np.asarray(labels)
    if groups is not None:
        n_groups = len(np.unique(groups))
        splitter = StratifiedGroupKFold(n_splits=min(folds, n_groups), shuffle=True, random_state=seed)
        splits = list(splitter.split(features, labels, groups))
    else:
        splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(features, labels))
    pred = np.zeros(len(labels), dtype=np.int64)
    proba = np.zeros((len(labels), n_classes), dtype=np.float32)
    fold_wa, fold_ua = [], []
    for i, (tr, te) in enumerate(splits):
        rf = RandomForestClassifier(random_state=seed + i, n_jobs=n_jobs).fit(features[tr], labels[tr])
        p = np.zeros((len(te), n_classes), dtype=np.float32)
        p[:, rf.classes_] = rf.predict_proba(features[te])
        proba[te] = p
        pred[te] = np.argmax(p, axis=1)
        fold_wa.append(float(accuracy_score(labels[te], pred[te])))
        fold_ua.append(float(balanced_accuracy_score(labels[te], pred[te])))
    return UtteranceScores(
        wa=float(accuracy_score(labels, pred)), ua=float(balanced_accuracy_score(labels, pred)),
        fold_wa=fold_wa, fold_ua=fold_ua,
        confusion=confusion_matrix(labels, pred, labels=np.arange(n_classes)).tolist(),
        predictions=pred, probabilities=proba)
