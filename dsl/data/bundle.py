"""Corpus + cached features in the one picklable, zero-copy-friendly bundle a chain consumes."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsl.config import ChainConfig
from dsl.data.audio import BadAudioError
from dsl.data.corpora import Corpus, CorpusError, load_corpus
from dsl.data.feature_cache import extract_corpus

log = logging.getLogger(__name__)

# How to go on without the bad files (the config key and the `dsl-sweep run` flag that set it).
SKIP_HINT = ("--bad-files skip (bad_files: skip) leaves them out; `dsl-sweep validate` lists every problem of "
             "the corpus")


@dataclass(frozen=True)
class CorpusData:
    """Frames of all utterances plus per-utterance labels and speakers.

    `frames` may be a read-only memmap or a Ray object-store view: nothing here writes to it.
    """

    frames: np.ndarray  # float32 (total_frames + 1, width); last row pads short utterances
    frame_offsets: np.ndarray  # int64 (n_utterances + 1,)
    labels: np.ndarray  # int64 (n_utterances,)
    speakers: np.ndarray  # str (n_utterances,)
    label_names: tuple[str, ...]
    paths: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # bad files left out under bad_files=skip
    layers: int = 1  # SSL layer sum: each frame row holds `layers` stacked hidden states (dsl.training.layer_sum)
    # `train.aux_data` (MTL-AUG's unlabelled corpus): its frames and per-file offsets, laid out like `frames`
    aux_frames: np.ndarray | None = None
    aux_offsets: np.ndarray | None = None

    @property
    def n_utterances(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def speaker_ids(self) -> np.ndarray:
        return np.unique(self.speakers, return_inverse=True)[1]

    def subset(self, indices: np.ndarray) -> CorpusData:
        """The utterances at `indices` (in that order), their frames copied into a new packed array; nothing of
        the others (frames, labels, speakers, paths) is kept. The `train.aux_data` frames stay as they are."""
        idx = np.asarray(indices, dtype=np.int64)
        starts, ends = self.frame_offsets[idx], self.frame_offsets[idx + 1]
        lengths = ends - starts
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        frames = np.empty((int(offsets[-1]) + 1, *self.frames.shape[1:]), dtype=self.frames.dtype)
        for i, (a, b) in enumerate(zip(starts, ends)):
            frames[offsets[i]:offsets[i + 1]] = self.frames[a:b]
        frames[-1] = self.frames[-1]  # the padding row
        return CorpusData(frames=frames, frame_offsets=offsets, labels=np.asarray(self.labels)[idx].copy(),
                          speakers=np.asarray(self.speakers)[idx].copy(), label_names=self.label_names,
                          paths=tuple(self.paths[int(i)] for i in idx), skipped=dict(self.skipped),
                          layers=self.layers, aux_frames=self.aux_frames, aux_offsets=self.aux_offsets)


def load_corpus_for(cfg: ChainConfig) -> tuple[Corpus, dict[str, str]]:
    """The config's corpus; under `bad_files: skip`, unlabelled or missing files are left out and returned."""
    try:
        corpus = load_corpus(cfg.corpus, Path(cfg.data))
        if cfg.protocol.name == "cross_corpus":  # both corpora, over their shared classes
            from dsl.data.cross_corpus import shared_corpus

            corpus = shared_corpus(corpus, load_corpus(cfg.protocol.test_corpus, Path(cfg.protocol.test_data)),
                                   cfg.protocol.label_map)
        return corpus, {}
    except CorpusError as exc:
        if cfg.bad_files != "skip" and exc.partial is not None and len(exc.partial) > 0:
            raise CorpusError(f"{exc}\n  ({SKIP_HINT})", exc.problems, exc.partial) from None
        if cfg.bad_files != "skip" or exc.partial is None or len(exc.partial) == 0:
            raise
        _log_skipped(exc.problems)
        return exc.partial, exc.problems


def _log_skipped(problems: dict[str, str]) -> None:
    log.warning("skipping %d bad file(s):\n  %s", len(problems),
                "\n  ".join(f"{p}: {why}" for p, why in problems.items()))


def _log_conversions(cfg: ChainConfig, paths: Sequence[Path], offsets: np.ndarray) -> None:
    """Once per run: how many files were resampled or down-mixed, and which utterances padded (by name)."""
    from dsl.data.conversions import audio_conversions

    conv = audio_conversions(paths, cfg.features.sample_rate, offsets, cfg.segments.length)
    for line in conv.lines():
        log.info(line)
    if (padded := conv.padding_line()) is not None:
        log.warning(padded)


def prepare_data(cfg: ChainConfig, corpus: Corpus | None = None, show_progress: bool = True,
                 skipped: dict[str, str] | None = None) -> CorpusData:
    """Parse the corpus and load (or extract once) its frames (`cfg.features`), honouring `cfg.bad_files`.

    Under `skip`, files whose audio is unusable are dropped and listed in `CorpusData.skipped`
    (with any `skipped` already found while parsing); the good files' features stay cached.
    With `train.aux_data`, the unlabelled corpus's frames are extracted (or loaded) too (`dsl.data.aux_data`).
    """
    skipped = dict(skipped or {})
    if corpus is None:
        corpus, parse_skipped = load_corpus_for(cfg)
        skipped.update(parse_skipped)
    try:
        store = extract_corpus(corpus.paths, cfg.features, cfg.cache_dir or None, show_progress)
    except BadAudioError as exc:
        if cfg.bad_files != "skip":
            raise BadAudioError(exc.problems, SKIP_HINT) from None
        _log_skipped(exc.problems)
        skipped.update(exc.problems)
        corpus = corpus.subset([i for i, p in enumerate(corpus.paths) if str(p) not in exc.problems])
        store = extract_corpus(corpus.paths, cfg.features, cfg.cache_dir or None, show_progress)
    _log_conversions(cfg, corpus.paths, store.offsets)
    aux = None
    if cfg.train.aux_data:
        from dsl.data.aux_data import load_aux_frames

        aux, aux_skipped = load_aux_frames(cfg, show_progress)
        skipped.update(aux_skipped)
    return CorpusData(
        frames=store.frames, frame_offsets=store.offsets, labels=corpus.labels,
        speakers=np.asarray(corpus.speakers, dtype=str), label_names=corpus.label_names,
        paths=tuple(str(p) for p in corpus.paths), skipped=skipped, layers=store.layers,
        aux_frames=None if aux is None else aux.frames, aux_offsets=None if aux is None else aux.offsets)
