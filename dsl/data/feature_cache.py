"""On-disk feature cache: extract a corpus once, load it memory-mapped ever after.

Layout under the cache directory:
  corpora/<key>/frames.npy   one contiguous float32 (total_frames + 1, width) array (last row: padding)
  corpora/<key>/index.json   frame offsets per utterance, paths, feature spec, stacked layers per frame
  files/<ab>/<filekey>.npy   per-file features, so a failed or interrupted extraction keeps what it did; also
                             the features of changed waveforms (noisy test speech, `variant_key`)

`<key>` hashes the file list (absolute path, size, mtime) and the features' identity (the spec; for SSL
features also the checkpoint's fingerprint, `dsl.data.frontend.feature_identity`). Every entry is
written to a temporary name and renamed into place, so an interrupted run leaves no half entry.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsl.config import FeatureSpec
from dsl.data.audio import BadAudioError, load_audio
from dsl.data.frontend import compute_features, feature_identity, layers_of, stack_utterances
from dsl.runtime.notes import add_note
from dsl.runtime.paths import NotWritableError, WriteTarget, check_writable, default_cache_dir
from dsl.runtime.progress import progress

__all__ = ["FrameStore", "corpus_key", "default_cache_dir", "extract_corpus", "file_entry", "file_fingerprint", "file_key",
           "load_cached", "load_file_entry", "save_file_entry", "variant_key"]


@dataclass(frozen=True)
class FrameStore:
    """All frames of a corpus: `frames[offsets[u]:offsets[u+1]]` are utterance u; the last row pads."""

    frames: np.ndarray  # float32 (total + 1, width), often a read-only memmap or object-store view
    offsets: np.ndarray  # int64 (n_utterances + 1,)
    paths: tuple[str, ...]
    key: str = ""
    layers: int = 1  # SSL layer sum: each frame row is L stacked hidden states of width / L

    @property
    def n_utterances(self) -> int:
        return len(self.offsets) - 1

    def utterance(self, u: int) -> np.ndarray:
        return self.frames[self.offsets[u]:self.offsets[u + 1]]


def file_fingerprint(path: Path) -> list:
    """What identifies a file's content cheaply: its absolute path, size and modification time."""
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]


def corpus_key(paths: Sequence[str | Path], spec: FeatureSpec, identity: dict | None = None) -> str:
    """Hash of the file list (paths, sizes, mtimes) and the features' identity (`feature_identity(spec)`)."""
    ident = feature_identity(spec) if identity is None else identity
    return _digest({"files": [file_fingerprint(Path(p)) for p in paths], "spec": ident})


def file_key(path: Path, spec: FeatureSpec, identity: dict | None = None) -> str:
    ident = feature_identity(spec) if identity is None else identity
    return _digest({"file": file_fingerprint(path), "spec": ident})


def variant_key(path: Path, spec: FeatureSpec, variant: dict, identity: dict | None = None) -> str:
    """Key of a per-file entry computed from a changed waveform; `variant` says how (e.g. the noise added, with the
    fingerprints of any other files it reads), so each variant is cached beside the clean features."""
    ident = feature_identity(spec) if identity is None else identity
    return _digest({"file": file_fingerprint(path), "spec": ident, "variant": variant})


def file_entry(key: str, cache_dir: Path) -> Path:
    """Where the per-file entry `key` lives (`files/<ab>/<key>.npy`)."""
    return cache_dir / "files" / key[:2] / f"{key}.npy"


def load_file_entry(key: str, cache_dir: Path) -> np.ndarray | None:
    path = file_entry(key, cache_dir)
    return np.load(path) if path.exists() else None


def save_file_entry(key: str, cache_dir: Path, features: np.ndarray) -> None:
    _atomic_save_npy(file_entry(key, cache_dir), features)


def _atomic_save_npy(target: Path, array: np.ndarray) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):  # on a read-only disk the clean-up fails too: the first error counts
            Path(tmp).unlink(missing_ok=True)
        raise


def load_cached(key: str, cache_dir: Path) -> FrameStore | None:
    entry = cache_dir / "corpora" / key
    if not (entry / "index.json").exists():
        return None
    index = json.loads((entry / "index.json").read_text())
    frames = np.load(entry / "frames.npy", mmap_mode="r")
    return FrameStore(frames, np.asarray(index["offsets"], dtype=np.int64), tuple(index["paths"]), key,
                      int(index.get("layers", 1)))


def extract_corpus(paths: Sequence[str | Path], spec: FeatureSpec, cache_dir: str | Path | None = None,
                   show_progress: bool = True, chunk: int = 32) -> FrameStore:
    """Frames of every file (the spec's front end), from the cache when present; raises BadAudioError
    listing all bad files (and ConfigError for an unusable SSL checkpoint).

    Good files' features are cached per file before the error is raised, so fixing or skipping the
    bad files later recomputes nothing. A cache that cannot be written is refused before any file is
    decoded (`NotWritableError`), unless it already holds every file's features.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    paths = [Path(p) for p in paths]
    missing = {str(p): "file does not exist" for p in paths if not p.is_file()}
    if missing:
        raise BadAudioError(missing)
    ident = feature_identity(spec)
    key = corpus_key(paths, spec, ident)
    cached = load_cached(key, cache_dir)
    if cached is not None:
        return cached

    per_file: list[np.ndarray | None] = [None] * len(paths)
    todo: list[int] = []
    for i, p in enumerate(paths):
        cached_file = load_file_entry(file_key(p, spec, ident), cache_dir)
        if cached_file is not None:
            per_file[i] = cached_file
        else:
            todo.append(i)
    unwritable = check_writable([WriteTarget.dir(cache_dir, "feature cache")])
    if unwritable and todo:
        raise NotWritableError([f"{unwritable[0]}; it lacks the features of {len(todo)} of {len(paths)} file(s)"],
                               "give --cache-dir DIR (or set DSL_CACHE_DIR) on a writable disk")
    if unwritable:  # every file's features are there, only the corpus entry is missing: build it in memory
        frames, offsets = stack_utterances(per_file, spec)  # type: ignore[arg-type]
        return FrameStore(frames, offsets, tuple(str(p) for p in paths), key, layers_of(per_file))
    problems: dict[str, str] = {}
    desc = "log-Mel features" if spec.kind == "logmel" else f"{spec.kind} features"
    bar = progress(total=len(todo), desc=desc, unit="file", disable=not show_progress or not todo)
    saved = 0
    try:
        for start in range(0, len(todo), chunk):
            idx, signals = [], []
            for i in todo[start:start + chunk]:
                try:
                    signals.append(load_audio(paths[i], spec.sample_rate, spec.win_length / spec.sample_rate))
                    idx.append(i)
                except BadAudioError as exc:
                    problems.update(exc.problems)
            for i, feats in zip(idx, compute_features(signals, spec) if signals else []):
                save_file_entry(file_key(paths[i], spec, ident), cache_dir, feats)
                per_file[i] = feats
                saved += 1
            bar.update(len(todo[start:start + chunk]))
    except KeyboardInterrupt as exc:
        add_note(exc, f"the features of {saved} of {len(todo)} file(s) extracted so far are kept in {cache_dir}: "
                      "the next run goes on from there")
        raise
    finally:
        bar.close()
    if problems:
        raise BadAudioError(problems)
    return _write_corpus_entry(key, paths, per_file, spec, cache_dir)  # type: ignore[arg-type]


def _write_corpus_entry(key: str, paths: list[Path], per_file: list[np.ndarray], spec: FeatureSpec,
                        cache_dir: Path) -> FrameStore:
    frames, offsets = stack_utterances(per_file, spec)
    layers = layers_of(per_file)
    final = cache_dir / "corpora" / key
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{key}-"))
    try:
        np.save(tmp / "frames.npy", frames)
        (tmp / "index.json").write_text(json.dumps({
            "offsets": offsets.tolist(), "paths": [str(p) for p in paths], "spec": dataclasses.asdict(spec),
            "layers": layers}))
        try:
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / "index.json").exists():  # not a lost race: the entry is not there
                raise
            # else another process finished the same entry first: theirs is read back below
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    loaded = load_cached(key, cache_dir)
    assert loaded is not None
    return loaded
