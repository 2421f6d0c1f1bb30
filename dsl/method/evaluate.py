"""Utterance-level evaluation: 8 statistics per class of segment posteriors -> random forest.

Statistics (paper, Sec. III-C): mean, 1st and 99th percentile, quartiles 1-3, and the share of
segments with posterior above 0.2 and 0.3. The forest has scikit-learn's default settings. Under a
transductive protocol it is scored by stratified K-fold CV over all utterances (speaker-grouped when the
protocol is); under a held-out protocol each scope's forest is trained on the scope's training
utterances only and predicts its test utterances (`forest_proba`), and a CV over those training
utterances (`validation_ua`) is what picks the scope's iteration. WA is accuracy, UA macro recall.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

STAT_NAMES = ("mean", "p1", "p99", "q1", "q2", "q3", "gt0.2", "gt0.3")


def utterance_features(posteriors: np.ndarray, offsets: np.ndarray, utterances: np.ndarray | None = None) -> np.ndarray:
    """(n_utterances, 8K) features; segments of utterance u are `posteriors[offsets[u]:offsets[u+1]]`.

    Columns are statistic-major: all classes' means, then all classes' 1st percentiles, ...
    With `utterances`, only those rows, in that order.
    """
    utts = np.arange(len(offsets) - 1) if utterances is None else np.asarray(utterances)
    return utterance_statistics([posteriors[offsets[u]:offsets[u + 1]] for u in utts], posteriors.shape[1])


def utterance_statistics(per_utterance: Sequence[np.ndarray], n_classes: int | None = None) -> np.ndarray:
    """(n_utterances, 8K) features of a list of per-utterance (segments, K) posteriors (see `utterance_features`)."""
    k = n_classes if n_classes is not None else np.shape(per_utterance[0])[1]
    out = np.empty((len(per_utterance), len(STAT_NAMES) * k), dtype=np.float32)
    for row, p in enumerate(per_utterance):
        pct = np.percentile(p, [1, 99, 25, 50, 75], axis=0)
        out[row] = np.concatenate([p.mean(axis=0), pct[0], pct[1], pct[2], pct[3], pct[4],
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


def fit_forest(train_features: np.ndarray, train_labels: np.ndarray, seed: int,
               n_jobs: int | None = None) -> RandomForestClassifier:
    """A default random forest fitted on the training rows only."""
    return RandomForestClassifier(random_state=seed, n_jobs=n_jobs).fit(train_features, train_labels)


def forest_predict(rf: RandomForestClassifier, test_features: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities (n_test, K) of a fitted forest (classes it never saw get 0)."""
    p = np.zeros((len(test_features), n_classes), dtype=np.float32)
    p[:, rf.classes_] = rf.predict_proba(test_features)
    return p


def forest_proba(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, n_classes: int,
                 seed: int, n_jobs: int | None = None) -> np.ndarray:
    """Class probabilities (n_test, K) of a default random forest fitted on the training rows only."""
    return forest_predict(fit_forest(train_features, train_labels, seed, n_jobs), test_features, n_classes)


def cv_splits(labels: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold splits, grouped by `groups` (speakers) when given."""
    x = np.zeros(len(labels))
    if groups is not None:
        n_groups = len(np.unique(groups))
        splitter = StratifiedGroupKFold(n_splits=min(folds, n_groups), shuffle=True, random_state=seed)
        return list(splitter.split(x, labels, groups))
    return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, labels))


def scores(labels: np.ndarray, proba: np.ndarray, fold_of: np.ndarray, n_classes: int) -> UtteranceScores:
    """WA/UA over the scored utterances (outer fold >= 0: all of them but a cross-corpus training corpus) and
    per outer fold, from each utterance's out-of-fold probabilities."""
    labels = np.asarray(labels)
    fold_of = np.asarray(fold_of)
    pred = np.argmax(proba, axis=1)
    scored = fold_of >= 0
    fold_wa, fold_ua = [], []
    for f in np.unique(fold_of[scored]):
        m = fold_of == f
        fold_wa.append(float(accuracy_score(labels[m], pred[m])))
        fold_ua.append(float(balanced_accuracy_score(labels[m], pred[m])))
    y, p = labels[scored], pred[scored]
    return UtteranceScores(
        wa=float(accuracy_score(y, p)), ua=float(balanced_accuracy_score(y, p)),
        fold_wa=fold_wa, fold_ua=fold_ua,
        confusion=confusion_matrix(y, p, labels=np.arange(n_classes)).tolist(),
        predictions=pred, probabilities=np.asarray(proba, dtype=np.float32))


def cross_validated_proba(features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, seed: int,
                          groups: np.ndarray | None = None, n_jobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold forest probabilities of every row, and each row's CV fold."""
    labels = np.asarray(labels)
    proba = np.zeros((len(labels), n_classes), dtype=np.float32)
    fold_of = np.zeros(len(labels), dtype=np.int64)
    for i, (tr, te) in enumerate(cv_splits(labels, folds, seed, groups)):
        proba[te] = forest_proba(features[tr], labels[tr], features[te], n_classes, seed + i, n_jobs)
        fold_of[te] = i
    return proba, fold_of


def validation_ua(features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, seed: int,
                  groups: np.ndarray | None = None, n_jobs: int | None = None) -> float:
    """UA of a forest CV over a scope's training utterances: the held-out protocols' iteration selector.

    The folds are capped at the smallest class's size, so small corpora still get a (coarser) selector."""
    counts = np.bincount(np.asarray(labels))
    folds = max(2, min(folds, int(counts[counts > 0].min())))
    proba, _ = cross_validated_proba(features, labels, n_classes, folds, seed, groups, n_jobs)
    return float(balanced_accuracy_score(labels, np.argmax(proba, axis=1)))
