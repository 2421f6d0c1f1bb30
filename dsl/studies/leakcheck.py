"""`dsl-sweep leakcheck`: the label-perturbation test, run on a user's own configuration.

A protocol is leak-free when no label of a scored utterance can reach that utterance's score by any
path: the fold plan, targets, normalisation, early stopping, the utterance stage, the choice of iteration.
The test that can see a violation, whatever its path: run the chain twice on a small subset of the corpus,
the second time with the labels of one outer test fold rotated (class k -> k + 1 mod K; for the speaker
protocol that fold is a held-out speaker, for cross_corpus the test corpus), and compare, per iteration,
everything the run says about those utterances: their outer fold, predicted class, the stage's probabilities
and the networks' segment posteriors (all bit for bit, unrounded), their predicted class under each test
condition (`eval.noise`, `eval.adversarial`), and their fold's validation UA and selected iteration. Any difference is a leak (exit 1, naming the first utterance that moved). The
perturbation must also be seen to work: the other folds' predictions must move (their training labels
changed); a plan with one scored fold (cross_corpus) instead gets a control run that relabels training
utterances and must move the test fold's predictions. A check that sees nothing move anywhere proves
nothing (exit 2).

Everything else is the user's config: protocol (plugins included), rule, backbone, stage, iterations,
training recipe and runner. The subset (`speakers`, default 3, taken in name order; for cross_corpus that
many of each corpus) keeps the check to minutes; speaker-grouped protocols get at most one outer fold per
speaker of the subset (and one inner fold per speaker of an outer training set).
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsl.config import ChainConfig, ConfigError, load_config
from dsl.data.bundle import CorpusData, load_corpus_for, prepare_data
from dsl.data.corpora import Corpus
from dsl.execution.step_cache import StepCache
from dsl.pipeline.chain import IterationResult, run_chain
from dsl.pipeline.checks import check_config, check_data
from dsl.protocols.plans import PROTOCOLS, is_leak_free, outer_partition

DEFAULT_SPEAKERS = 3


@dataclass(frozen=True)
class Snapshot:
    """What one iteration of a run says about every utterance, as the check compares it (unrounded)."""

    iteration: int
    fold: np.ndarray  # per utterance, its outer fold (-1: never scored)
    predicted: np.ndarray
    proba: np.ndarray  # the stage's probabilities, float32
    segments: np.ndarray  # the networks' segment posteriors the scores are taken from, float32
    val_ua: list[float] | None  # held out: per scope
    selected: list[int] | None  # held out: per scope
    conditions: dict[str, np.ndarray] = field(default_factory=dict)  # eval.*: per test condition, predicted


def snapshot(r: IterationResult) -> Snapshot:
    assert r.utterance_probabilities is not None and r.posteriors is not None and r.utterance_predictions is not None
    return Snapshot(r.iteration, np.array([u["fold"] for u in r.utterances], dtype=np.int64),
                    np.asarray(r.utterance_predictions), np.asarray(r.utterance_probabilities),
                    np.asarray(r.posteriors), r.val_ua, r.selected_iterations,
                    {name: np.asarray(c["predicted"], dtype=np.int64) for name, c in r.conditions.items()
                     if "predicted" in c})


@dataclass(frozen=True)
class IterationCheck:
    """One iteration: how many of the relabelled utterances moved, in which way, and how many others did."""

    iteration: int
    n_perturbed: int
    fold_moved: int  # relabelled utterances that the plan put into another outer fold
    predicted_moved: int
    proba_moved: int
    max_proba_change: float
    segments_moved: int  # relabelled utterances with any segment posterior that differs
    max_segment_change: float
    val_ua_moved: bool | None  # the validation UA of their scope(s) (None: transductive, there is none)
    pick_moved: bool | None  # the iteration selected for their scope(s)
    conditions_moved: int  # relabelled utterances whose prediction under any test condition moved
    others_moved: int  # scored utterances outside the relabelled fold whose prediction or probabilities moved
    n_others: int
    first: str | None  # the first relabelled utterance (or score) that moved, and how

    @property
    def leaked(self) -> bool:
        return bool(self.fold_moved or self.predicted_moved or self.proba_moved or self.segments_moved
                    or self.conditions_moved or self.val_ua_moved or self.pick_moved)


def _same(a: Sequence[Any] | None, b: Sequence[Any] | None, scopes: Sequence[int]) -> bool | None:
    if a is None or b is None:
        return None if a is None and b is None else False
    return all(a[s] == b[s] for s in scopes)


def compare(base: Sequence[Snapshot], after: Sequence[Snapshot], perturbed: np.ndarray, files: Sequence[str],
            segment_utterance: np.ndarray) -> list[IterationCheck]:
    """Per iteration, what moved between two runs for the `perturbed` utterances (a boolean mask) and the rest.
    Runs of different lengths, or over other utterances, are an error, never silently cut to the shorter."""
    if len(base) != len(after):
        raise ValueError(f"the runs have {len(base)} and {len(after)} iterations: they cannot be compared")
    out = []
    perturbed = np.asarray(perturbed, dtype=bool)
    scopes = sorted({int(f) for f in base[0].fold[perturbed] if f >= 0})
    for a, b in zip(base, after, strict=True):
        if a.iteration != b.iteration or a.proba.shape != b.proba.shape or a.segments.shape != b.segments.shape:
            raise ValueError(f"iteration {a.iteration} vs {b.iteration}: the runs cover different utterances")
        if sorted(a.conditions) != sorted(b.conditions):
            raise ValueError(f"iteration {a.iteration}: the runs were scored under different test conditions")
        fold = a.fold != b.fold
        pred = a.predicted != b.predicted
        dp = np.abs(a.proba.astype(np.float64) - b.proba.astype(np.float64)).max(axis=1)
        proba = np.any(a.proba != b.proba, axis=1)
        cond = {name: a.conditions[name] != b.conditions[name] for name in a.conditions}
        cond_any = np.zeros(len(files), dtype=bool)
        for moved in cond.values():
            cond_any |= moved
        seg_diff = np.any(a.segments != b.segments, axis=1)
        seg = np.zeros(len(files), dtype=bool)
        np.logical_or.at(seg, segment_utterance, seg_diff)
        ds = np.zeros(len(files))
        np.maximum.at(ds, segment_utterance, np.abs(a.segments.astype(np.float64) - b.segments.astype(np.float64)).max(axis=1))
        held_out = a.val_ua is not None
        val_moved = None if not held_out else not _same(a.val_ua, b.val_ua, scopes)
        pick_moved = None if not held_out else not _same(a.selected, b.selected, scopes)
        others = ~perturbed & (a.fold >= 0)
        first = None
        for u in np.flatnonzero(perturbed & (fold | pred | proba | seg | cond_any)):
            what = [f"outer fold {a.fold[u]} -> {b.fold[u]}"] if fold[u] else []
            what += [f"predicted {a.predicted[u]} -> {b.predicted[u]}"] if pred[u] else []
            what += [f"probabilities moved by up to {dp[u]:.3g}"] if proba[u] else []
            what += [f"segment posteriors moved by up to {ds[u]:.3g}"] if seg[u] else []
            what += [f"predicted under {name} {a.conditions[name][u]} -> {b.conditions[name][u]}"
                     for name, moved in cond.items() if moved[u]]
            first = f"{Path(files[u]).name}: {', '.join(what)}"
            break
        if first is None and val_moved:
            first = f"validation UA of outer fold(s) {scopes}: {[a.val_ua[s] for s in scopes]} -> " \
                    f"{[b.val_ua[s] for s in scopes]}"
        if first is None and pick_moved:
            first = f"selected iteration of outer fold(s) {scopes}: {[a.selected[s] for s in scopes]} -> " \
                    f"{[b.selected[s] for s in scopes]}"
        out.append(IterationCheck(
            a.iteration, int(perturbed.sum()), int((perturbed & fold).sum()), int((perturbed & pred).sum()),
            int((perturbed & proba).sum()), float(dp[perturbed].max(initial=0.0)), int((perturbed & seg).sum()),
            float(ds[perturbed].max(initial=0.0)), val_moved, pick_moved, int((perturbed & cond_any).sum()),
            int((others & (pred | proba)).sum()),
            int(others.sum()), first))
    return out


@dataclass
class LeakCheck:
    """The outcome: per iteration what moved, whether the perturbation was seen to work, and how it ran."""

    protocol: str
    leak_free: bool  # as registered
    outer: str
    subset: str  # which utterances the check ran on
    relabelled: list[str]  # file names of the relabelled fold
    iterations: list[IterationCheck]
    conditions: list[str] = field(default_factory=list)  # the test conditions (eval.*) compared too
    control_moved: int | None = None  # one-fold plans: relabelled-fold utterances the control run moved
    seconds: list[float] = field(default_factory=list)  # per run

    @property
    def leaked(self) -> bool:
        return any(c.leaked for c in self.iterations)

    @property
    def detectable(self) -> bool:
        """The relabelling changed something the check can see: other folds moved (or the control run did)."""
        if self.control_moved is not None:
            return self.control_moved > 0
        return any(c.others_moved for c in self.iterations)

    @property
    def exit_code(self) -> int:
        """1: a relabelled utterance's score moved; 2: nothing moved anywhere (inconclusive); 0: clean."""
        return 1 if self.leaked else (0 if self.detectable else 2)

    def first_leak(self) -> str | None:
        return next((f"iteration {c.iteration}: {c.first}" for c in self.iterations if c.leaked), None)

    def format(self) -> str:
        yes = {None: "-", True: "MOVED", False: "same"}
        cond = bool(self.conditions)  # a column for the predictions under the test conditions, when there are any
        lines = [f"{'iter':>4} {'fold':>5} {'pred':>5} {'proba':>5} {'max Δp':>9} {'segs':>5} {'max Δseg':>9} "
                 + (f"{'cond':>5} " if cond else "") + f"{'val UA':>6} {'pick':>6} | other folds moved"]
        for c in self.iterations:
            lines.append(f"{c.iteration:>4} {c.fold_moved:>5} {c.predicted_moved:>5} {c.proba_moved:>5} "
                         f"{c.max_proba_change:>9.2g} {c.segments_moved:>5} {c.max_segment_change:>9.2g} "
                         + (f"{c.conditions_moved:>5} " if cond else "")
                         + f"{yes[c.val_ua_moved]:>6} {yes[c.pick_moved]:>6} | {c.others_moved}/{c.n_others}")
        if cond:
            lines.append(f"cond: relabelled utterances whose prediction moved under any of {', '.join(self.conditions)}")
        n = len(self.relabelled)
        if self.control_moved is not None:
            lines.append(f"control run (training labels rotated): {self.control_moved}/{n} test utterances moved")
        if self.leaked:
            lines.append(f"LEAK: {self.first_leak()} (exit 1)")
        elif not self.detectable:
            lines.append("INCONCLUSIVE: the relabelling moved nothing anywhere, so the check cannot see a leak "
                         "(exit 2)")
        else:
            seen = (f"the control run moved {self.control_moved}" if self.control_moved is not None else
                    f"up to {max(c.others_moved for c in self.iterations)} utterances of the other folds moved")
            lines.append(f"clean: no outer fold, prediction, probability, segment posterior, "
                         f"{'prediction under a test condition, ' if cond else ''}validation UA or "
                         f"selected iteration of the {n} relabelled utterances moved at any iteration, while {seen} "
                         "(exit 0)")
        return "\n".join(lines)


def rotated(labels: np.ndarray, mask: np.ndarray, n_classes: int) -> np.ndarray:
    """`labels` with those under `mask` moved to the next class (k -> k + 1 mod K)."""
    out = np.asarray(labels).copy()
    out[mask] = (out[mask] + 1) % n_classes
    return out


def subset_corpus(corpus: Corpus, cfg: ChainConfig, speakers: int) -> tuple[Corpus, str]:
    """The first `speakers` speakers (in name order) of the corpus, or of each corpus for cross_corpus; and
    what was kept, in words. `speakers` <= 0 keeps everything."""
    spk = np.asarray(corpus.speakers, dtype=str)
    parts = [np.ones(len(spk), dtype=bool)]
    if cfg.protocol.name == "cross_corpus":
        from dsl.data.cross_corpus import test_utterances

        test = np.zeros(len(spk), dtype=bool)
        test[test_utterances(corpus.paths, cfg.protocol.test_data)] = True
        parts = [~test, test]
    keep = np.zeros(len(spk), dtype=bool)
    kept: list[str] = []
    for part in parts:
        names = sorted(set(spk[part]))
        chosen = names if speakers <= 0 else names[:speakers]
        keep |= part & np.isin(spk, chosen)
        kept += chosen
    text = f"{len(kept)} speaker(s) ({', '.join(kept)}), {int(keep.sum())} of {len(spk)} utterances"
    return corpus.subset(np.flatnonzero(keep)), text


def fitted_config(cfg: ChainConfig, corpus: Corpus) -> ChainConfig:
    """The config on the subset: the forest CV of a transductive protocol gets at most as many folds as the
    smallest class has utterances; a speaker-grouped protocol at most one outer fold per speaker, and (nested)
    at most one inner fold per speaker of an outer training set."""
    changes: dict[str, int] = {}
    counts = np.bincount(np.asarray(corpus.labels))
    smallest = int(counts[counts > 0].min()) if counts.size else 0
    if 2 <= smallest < cfg.protocol.eval_folds:
        changes["protocol.eval_folds"] = smallest
    info = PROTOCOLS.get(cfg.protocol.name)
    if info is not None and info.grouped:
        n_speakers = len(set(corpus.speakers))
        folds = min(cfg.protocol.folds, n_speakers)
        if folds != cfg.protocol.folds:
            changes["protocol.folds"] = folds
        if info.nested:
            inner = n_speakers - -(-n_speakers // folds)  # the fewest speakers an outer training set keeps
            if inner < 2:
                raise ConfigError(f"leakcheck: protocol {cfg.protocol.name!r} needs at least 3 speakers for its "
                                  f"inner folds; give --speakers 3 or more (got {n_speakers})")
            if cfg.protocol.inner_folds > inner:
                changes["protocol.inner_folds"] = inner
    return cfg.replace(**changes) if changes else cfg


def snapshots(cfg: ChainConfig, data: CorpusData, step_cache: StepCache | None = None,
              show_progress: bool = False) -> tuple[list[Snapshot], float]:
    start = time.perf_counter()
    with warnings.catch_warnings():  # a small subset's fold may lack a class: its per-fold UA says so, not this
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        result = run_chain(cfg, data, show_progress=show_progress, step_cache=step_cache)
    return [snapshot(r) for r in result.iterations], time.perf_counter() - start


def leakcheck(cfg: ChainConfig, data: CorpusData, subset: str = "", step_cache: StepCache | None = None,
              show_progress: bool = False, on_run: Callable[[str, float], None] | None = None) -> LeakCheck:
    """Run the chain on `data`, then with the labels of its first outer test fold rotated, and compare."""
    from dsl.data.segments import build_segments

    files = list(data.paths)
    seg_utt = build_segments(data.frame_offsets, cfg.segments, warn=False).utt
    base, t0 = snapshots(cfg, data, step_cache, show_progress)
    if on_run:
        on_run("original labels", t0)
    scored = base[0].fold >= 0
    fold0 = int(base[0].fold[scored].min())
    mask = base[0].fold == fold0
    after, t1 = snapshots(cfg, dataclasses.replace(data, labels=rotated(data.labels, mask, data.n_classes)),
                          step_cache, show_progress)
    if on_run:
        on_run(f"outer fold {fold0} relabelled", t1)
    checks = compare(base, after, mask, files, seg_utt)
    check = LeakCheck(cfg.protocol.name, is_leak_free(cfg.protocol.name), outer_partition(cfg.protocol), subset,
                      [Path(files[u]).name for u in np.flatnonzero(mask)], checks, list(base[0].conditions),
                      seconds=[t0, t1])
    if not (scored & ~mask).any():  # one scored fold: relabel every other never-scored (training) utterance
        train = np.flatnonzero(~scored)[::2]
        if not len(train):
            raise ConfigError("leakcheck: every utterance is in the one scored fold; nothing else can be relabelled")
        control_mask = np.zeros(len(files), dtype=bool)
        control_mask[train] = True
        control, t2 = snapshots(cfg, dataclasses.replace(data, labels=rotated(data.labels, control_mask,
                                                                              data.n_classes)),
                                step_cache, show_progress)
        if on_run:
            on_run("control: training labels relabelled", t2)
        moved = compare(base, control, mask, files, seg_utt)
        check.control_moved = max(max(c.predicted_moved, c.proba_moved) for c in moved)
        check.seconds.append(t2)
    return check


def run_leakcheck(config_path: str | None, preset: str | None, overrides: Mapping[str, Any],
                  speakers: int = DEFAULT_SPEAKERS, quiet: bool = False, step_cache: str = "") -> LeakCheck:
    """`dsl-sweep leakcheck`: load the config and a subset of its corpus, run the check and print it as it goes
    (`LeakCheck.exit_code` is the command's exit code)."""
    cfg = load_config(config_path, preset, overrides)
    if not cfg.data:
        raise ConfigError("no data path: give --data DIR (or `data:` in the config file)")
    if cfg.seeds:
        raise ConfigError("leakcheck runs one seed: give --seed N, not --seeds")
    check_config(cfg)
    corpus, skipped = load_corpus_for(cfg)
    corpus, kept = subset_corpus(corpus, cfg, speakers)
    given, cfg = cfg, fitted_config(cfg, corpus)
    fitted = [f"protocol.{k} {getattr(given.protocol, k)} -> {getattr(cfg.protocol, k)}"
              for k in ("folds", "inner_folds", "eval_folds") if getattr(given.protocol, k) != getattr(cfg.protocol, k)]
    check_data(cfg, corpus.labels, np.asarray(corpus.speakers), corpus.label_names)
    print(f"leakcheck: protocol {cfg.protocol.name} (registered leak_free: {str(is_leak_free(cfg.protocol.name)).lower()},"
          f" outer: {outer_partition(cfg.protocol)}, {cfg.protocol.folds} folds) | backbone {cfg.backbone} | rule "
          f"{cfg.labels.rule} | stage {cfg.stage.name} | iterations {cfg.iterations} | seed {cfg.seed}\n"
          f"subset: {kept}{'; fitted to it: ' + ', '.join(fitted) if fitted else ''}; the labels of outer fold 0 are rotated (class k -> k + 1 mod {len(corpus.label_names)}) "
          "and the chain is run again", flush=True)
    data = prepare_data(cfg, corpus, not quiet, skipped)

    def ran(what: str, seconds: float) -> None:
        print(f"run with {what}: {seconds:.0f} s", flush=True)

    check = leakcheck(cfg, data, kept, StepCache(step_cache) if step_cache else None, not quiet, ran)
    print(f"relabelled: {len(check.relabelled)} utterances of outer fold 0 (e.g. {', '.join(check.relabelled[:3])})")
    print(check.format(), flush=True)
    return check
