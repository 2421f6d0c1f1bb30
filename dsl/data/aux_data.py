"""The optional unlabelled corpus of MTL-AUG (`train.aux_data`): every wav/flac below a folder, no labels.

Its frames come from the same front end and cache as the labelled corpus (`dsl.data.feature_cache.extract_corpus` with
the config's FeatureSpec), once per run; they feed only the auxiliary tasks (`dsl.training.mtl`), never the emotion
loss, and no label is ever read from them.
"""
from __future__ import annotations

import logging
from pathlib import Path

from dsl.config import ChainConfig, ConfigError
from dsl.data.audio import BadAudioError
from dsl.data.corpora import AUDIO_SUFFIXES, audio_files
from dsl.data.feature_cache import FrameStore, extract_corpus

log = logging.getLogger(__name__)


def aux_audio_files(folder: str | Path) -> list[Path]:
    """The folder's audio files (recursively, sorted); a ConfigError naming the folder when there are none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"train.aux_data {str(folder)!r}: not a folder (the unlabelled audio for MTL-AUG)")
    files = audio_files(root)
    if not files:
        raise ConfigError(f"train.aux_data {str(folder)!r}: no {' or '.join(AUDIO_SUFFIXES)} files below it")
    return files


def load_aux_frames(cfg: ChainConfig, show_progress: bool = True) -> tuple[FrameStore, dict[str, str]]:
    """Frames of `cfg.train.aux_data` with `cfg.features` (cached); under `bad_files: skip` unusable files are
    left out and returned (path -> problem), under `fail` they raise BadAudioError."""
    files = aux_audio_files(cfg.train.aux_data)
    cache = cfg.cache_dir or None
    try:
        return extract_corpus(files, cfg.features, cache, show_progress), {}
    except BadAudioError as exc:
        if cfg.bad_files != "skip":
            raise
        good = [f for f in files if str(f) not in exc.problems]
        if not good:
            raise ConfigError(f"train.aux_data {cfg.train.aux_data!r}: no usable audio file "
                              f"({len(exc.problems)} bad)") from exc
        log.warning("train.aux_data: skipping %d bad file(s):\n  %s", len(exc.problems),
                    "\n  ".join(f"{p}: {why}" for p, why in exc.problems.items()))
        return extract_corpus(good, cfg.features, cache, show_progress), dict(exc.problems)
