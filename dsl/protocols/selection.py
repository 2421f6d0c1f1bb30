"""Which iteration a chain reports, chosen by a rule fixed in advance, and the one ranking order.

Choosing the best iteration by the same score that is reported grades itself. So:
- under a held-out (leak-free) protocol each scope picks its iteration by `val_ua`, a forest CV over the
  scope's own training utterances (under refinery with `stage.fit_on: cross_fit`, over out-of-sample
  posteriors of them), and the *selected* score pools the outer test predictions of those picks
  (`selected_scores`); no test label is read. `selector_agreement` says afterwards how often the pick was
  the iteration the outer test fold would have preferred;
- under a transductive protocol there is no clean validation set, so the reported iteration is the
  final one (`reported_iteration`).
`rank_key` is the single order used to compare (trial, iteration) records everywhere (sweep table,
`best`, tracking): higher objective, then higher WA, then fewer iterations.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsl.method.evaluate import UtteranceScores, scores


def utterance_arrays(entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, outer folds, probabilities) of an iteration entry's per-utterance records, in corpus order."""
    utts = entry["utterances"]
    return (np.array([u["label"] for u in utts], dtype=np.int64), np.array([u["fold"] for u in utts], dtype=np.int64),
            np.array([u["proba"] for u in utts], dtype=np.float32))


def select_iterations(history: Sequence[Mapping[str, Any]]) -> list[int]:
    """Per scope, the iteration with the highest validation UA among those in `history` (earliest on ties)."""
    n_scopes = len(history[0]["val_ua"])
    return [int(max(history, key=lambda e: (e["val_ua"][s], -e["iteration"]))["iteration"]) for s in range(n_scopes)]


def selected_scores(history: Sequence[Mapping[str, Any]], n_classes: int) -> tuple[list[int], UtteranceScores]:
    """The picks of `select_iterations` and the pooled scores of each scope's test predictions at its pick."""
    picks = select_iterations(history)
    by_it = {int(e["iteration"]): e for e in history}
    labels, fold_of, proba = utterance_arrays(history[-1])
    chosen = proba.copy()
    for s, it in enumerate(picks):
        _, _, p = utterance_arrays(by_it[it])
        chosen[fold_of == s] = p[fold_of == s]
    return picks, scores(labels, chosen, fold_of, n_classes)


def selector_agreement(history: Sequence[Mapping[str, Any]]) -> float:
    """Share of outer folds whose selected iteration (`select_iterations` over `history`) has the best outer-test
    UA of the iterations in `history` for that fold (a tie with the best agrees): how well the selector, which
    reads no test label, follows the test folds. Needs `fold_ua` per scope, i.e. a held-out plan."""
    picks = select_iterations(history)
    by_it = {int(e["iteration"]): e for e in history}
    agree = [by_it[it]["fold_ua"][s] >= max(e["fold_ua"][s] for e in history) for s, it in enumerate(picks)]
    return float(np.mean(agree))


def selected_condition_scores(history: Sequence[Mapping[str, Any]], condition: str, n_classes: int) -> UtteranceScores:
    """The scores under test condition `condition` (`dsl.robustness.conditions`) at the iterations the clean
    validation picks (`select_iterations`): nothing is chosen by looking at the perturbed test utterances."""
    picks = select_iterations(history)
    by_it = {int(e["iteration"]): e for e in history}
    labels, fold_of, _ = utterance_arrays(history[-1])
    chosen = np.asarray(history[-1]["conditions"][condition]["predicted"], dtype=np.int64)
    for s, it in enumerate(picks):
        pred = np.asarray(by_it[it]["conditions"][condition]["predicted"], dtype=np.int64)
        chosen[fold_of == s] = pred[fold_of == s]
    return scores(labels, np.eye(n_classes, dtype=np.float32)[chosen], fold_of, n_classes)


def reported_iteration(entry: Mapping[str, Any]) -> dict[str, float]:
    """The headline figures of a chain after `entry`: the selected ones if it has them, else its own."""
    if entry.get("selected_ua") is not None:
        return {"wa": float(entry["selected_wa"]), "ua": float(entry["selected_ua"])}
    return {"wa": float(entry["wa"]), "ua": float(entry["ua"])}


def rank_key(objective: float, wa: float, iteration: int) -> tuple[float, float, int]:
    """Order of (trial, iteration) records: higher objective, then higher WA, then fewer iterations."""
    return (float(objective), float(wa), -int(iteration))
