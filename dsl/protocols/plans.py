"""Fold plans, all split at the utterance level, in a registry that says which ones are leak-free.

A plan is a list of *scopes*. A scope is one independent label chain: its `train` utterances get
targets that are updated every iteration from posteriors over its `folds`; its `test` utterances are
only ever predicted, by the scope's fold models and by a forest trained on the scope's `train`
utterances. Two kinds of plan:

- *transductive* (`stratified`, the paper's protocol, and `speaker_transductive`): one scope over all
  utterances, no test set. The targets of iteration t+1 come from models that were trained on the
  labels of the utterances they are later scored on, and the forest is cross-validated over all of
  them. Results carry `leak_free: false`.
- *held out* (`nested`, `speaker`, `refinery`): every utterance is the test utterance of exactly one
  scope, and nothing that produces its score (targets, normalisation, early stopping, forest, choice
  of iteration) ever reads its label. Results carry `leak_free: true`; `dsl-sweep leakcheck`
  (`dsl.studies.leakcheck`, and `tests/test_leakage.py` through it) changes the labels of one outer test fold
  and checks that nothing of its predictions moves.

`refinery` costs what `stratified` costs: per outer fold one model per iteration, trained on the
outer training utterances, which then relabels the utterances it was trained on (in-sample, as in
Label Refinery) and predicts the outer test fold (`Scope.in_sample`).

The outer partition (`protocol.outer`) reads no label by default (`balanced`): utterance-level plans cut a
seeded order of the utterances, keyed by file name, into folds of equal size; speaker-grouped plans deal
speakers, in a seeded order, to the fold with the fewest utterances so far (`balanced_folds`,
`balanced_speaker_folds`). So relabelling a test fold cannot move an utterance between folds, and a leak test
need not fix the plan first. `outer: stratified` keeps the label-stratified split (`stratified_folds`,
`speaker_folds`); results name the partition (`outer_partition`). Inner folds (nested, speaker) stay
stratified: they read only their scope's own training labels.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsl.config import OUTER_PARTITIONS, ConfigError, ProtocolSpec
from dsl.registry import Registry, first_line, owned_keys


@dataclass(frozen=True)
class Scope:
    train: np.ndarray  # utterance ids whose targets this scope updates
    folds: tuple[np.ndarray, ...]  # partition of `train` into held-out folds (one fold = all of it if in_sample)
    test: np.ndarray  # utterance ids only predicted (held-out plans); empty for transductive plans
    in_sample: bool = False  # each fold job trains on all of `train` and relabels it (refinery)

    def job_train(self, f: int) -> np.ndarray:
        """Training utterances of fold job `f` (its validation split for early stopping is carved from them)."""
        return self.train if self.in_sample else np.setdiff1d(self.train, self.folds[f])

    def needs(self, f: int) -> list[int]:
        """Folds whose targets job `f` trains on: every other fold, or all of them when in-sample."""
        return [h for h in range(len(self.folds)) if self.in_sample or h != f]


@dataclass(frozen=True)
class FoldPlan:
    protocol: str
    scopes: tuple[Scope, ...]
    speaker_grouped: bool  # the random-forest stage must then group its folds by speaker too
    leak_free: bool = False
    partial: bool = False  # the test sets cover only some utterances (cross_corpus); the rest are never scored

    @property
    def held_out(self) -> bool:
        """Every utterance is scored as the test utterance of one scope (else: forest CV over all)."""
        return all(len(s.test) for s in self.scopes)

    def outer_fold(self, n_utterances: int) -> np.ndarray:
        """Per utterance, the outer fold it is scored in: its scope (held out) or its fold (transductive)."""
        out = np.full(n_utterances, -1, dtype=np.int64)
        if self.held_out:
            for s, scope in enumerate(self.scopes):
                out[scope.test] = s
        else:
            for f, fold in enumerate(self.scopes[0].folds):
                out[fold] = f
        return out


PlanFn = Callable[[np.ndarray, np.ndarray, ProtocolSpec, int, "tuple[np.ndarray, ...] | None"], FoldPlan]


@dataclass(frozen=True)
class ProtocolInfo:
    """A fold plan and its facts.

    `leak_free`: no score reads its utterance's label (`make_plan` checks the held-out half of that promise,
    `dsl-sweep leakcheck` all of it); `grouped`: folds are grouped by speaker (the corpus needs as many
    speakers as folds, and the balanced outer partition deals speakers, not utterances); `nested`: each outer training set gets inner folds (`protocol.inner_folds`, which
    stays a key of every protocol: configs set it once for all);
    `transductive_twin`: the protocol the final model's chain runs on all utterances (no test set; a
    transductive protocol is its own twin); `keys`: the `protocol.*` keys that apply only under it;
    `needs`: the keys among them it cannot run without."""

    name: str
    fn: PlanFn
    leak_free: bool = False
    description: str = ""
    grouped: bool = False
    nested: bool = False
    transductive_twin: str | None = None
    keys: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()

    @property
    def twin(self) -> str | None:
        """The final model's protocol: `transductive_twin`, or this one when it is transductive."""
        return self.transductive_twin or (None if self.leak_free else self.name)


PROTOCOLS: Registry[ProtocolInfo] = Registry("protocol")


def register_protocol(name: str, *, leak_free: bool = False, grouped: bool = False, nested: bool = False,
                      transductive_twin: str | None = None, keys: tuple[str, ...] = (), needs: tuple[str, ...] = (),
                      description: str = "") -> Callable[[PlanFn], PlanFn]:
    """Register a plan function `(labels, speakers, spec, seed, outer) -> FoldPlan` with its facts (`ProtocolInfo`).

    `outer` is the outer partition the plan must use: a stored assignment (`protocol.assignment`), the test
    corpus (cross_corpus) or, under `protocol.outer: balanced` (the default), the label-free balanced
    partition: of speakers for a `grouped` protocol, else of utterances. It is None only under
    `protocol.outer: stratified`, where the plan cuts its own (label-stratified) outer folds. Registering with
    `leak_free=True` is a promise that `make_plan` checks in part (every utterance is the test of exactly
    one scope that does not train on it) and `dsl-sweep leakcheck` (`dsl.studies.leakcheck`) checks end to
    end; such a protocol names the transductive protocol the final model trains with (`transductive_twin`).
    """
    keys = owned_keys("protocol", name, (*keys, *(k for k in needs if k not in keys)), "protocol.")
    return PROTOCOLS.decorator(lambda fn: ProtocolInfo(name, fn, leak_free, description or first_line(fn.__doc__),
                                                       grouped, nested, transductive_twin, tuple(keys), tuple(needs)))


def is_leak_free(name: str) -> bool:
    return name in PROTOCOLS and PROTOCOLS[name].leak_free


def leak_free_protocols() -> tuple[str, ...]:
    return tuple(n for n in PROTOCOLS.names() if PROTOCOLS[n].leak_free)


def outer_partition(spec: ProtocolSpec) -> str:
    """How the outer folds of a run with `spec` were cut, as results name it: `balanced` (label-free),
    `stratified` (by label), `assignment` (a stored file), `test corpus` (cross_corpus) or `holdout` (one
    scored fold, `protocol.holdout`)."""
    if spec.holdout:
        return "holdout"
    if spec.name == "cross_corpus":
        return "test corpus"
    return "assignment" if spec.assignment else spec.outer


def make_plan(labels: np.ndarray, speakers: np.ndarray, spec: ProtocolSpec, seed: int,
              outer: tuple[np.ndarray, ...] | None = None, files: Sequence[str] | None = None) -> FoldPlan:
    """The protocol's plan. Without a fixed `outer` and under `protocol.outer: balanced`, the outer folds are
    the balanced partition of `files` (file names; default: the utterances' positions) or of `speakers`."""
    info = PROTOCOLS.get(spec.name)
    if spec.outer not in OUTER_PARTITIONS:
        raise ConfigError(f"protocol.outer {spec.outer!r} is unknown; allowed: {', '.join(OUTER_PARTITIONS)}")
    speakers = np.asarray(speakers)
    if spec.holdout:  # `outer` is the holdout (see `outer_folds`): one scope, scored on it only
        if outer is None or len(outer) != 1:
            raise ConfigError("protocol.holdout: the held-out utterances are needed (dsl.protocols.holdout)")
        plan = holdout_plan(np.asarray(labels), speakers, spec, seed, outer[0])
        _check_held_out(plan, len(labels))
        return plan
    if outer is None and spec.outer == "balanced":
        outer = (balanced_speaker_folds(speakers, spec.folds, seed) if info.grouped
                 else balanced_folds([str(i) for i in range(len(labels))] if files is None else files,
                                     spec.folds, seed))
    plan = info.fn(np.asarray(labels), speakers, spec, seed, outer)
    plan = FoldPlan(plan.protocol, plan.scopes, plan.speaker_grouped, info.leak_free, plan.partial)
    if info.leak_free:
        _check_held_out(plan, len(labels))
    return plan


def holdout_protocols() -> tuple[str, ...]:
    """The protocols a holdout plan combines with: every one that needs no keys of its own (not cross_corpus)."""
    return tuple(n for n in PROTOCOLS.names() if not PROTOCOLS[n].needs)


def holdout_plan(labels: np.ndarray, speakers: np.ndarray, spec: ProtocolSpec, seed: int,
                 test: np.ndarray) -> FoldPlan:
    """One scope: train on every utterance outside the holdout `test` with the protocol's own inner structure, read
    from its facts (`ProtocolInfo`): a nested protocol's inner folds (`protocol.inner_folds`), a transductive one's
    folds (`protocol.folds`), both grouped by speaker when the protocol is; a leak-free protocol without inner folds
    (refinery) relabels its training utterances in-sample. Only the holdout is scored. The holdout's labels reach
    neither targets, nor normalisation, early stopping, forest or the choice of iteration, whichever the protocol,
    so the plan is leak-free (and `partial`: the training utterances are not scored)."""
    if spec.name not in holdout_protocols():
        raise ConfigError(f"protocol.holdout does not combine with protocol {spec.name!r}; allowed: "
                          f"{', '.join(holdout_protocols())}")
    info = PROTOCOLS[spec.name]
    in_sample = info.leak_free and not info.nested
    test = np.sort(np.asarray(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), test)
    if in_sample:
        folds: tuple[np.ndarray, ...] = (train,)
    else:
        k = spec.inner_folds if info.nested else spec.folds
        inner = (speaker_folds(labels[train], speakers[train], k, seed + 1000) if info.grouped
                 else stratified_folds(labels[train], k, seed + 1000))
        folds = tuple(train[f] for f in inner)
    return FoldPlan(spec.name, (Scope(train, folds, test, in_sample=in_sample),), info.grouped, leak_free=True,
                    partial=True)


def plan_leak_free(spec: ProtocolSpec) -> bool:
    """Whether a chain's scores are leak-free: its protocol is, or it scores a holdout only."""
    return bool(spec.holdout) or is_leak_free(spec.name)


def _check_held_out(plan: FoldPlan, n: int) -> None:
    tests = np.concatenate([s.test for s in plan.scopes]) if plan.scopes else np.zeros(0, dtype=np.int64)
    if len(np.unique(tests)) != len(tests) or (len(tests) != n and not plan.partial) or not len(tests):
        raise ValueError(f"protocol {plan.protocol!r} is registered leak-free but its test sets do not "
                         "partition the utterances")
    for s in plan.scopes:
        if np.intersect1d(s.train, s.test).size:
            raise ValueError(f"protocol {plan.protocol!r} is registered leak-free but a scope trains on its test set")


def _order_key(seed: int, name: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{name}".encode(), digest_size=16).digest()


def balanced_folds(files: Sequence[str], k: int, seed: int) -> tuple[np.ndarray, ...]:
    """Held-out index arrays of `k` folds of equal size (within one) that read no label: the utterances in an
    order set by a hash of the seed and each file's base name, cut into `k` runs. So the partition depends on
    which files there are and the seed, not on their labels or listing order."""
    names = [Path(str(f)).name for f in files]
    if k > len(names):
        raise ValueError(f"{k} folds but only {len(names)} utterances")
    order = sorted(range(len(names)), key=lambda i: (_order_key(seed, names[i]), i))
    return tuple(np.sort(np.asarray(part, dtype=np.int64)) for part in np.array_split(np.asarray(order), k))


def balanced_speaker_folds(speakers: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, ...]:
    """Held-out index arrays of `k` speaker-disjoint folds that read no label: speakers, in an order set by a
    hash of the seed and their names, each go to the fold with the fewest utterances so far (one speaker per
    fold when `k` is the number of speakers: leave-one-speaker-out)."""
    names, inverse, counts = np.unique(np.asarray(speakers).astype(str), return_inverse=True, return_counts=True)
    if k > len(names):
        raise ValueError(f"{k} folds but only {len(names)} speakers under the speaker protocol")
    load = np.zeros(k, dtype=np.int64)
    fold_of_speaker = np.zeros(len(names), dtype=np.int64)
    for i in sorted(range(len(names)), key=lambda i: (_order_key(seed, str(names[i])), i)):
        f = int(np.argmin(load))  # the first fold with the fewest utterances: every fold gets one before a second
        fold_of_speaker[i] = f
        load[f] += counts[i]
    fold = fold_of_speaker[inverse]
    return tuple(np.flatnonzero(fold == f) for f in range(k))


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, ...]:
    """Held-out index arrays of a shuffled stratified K-fold."""
    from sklearn.model_selection import StratifiedKFold  # here: `dsl-sweep --help` lists the protocols

    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return tuple(np.sort(test) for _, test in skf.split(np.zeros(len(labels)), labels))


def speaker_folds(labels: np.ndarray, speakers: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, ...]:
    """Leave-one-speaker-out when k equals the number of speakers, else speaker-grouped stratified K-fold."""
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold

    n_speakers = len(np.unique(speakers))
    if k > n_speakers:
        raise ValueError(f"{k} folds but only {n_speakers} speakers under the speaker protocol")
    splitter = LeaveOneGroupOut() if k == n_speakers else StratifiedGroupKFold(n_splits=k, shuffle=True,
                                                                               random_state=seed)
    return tuple(np.sort(test) for _, test in splitter.split(np.zeros(len(labels)), labels, speakers))


def load_assignment(path: str | Path, files: tuple[str, ...] | list[str]) -> tuple[np.ndarray, ...]:
    """A stored outer-fold assignment, so the plan cannot depend on the labels (e.g. in a leak test).

    The file is JSON: `{"file name": fold, ...}`, or a result JSON of `dsl-sweep run`, whose first
    iteration lists every utterance's `file` and `fold`. Files are matched by base name.
    """
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: cannot read the fold assignment: {exc}") from exc
    if isinstance(raw, dict) and "iterations" in raw:
        raw = {u["file"]: u["fold"] for u in raw["iterations"][0].get("utterances", [])}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{p}: expected a mapping of file name -> outer fold, or a result JSON with utterances")
    by_name = {Path(k).name: int(v) for k, v in raw.items()}
    missing = [f for f in files if Path(f).name not in by_name]
    if missing:
        raise ConfigError(f"{p}: no fold for {len(missing)} file(s), e.g. {Path(missing[0]).name}")
    fold = np.array([by_name[Path(f).name] for f in files], dtype=np.int64)
    return tuple(np.flatnonzero(fold == k) for k in np.unique(fold))


def _outer(labels, speakers, spec, seed, outer, grouped: bool) -> tuple[np.ndarray, ...]:
    """The given outer partition, else (`protocol.outer: stratified`) the label-stratified one."""
    if outer is not None:
        return outer
    return speaker_folds(labels, speakers, spec.folds, seed) if grouped else stratified_folds(labels, spec.folds, seed)


@register_protocol("stratified")
def stratified(labels, speakers, spec, seed, outer=None) -> FoldPlan:
    """The paper's protocol: one K-fold chain over all utterances (transductive)."""
    utts = np.arange(len(labels))
    return FoldPlan("stratified", (Scope(utts, _outer(labels, speakers, spec, seed, outer, False), utts[:0]),), False)


@register_protocol("speaker_transductive", grouped=True)
def speaker_transductive(labels, speakers, spec, seed, outer=None) -> FoldPlan:
    """Speaker-grouped folds in one chain over all utterances (held-out speakers' labels reach iteration 1)."""
    utts = np.arange(len(labels))
    folds = _outer(labels, speakers, spec, seed, outer, True)
    return FoldPlan("speaker_transductive", (Scope(utts, folds, utts[:0]),), True)


def _nested(name, labels, speakers, spec, seed, outer, grouped: bool) -> FoldPlan:
    scopes = []
    for o, test in enumerate(_outer(labels, speakers, spec, seed, outer, grouped)):
        train = np.setdiff1d(np.arange(len(labels)), test)
        inner = (speaker_folds(labels[train], speakers[train], spec.inner_folds, seed + 1000 + o) if grouped
                 else stratified_folds(labels[train], spec.inner_folds, seed + 1000 + o))
        scopes.append(Scope(train, tuple(train[f] for f in inner), test))
    return FoldPlan(name, tuple(scopes), grouped)


@register_protocol("nested", leak_free=True, nested=True, transductive_twin="stratified")
def nested(labels, speakers, spec, seed, outer=None) -> FoldPlan:
    """Outer folds; within each outer training set an inner stratified K-fold chain and a forest."""
    return _nested("nested", labels, speakers, spec, seed, outer, False)


@register_protocol("speaker", leak_free=True, grouped=True, nested=True,
                   transductive_twin="speaker_transductive")
def speaker(labels, speakers, spec, seed, outer=None) -> FoldPlan:
    """Nested with outer and inner folds grouped by speaker (LOSO when folds = number of speakers)."""
    return _nested("speaker", labels, speakers, spec, seed, outer, True)


@register_protocol("refinery", leak_free=True, transductive_twin="stratified")
def refinery(labels, speakers, spec, seed, outer=None) -> FoldPlan:
    """Per outer fold, one chain on its training utterances that relabels them in-sample (Label Refinery)."""
    scopes = []
    for test in _outer(labels, speakers, spec, seed, outer, False):
        train = np.setdiff1d(np.arange(len(labels)), test)
        scopes.append(Scope(train, (train,), test, in_sample=True))
    return FoldPlan("refinery", tuple(scopes), False)


@register_protocol("cross_corpus", leak_free=True, nested=True, transductive_twin="stratified",
                   keys=("protocol.label_map",), needs=("protocol.test_corpus", "protocol.test_data"))
def cross_corpus(labels, speakers, spec, seed, outer=None) -> FoldPlan:
    """Train on one corpus, test on another (`dsl.data.cross_corpus`): one scope, an inner K-fold chain over the
    training corpus, the test corpus only predicted; its utterances are the one outer fold."""
    if outer is None or len(outer) != 1:
        raise ConfigError("protocol cross_corpus needs protocol.test_corpus and protocol.test_data")
    test = np.sort(outer[0])
    train = np.setdiff1d(np.arange(len(labels)), test)
    inner = stratified_folds(labels[train], spec.inner_folds, seed + 1000)
    return FoldPlan("cross_corpus", (Scope(train, tuple(train[f] for f in inner), test),), False, partial=True)


def outer_folds(spec: ProtocolSpec, paths: tuple[str, ...] | list[str]) -> tuple[np.ndarray, ...] | None:
    """Outer folds fixed before any label is read: the holdout (`protocol.holdout`), a stored assignment, or
    (cross_corpus) the test corpus."""
    if spec.holdout:
        from dsl.protocols.holdout import load_holdout

        return (load_holdout(spec.holdout).indices(paths),)
    if spec.name == "cross_corpus":
        from dsl.data.cross_corpus import test_utterances

        return (test_utterances(paths, spec.test_data),)
    return load_assignment(spec.assignment, paths) if spec.assignment else None

