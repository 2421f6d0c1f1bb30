"""Utterance stages: what turns an iteration's out-of-sample segment outputs into utterance labels.

`stage.name` picks one from a small registry with one interface (`UtteranceStage`):

- `forest` (the paper's): 8 statistics per class of the segment posteriors -> random forest (`dsl.method.evaluate`).
- `acp`: attentive correlation pooling (`dsl.method.acp`) over the segment embeddings (the backbone's
  penultimate layer, `stage.input: embedding`) or the segment posteriors (`stage.input: posterior`),
  trained with label smoothing `stage.epsilon`.

A transductive plan cross-validates the stage over all utterances (`cross_validated_proba`); a held-out
plan fits it per scope on the scope's training utterances and predicts the scope's test utterances
(`fit_proba`), and a CV of the stage over those training utterances (`validation_ua`) picks the scope's
iteration. For `acp` that CV trains `protocol.select_folds` ACPs per scope and iteration (a few seconds
each on a CPU at the `cpu` preset): the selector is the same model as the one scored, and it reads no
test label.

Embedding-space caveat. Each fold network has its own embedding space (independently trained networks
agree on neither the order nor the scale of their channels). A training utterance's vectors come from the
one network that did not see it (out-of-fold, as for the posteriors), so an ACP trains on a mixture of
the fold networks' spaces; each network's vectors are standardised per channel with the mean/std over
its own out-of-fold segments (no labels, no test utterance) to align at least their scales. A test
utterance is seen by every fold network of its scope: its embeddings are NOT averaged across networks
(meaningless between spaces); the ACP predicts from each network's view and its probabilities are
averaged. The forest reads the mean of the posteriors (`stage.test_views: mean`, they share the class
space) or, like the ACP, each network's view (`each`): it trains on one network's posteriors per
utterance, and a mean of several networks' posteriors is smoother than any one of them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from dsl.config import StageSpec
from dsl.method.evaluate import (
    cross_validated_proba,
    cv_splits,
    fit_forest,
    forest_predict,
    utterance_statistics,
    validation_ua,
)
from dsl.registry import Registry, first_line, owned_keys

STAGE_INPUTS = ("posterior", "embedding")  # what a fold job can return per segment


def stage_input(spec: StageSpec) -> str:
    """What the stage reads per segment: `posterior` or `embedding` (then the fold jobs return embeddings)."""
    return STAGES.get(spec.name).input_of(spec)


def select_folds(labels: np.ndarray, folds: int) -> int:
    """The validation CV's folds, capped at the smallest class's size (so small corpora still get one)."""
    counts = np.bincount(np.asarray(labels))
    return max(2, min(folds, int(counts[counts > 0].min())))


class UtteranceStage(ABC):
    """One utterance classifier over per-utterance sequences of segment vectors (each (segments, D))."""

    name: str = ""

    def __init__(self, spec: StageSpec, n_classes: int, n_jobs: int | None = None, num_threads: int = 0):
        self.spec, self.n_classes, self.n_jobs, self.num_threads = spec, n_classes, n_jobs, num_threads

    @classmethod
    def spec_problems(cls, spec: StageSpec) -> list[str]:
        """Problems of this stage's own settings in `spec` (checked before any work)."""
        return []

    @abstractmethod
    def fit_proba(self, train: Sequence[np.ndarray], labels: np.ndarray,
                  views: Sequence[Sequence[np.ndarray]], seed: int) -> np.ndarray:
        """Fit on the `train` utterances; (n_test, K) probabilities of the test utterances, given as one or
        more `views` (the same utterances, in the same order, through different fold networks)."""

    def fit_proba_many(self, train: Sequence[np.ndarray], labels: np.ndarray,
                       tests: Mapping[str, Sequence[Sequence[np.ndarray]]], seed: int) -> dict[str, np.ndarray]:
        """`fit_proba` for several test sets at once (e.g. the clean test utterances and the same utterances under
        each test condition): one fit, then each set's probabilities. This default fits once per set (the same
        fit each time: same data, same seed); stages override it to fit once."""
        return {name: self.fit_proba(train, labels, views, seed) for name, views in tests.items()}

    def cross_validated_many(self, X: Sequence[np.ndarray], labels: np.ndarray, folds: int, seed: int,
                             groups: np.ndarray | None, conditions: Mapping[str, Sequence[np.ndarray]]
                             ) -> dict[str, np.ndarray]:
        """Per condition, out-of-fold probabilities of every utterance under it (`conditions[name][j]`: utterance
        j's vectors under the condition), each from the stage fitted on the clean vectors of the other CV folds:
        the same fits, splits and seeds as `cross_validated_proba`."""
        labels = np.asarray(labels)
        out = {name: np.zeros((len(labels), self.n_classes), dtype=np.float32) for name in conditions}
        for i, (tr, te) in enumerate(cv_splits(labels, folds, seed, groups)):
            many = self.fit_proba_many([X[j] for j in tr], labels[tr],
                                       {name: [[c[j] for j in te]] for name, c in conditions.items()}, seed + i)
            for name, proba in many.items():
                out[name][te] = proba
        return out

    def cross_validated_proba(self, X: Sequence[np.ndarray], labels: np.ndarray, folds: int, seed: int,
                              groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Out-of-fold probabilities of every utterance and each one's CV fold (fold i fits with seed + i)."""
        labels = np.asarray(labels)
        proba = np.zeros((len(labels), self.n_classes), dtype=np.float32)
        fold_of = np.zeros(len(labels), dtype=np.int64)
        for i, (tr, te) in enumerate(cv_splits(labels, folds, seed, groups)):
            proba[te] = self.fit_proba([X[j] for j in tr], labels[tr], [[X[j] for j in te]], seed + i)
            fold_of[te] = i
        return proba, fold_of

    def validation_ua(self, X: Sequence[np.ndarray], labels: np.ndarray, folds: int, seed: int,
                      groups: np.ndarray | None = None) -> float:
        """UA of a CV over a scope's training utterances: the held-out protocols' iteration selector."""
        proba, _ = self.cross_validated_proba(X, labels, select_folds(labels, folds), seed, groups)
        return float(balanced_accuracy_score(labels, np.argmax(proba, axis=1)))


def mean_view(views: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Per utterance, the mean of its segment vectors over the views (summed in view order, float32)."""
    out = []
    for j in range(len(views[0])):
        acc = np.zeros(np.shape(views[0][j]), dtype=np.float32)
        for v in views:
            acc += v[j] / len(views)
        out.append(acc)
    return out


@dataclass(frozen=True)
class Stage:
    """An utterance stage and its facts. `inputs`: what it can read per segment from the fold jobs (the first
    is the default; with more than one, it owns `stage.input`, which picks); `keys`: the `stage.*` keys it
    reads (they apply only under it); `final_model`: the fitted `EmotionModel` can predict with it (it fits the
    forest itself, so only the forest says so)."""

    name: str
    cls: type[UtteranceStage]
    inputs: tuple[str, ...] = ("posterior",)
    keys: tuple[str, ...] = ()
    final_model: bool = False
    description: str = ""

    def input_of(self, spec: StageSpec) -> str:
        return spec.input if "stage.input" in self.keys else self.inputs[0]


STAGES: Registry[Stage] = Registry("stage")


def register_stage(name: str, *, inputs: tuple[str, ...] = ("posterior",), keys: tuple[str, ...] = (),
                   final_model: bool = False, description: str = "") -> Callable[[type], type]:
    """Register an `UtteranceStage` subclass under `name` (its `name` attribute is set to it)."""
    bad = [i for i in inputs if i not in STAGE_INPUTS]
    if not inputs or bad:
        raise ValueError(f"stage {name!r}: inputs must be some of {', '.join(STAGE_INPUTS)}; got {inputs}")
    if len(inputs) > 1 and "stage.input" not in keys:
        keys = ("stage.input", *keys)
    keys = owned_keys("stage", name, keys, "stage.")

    def make(cls: type) -> Stage:
        if not (isinstance(cls, type) and issubclass(cls, UtteranceStage)):
            raise TypeError(f"stage {name!r}: register an UtteranceStage subclass, got {cls!r}")
        cls.name = name
        return Stage(name, cls, tuple(inputs), tuple(keys), final_model, description or first_line(cls.__doc__))
    return STAGES.decorator(make)


@register_stage("forest", final_model=True, keys=("stage.test_views",))
class ForestStage(UtteranceStage):
    """The paper's stage: statistics of the posteriors -> random forest; a test utterance's fold networks are
    averaged before the statistics (`stage.test_views: mean`) or its probabilities after (`each`)."""

    @classmethod
    def spec_problems(cls, spec: StageSpec) -> list[str]:
        from dsl.config import STAGE_TEST_VIEWS

        if spec.test_views not in STAGE_TEST_VIEWS:
            return [f"stage.test_views {spec.test_views!r} is unknown; allowed: {', '.join(STAGE_TEST_VIEWS)}"]
        return []

    def fit_proba(self, train, labels, views, seed):
        return self.fit_proba_many(train, labels, {"": views}, seed)[""]

    def fit_proba_many(self, train, labels, tests, seed):
        forest = fit_forest(utterance_statistics(train), labels, seed, self.n_jobs)
        return {name: self._predict(forest, views) for name, views in tests.items()}

    def _predict(self, forest, views) -> np.ndarray:
        """One test set's probabilities: from the mean view, or (`test_views: each`) the mean of each view's."""
        if self.spec.test_views == "each" and len(views) > 1:
            proba = np.zeros((len(views[0]), self.n_classes), dtype=np.float32)
            for v in views:  # in view (fold) order: the sum does not depend on completion order
                proba += forest_predict(forest, utterance_statistics(v), self.n_classes) / len(views)
            return proba
        return forest_predict(forest, utterance_statistics(views[0] if len(views) == 1 else mean_view(views)),
                              self.n_classes)

    def cross_validated_proba(self, X, labels, folds, seed, groups=None):  # the statistics once, not per fold
        return cross_validated_proba(utterance_statistics(X), labels, self.n_classes, folds, seed, groups,
                                     self.n_jobs)

    def validation_ua(self, X, labels, folds, seed, groups=None):
        return validation_ua(utterance_statistics(X), labels, self.n_classes, folds, seed, groups, self.n_jobs)


@register_stage("acp", inputs=("embedding", "posterior"),
                keys=("stage.input", "stage.epsilon", "stage.dim", "stage.with_mean", "stage.epochs", "stage.lr",
                      "stage.batch_size", "stage.weight_decay"))
class ACPStage(UtteranceStage):
    """Attentive correlation pooling; test probabilities averaged over the fold networks' views."""

    @classmethod
    def spec_problems(cls, spec: StageSpec) -> list[str]:
        p = []
        if not 0.0 <= spec.epsilon < 1.0:
            p.append(f"stage.epsilon = {spec.epsilon} is outside [0, 1)")
        if spec.dim < 2 or spec.epochs < 1 or spec.batch_size < 1 or spec.lr <= 0 or spec.weight_decay < 0:
            p.append(f"stage: dim >= 2, epochs >= 1, batch_size >= 1, lr > 0, weight_decay >= 0 required; got {spec}")
        return p

    def model(self, seed: int):
        from dsl.method.acp import ACP

        s = self.spec
        return ACP(self.n_classes, dim=s.dim, epsilon=s.epsilon, with_mean=s.with_mean, epochs=s.epochs, lr=s.lr,
                   batch_size=s.batch_size, weight_decay=s.weight_decay, seed=seed, num_threads=self.num_threads)

    def fit_proba(self, train, labels, views, seed):
        return self.fit_proba_many(train, labels, {"": views}, seed)[""]

    def fit_proba_many(self, train, labels, tests, seed):
        acp = self.model(seed).fit(train, labels)
        out = {}
        for name, views in tests.items():
            out[name] = np.zeros((len(views[0]), self.n_classes), dtype=np.float32)
            for v in views:
                out[name] += acp.predict_proba(v) / len(views)
        return out


def make_stage(spec: StageSpec, n_classes: int, n_jobs: int | None = None, num_threads: int = 0) -> UtteranceStage:
    return STAGES.get(spec.name).cls(spec, n_classes, n_jobs, num_threads)


def standardised(x: np.ndarray, n_reference: int, reference: np.ndarray | None = None) -> np.ndarray:
    """float32 `x` standardised per column with the mean/std of the first `n_reference` rows of `reference`
    (default: of `x` itself; a network's perturbed outputs take the statistics of its clean ones)."""
    x = np.asarray(x, dtype=np.float32)
    ref = (x if reference is None else np.asarray(reference, dtype=np.float32))[:n_reference]
    return (x - ref.mean(axis=0)) / np.maximum(ref.std(axis=0), 1e-6)


def per_utterance(rows: np.ndarray, offsets: np.ndarray, utterances: np.ndarray) -> dict[int, np.ndarray]:
    """Views of `rows` (the segments of `utterances`, concatenated in that order) per utterance."""
    utterances = np.asarray(utterances)
    starts = np.concatenate([[0], np.cumsum(offsets[utterances + 1] - offsets[utterances])])
    return {int(u): rows[starts[j]:starts[j + 1]] for j, u in enumerate(utterances)}
