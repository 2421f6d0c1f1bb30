"""Test conditions beside clean speech (`eval.noise`, `eval.adversarial`): their names, the noisy features of a
chain's scored utterances, and the part of them one fold job scores.

Only test utterances are perturbed: a fold job scores its clean held-out and test utterances as ever, and in
addition the *scored* ones (its scope's test utterances under a held-out plan, its held-out fold under a
transductive one) under every condition. Training, normalisation, early stopping, the utterance stage's
training and the choice of iteration see clean training speech only, so a leak-free protocol stays leak-free.

Names: `<type>_<snr>dB` for noise (`white_10dB`, `babble_-5dB`), `<attack>_eps<eps>` for attacks
(`fgsm_eps0.1`); `noise_mean` and `attack_mean` are the means over a run's noise and attack conditions.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsl.config import AdversarialSpec, ChainConfig, ConfigError, EvalSpec, FeatureSpec, NoiseSpec
from dsl.data.audio import load_audio
from dsl.data.corpora import audio_files
from dsl.data.feature_cache import (
    file_fingerprint,
    load_file_entry,
    save_file_entry,
    variant_key,
)
from dsl.data.frontend import compute_features, feature_identity, stack_utterances
from dsl.robustness.noise import NOISE_FORMAT, NOISES, make_noise, mix_at_snr, utterance_rng
from dsl.runtime.paths import WriteTarget, check_writable, default_cache_dir
from dsl.runtime.progress import progress

NOISE_MEAN, ATTACK_MEAN = "noise_mean", "attack_mean"  # summaries over a run's noise / attack conditions
SUMMARY_METRICS = ("wa", "ua", "selected_wa", "selected_ua")


@dataclass(frozen=True)
class NoiseCondition:
    name: str
    noise_type: str
    snr: float


@dataclass(frozen=True)
class AttackCondition:
    name: str
    attack: str  # fgsm | pgd
    eps: float  # L-inf radius in the fold's feature standard deviations


def noise_conditions(spec: NoiseSpec) -> list[NoiseCondition]:
    return [NoiseCondition(f"{t}_{snr:g}dB", t, float(snr)) for t in spec.types for snr in spec.snr]


def attack_conditions(spec: AdversarialSpec) -> list[AttackCondition]:
    return [AttackCondition(f"{a}_eps{eps:g}", a, float(eps)) for a in spec.attacks for eps in spec.eps]


def condition_names(spec: EvalSpec) -> tuple[str, ...]:
    """The conditions a run with `spec` scores, in the order its results list them."""
    return (*(c.name for c in noise_conditions(spec.noise)), *(c.name for c in attack_conditions(spec.adversarial)))


def summary_names(spec: EvalSpec) -> tuple[str, ...]:
    return (*((NOISE_MEAN,) if spec.noise.types else ()), *((ATTACK_MEAN,) if spec.adversarial.attacks else ()))


def is_attack(name: str) -> bool:
    return name == ATTACK_MEAN or "_eps" in name


def with_summaries(conditions: Mapping[str, Mapping]) -> dict[str, dict]:
    """`conditions` (name -> its scores) plus `noise_mean` / `attack_mean`: the mean of each metric in
    SUMMARY_METRICS over the noise / attack conditions that have it."""
    out = {k: dict(v) for k, v in conditions.items() if k not in (NOISE_MEAN, ATTACK_MEAN)}
    for summary, members in ((NOISE_MEAN, [v for k, v in out.items() if not is_attack(k)]),
                             (ATTACK_MEAN, [v for k, v in out.items() if is_attack(k)])):
        if members:
            out[summary] = {m: float(np.mean([v[m] for v in members])) for m in SUMMARY_METRICS
                            if all(v.get(m) is not None for v in members)}
    return out


# noisy features ------------------------------------------------------------------------------------------------
def needs_speech(noise: NoiseSpec) -> bool:
    """Some noise type of `noise` is made of other utterances (`eval.noise.babble_data`)."""
    return any(t in NOISES and NOISES[t].needs_speech for t in noise.types)


@dataclass(frozen=True)
class BabblePool:
    """The files babble is made of; a file that is also an utterance of the chain's corpus carries its speaker, so
    the babble of a test utterance can leave out every test speaker of its fold."""

    folder: str
    files: tuple[Path, ...]
    speakers: tuple[str | None, ...]

    @classmethod
    def of(cls, folder: str, corpus_paths: Sequence[str], corpus_speakers: Sequence[str]) -> BabblePool:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ConfigError(f"eval.noise.babble_data {folder!r}: not a folder (the speech that babble is made of)")
        files = tuple(audio_files(root))
        if not files:
            raise ConfigError(f"eval.noise.babble_data {folder!r}: no wav or flac files below it")
        speaker_of = {Path(p).resolve(): str(s) for p, s in zip(corpus_paths, corpus_speakers)}
        return cls(folder, files, tuple(speaker_of.get(f.resolve()) for f in files))

    def choose(self, excluded_speakers: frozenset[str], talkers: int, rng: np.random.Generator) -> list[Path]:
        """`talkers` distinct files, none spoken by an excluded speaker (drawn with `rng`)."""
        allowed = [i for i, s in enumerate(self.speakers) if s is None or s not in excluded_speakers]
        if len(allowed) < talkers:
            raise ConfigError(f"eval.noise.babble_data {self.folder!r}: only {len(allowed)} file(s) are not spoken by "
                              f"a test speaker of the fold, babble needs eval.noise.babble_talkers = {talkers}; use "
                              "another corpus for babble, or a speaker-grouped protocol")
        pick = rng.choice(len(allowed), size=talkers, replace=False)
        return [self.files[allowed[int(i)]] for i in sorted(pick)]


def noisy_features(paths: Sequence[str], utterances: Sequence[int], excluded_speakers: Mapping[int, frozenset[str]],
                   noise: NoiseSpec, spec: FeatureSpec, cache_dir: str | Path | None = None,
                   speakers: Sequence[str] = (), show_progress: bool = True, chunk: int = 16) -> dict[str, dict[int, np.ndarray]]:
    """Per noise condition, the features of each of `utterances` (indices into `paths`) with that noise added to
    its waveform, from the feature cache where present (keyed by file, front end, noise type, SNR, seed and the
    babble files used). `excluded_speakers[u]`: speakers whose files never enter u's babble; `speakers`: those of
    `paths` (so babble drawn from the same corpus knows its files' speakers)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    writable = not check_writable([WriteTarget.dir(cache, "feature cache")])  # else: computed, not kept
    conditions = noise_conditions(noise)
    pool = BabblePool.of(noise.babble_data, paths, speakers) if needs_speech(noise) else None
    ident = feature_identity(spec)
    out: dict[str, dict[int, np.ndarray]] = {c.name: {} for c in conditions}
    babble_signals: dict[Path, np.ndarray] = {}
    min_seconds = spec.win_length / spec.sample_rate

    def source(f: Path) -> np.ndarray:
        if f not in babble_signals:
            babble_signals[f] = load_audio(f, spec.sample_rate, min_seconds)
        return babble_signals[f]

    bar = progress(total=len(utterances), desc="noisy test features", unit="file", disable=not show_progress)
    for start in range(0, len(utterances), chunk):
        todo: list[tuple[int, NoiseCondition, str]] = []
        plans: dict[tuple[int, str], tuple[np.random.Generator, list[Path]]] = {}
        for u in utterances[start:start + chunk]:
            path = Path(paths[u])
            for t in noise.types:
                rng = utterance_rng(noise.seed, path, t)
                chosen = (pool.choose(excluded_speakers.get(u, frozenset()), noise.babble_talkers, rng)
                          if pool is not None and NOISES[t].needs_speech else [])
                plans[(u, t)] = (rng, chosen)
                for c in (c for c in conditions if c.noise_type == t):
                    variant = {"noise": t, "snr": c.snr, "seed": noise.seed, "format": NOISE_FORMAT,
                               "babble": [file_fingerprint(f) for f in chosen]}
                    key = variant_key(path, spec, variant, ident)
                    feats = load_file_entry(key, cache)
                    if feats is None:
                        todo.append((u, c, key))
                    else:
                        out[c.name][u] = feats
        if todo:
            clean = {u: load_audio(paths[u], spec.sample_rate, min_seconds) for u in sorted({u for u, _, _ in todo})}
            needed = {(u, c.noise_type) for u, c, _ in todo}
            noises = {(u, t): make_noise(t, len(clean[u]), rng, [source(f) for f in chosen])
                      for (u, t), (rng, chosen) in plans.items() if (u, t) in needed}
            signals = [mix_at_snr(clean[u], noises[(u, c.noise_type)], c.snr) for u, c, _ in todo]
            for (u, c, key), feats in zip(todo, compute_features(signals, spec)):
                if writable:
                    save_file_entry(key, cache, feats)
                out[c.name][u] = feats
        bar.update(len(utterances[start:start + chunk]))
    bar.close()
    return out


# what a fold job scores -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobConditions:
    """The conditions one fold job scores beside its clean input: its scored utterances with each noise (their
    frames stacked like the corpus's, last row padding) and under each attack."""

    utterances: np.ndarray  # the job's scored utterances, in the order its condition outputs list their segments
    noisy: tuple[tuple[str, np.ndarray, np.ndarray], ...] = ()  # (name, frames (total + 1, width), offsets)
    attacks: tuple[AttackCondition, ...] = ()
    pgd_steps: int = 5

    @property
    def names(self) -> tuple[str, ...]:
        return (*(n for n, _, _ in self.noisy), *(a.name for a in self.attacks))

    def key_parts(self) -> list:
        """What the step cache hashes: everything that can change the job's condition outputs."""
        parts: list = ["conditions", np.asarray(self.utterances, dtype=np.int64), int(self.pgd_steps),
                       [[a.name, a.attack, a.eps] for a in self.attacks]]
        for name, frames, offsets in self.noisy:
            parts += [name, np.asarray(frames), np.asarray(offsets)]
        return parts


class ChainConditions:
    """A chain's conditions: the noisy features of its scored utterances (made, or read from the feature cache, once
    per chain) and its attacks; `for_job` hands a fold job its part."""

    def __init__(self, cfg: ChainConfig, paths: Sequence[str], speakers: np.ndarray, fold_of: np.ndarray,
                 show_progress: bool = True):
        self.cfg = cfg
        scored = np.flatnonzero(fold_of >= 0)
        test_speakers = {int(k): frozenset(str(s) for s in speakers[fold_of == k]) for k in np.unique(fold_of[scored])}
        excluded = {int(u): test_speakers[int(fold_of[u])] for u in scored}
        self.noisy = (noisy_features(paths, [int(u) for u in scored], excluded, cfg.eval.noise, cfg.features,
                                     cfg.cache_dir or None, [str(s) for s in speakers], show_progress)
                      if cfg.eval.noise.types else {})
        self.attacks = tuple(attack_conditions(cfg.eval.adversarial))
        self.names = condition_names(cfg.eval)

    def for_job(self, utterances: np.ndarray) -> JobConditions:
        utterances = np.asarray(utterances, dtype=np.int64)
        noisy = tuple((name, *stack_utterances([feats[int(u)] for u in utterances], self.cfg.features))
                      for name, feats in self.noisy.items())
        return JobConditions(utterances, noisy, self.attacks, self.cfg.eval.adversarial.pgd_steps)
