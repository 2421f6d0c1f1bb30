"""Fold plans, all split at the utterance level, in a registry.

A plan is a list of *scopes*. A scope is one independent label chain: its `train` utterances get
targets that are updated every iteration from out-of-sample posteriors over its `folds`; its `test`
utterances (nested protocol only) are predicted by the fold models but their labels are never used.
`stratified` and `speaker` have one scope over all utterances (the paper's protocol: the targets of
iteration t+1 come from models that saw the test fold's labels); `nested` has one scope per outer
fold, so no test-fold label ever reaches a training target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold, StratifiedKFold

from .config import ProtocolSpec


@dataclass(frozen=True)
class Scope:
    train: np.ndarray  # utterance ids whose targets this scope updates
    folds: tuple[np.ndarray, ...]  # partition of `train` into held-out folds
    test: np.ndarray  # utterance ids only predicted (nested); empty otherwise


@dataclass(frozen=True)
class FoldPlan:
    protocol: str
    scopes: tuple[Scope, ...]
    speaker_grouped: bool  # the random-forest stage must then group its folds by speaker too


PlanFn = Callable[[np.ndarray, np.ndarray, ProtocolSpec, int], FoldPlan]
PROTOCOLS: dict[str, PlanFn] = {}


def register_protocol(name: str) -> Callable[[PlanFn], PlanFn]:
    def wrap(fn: PlanFn) -> PlanFn:
        PROTOCOLS[name] = fn
        return fn
    return wrap


def make_plan(labels: np.ndarray, speakers: np.ndarray, spec: ProtocolSpec, seed: int) -> FoldPlan:
    if spec.name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {spec.name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[spec.name](np.asarray(labels), np.asarray(speakers), spec, seed)


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, ...]:
    """Held-out index arrays of a shuffled stratified K-fold."""
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return tuple(np.sort(test) for _, test in skf.split(np.zeros(len(labels)), labels))


def speaker_folds(labels: np.ndarray, speakers: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, ...]:
    """Leave-one-speaker-out when k equals the number of speakers, else speaker-grouped stratified K-fold."""
    n_speakers = len(np.unique(speakers))
    if k > n_speakers:
        raise ValueError(f"{k} folds but only {n_speakers} speakers under the speaker protocol")
    splitter = LeaveOneGroupOut() if k == n_speakers else StratifiedGroupKFold(n_splits=k, shuffle=True,
                                                                               random_state=seed)
    return tuple(np.sort(test) for _, test in splitter.split(np.zeros(len(labels)), labels, speakers))


@register_protocol("stratified")
def stratified(labels: np.ndarray, speakers: np.ndarray, spec: ProtocolSpec, seed: int) -> FoldPlan:
    utts = np.arange(len(labels))
    return FoldPlan("stratified", (Scope(utts, stratified_folds(labels, spec.folds, seed), utts[:0]),), False)


@register_protocol("speaker")
def speaker(labels: np.ndarray, speakers: np.ndarray, spec: ProtocolSpec, seed: int) -> FoldPlan:
    utts = np.arange(len(labels))
    return FoldPlan("speaker", (Scope(utts, speaker_folds(labels, speakers, spec.folds, seed), utts[:0]),), True)


@register_protocol("nested")
def nested(labels: np.ndarray, speakers: np.ndarray, spec: ProtocolSpec, seed: int) -> FoldPlan:
    """Outer stratified folds; within each outer training set an inner stratified K-fold chain."""
    scopes = []
    for o, test in enumerate(stratified_folds(labels, spec.folds, seed)):
        train = np.setdiff1d(np.arange(len(labels)), test)
        inner = stratified_folds(labels[train], spec.inner_folds, seed + 1000 + o)
        scopes.append(Scope(train, tuple(train[f] for f in inner), test))
    return FoldPlan("nested", tuple(scopes), False)
