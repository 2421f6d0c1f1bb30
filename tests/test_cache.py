"""The feature cache: extract once, load memory-mapped, atomic entries, nothing good lost on errors."""
from __future__ import annotations

import numpy as np
import pytest

import dsl.data.feature_cache as cache
from dsl.config import FeatureSpec
from dsl.data.audio import BadAudioError, load_audio
from dsl.data.frontend import logmel_reference
from tests.support.data import write_tone

SPEC = FeatureSpec()


def _tones(folder, n=3):
    return [write_tone(folder / f"t{i}.wav", seconds=0.3 + 0.1 * i, freq=200 + 100 * i) for i in range(n)]


def test_second_run_does_not_touch_audio(tmp_path, monkeypatch) -> None:
    files = _tones(tmp_path / "wav")
    store = cache.extract_corpus(files, SPEC, tmp_path / "cache", show_progress=False)
    assert isinstance(store.frames, np.memmap) and store.frames.dtype == np.float32
    assert store.n_utterances == 3 and store.frames.shape[0] == store.offsets[-1] + 1  # + padding row
    ours, ref = np.exp(store.utterance(1)), np.exp(logmel_reference(load_audio(files[1]), SPEC))
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-6 * ref.max())  # float32 rounding in silent bands

    def no_audio(*a, **k):
        raise AssertionError("audio was read on a cached run")

    monkeypatch.setattr(cache, "load_audio", no_audio)
    again = cache.extract_corpus(files, SPEC, tmp_path / "cache", show_progress=False)
    assert again.key == store.key
    np.testing.assert_array_equal(np.asarray(again.frames), np.asarray(store.frames))


def test_key_depends_on_files_and_spec(tmp_path) -> None:
    files = _tones(tmp_path)
    k = cache.corpus_key(files, SPEC)
    assert k == cache.corpus_key(files, SPEC)
    assert k != cache.corpus_key(files[:2], SPEC)
    assert k != cache.corpus_key(files, FeatureSpec(n_mels=40))
    write_tone(files[0], seconds=0.9)  # size and mtime change
    assert k != cache.corpus_key(files, SPEC)


def test_bad_files_all_named_and_good_features_kept(tmp_path, monkeypatch) -> None:
    files = _tones(tmp_path / "wav")
    (tmp_path / "wav" / "garbage.wav").write_bytes(b"\x00" * 100)
    empty = tmp_path / "wav" / "empty.wav"
    empty.write_bytes(b"")
    bad = [tmp_path / "wav" / "garbage.wav", empty]
    with pytest.raises(BadAudioError) as err:
        cache.extract_corpus([*files, *bad], SPEC, tmp_path / "cache", show_progress=False)
    assert set(err.value.problems) == {str(p) for p in bad}
    assert not list((tmp_path / "cache").glob("corpora/*"))  # no corpus entry for a failed extraction
    calls = []
    real = cache.load_audio
    monkeypatch.setattr(cache, "load_audio", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    cache.extract_corpus(files, SPEC, tmp_path / "cache", show_progress=False)
    assert calls == []  # the good files' features survived the failed run


def test_interrupted_extraction_leaves_no_entry(tmp_path, monkeypatch) -> None:
    files = _tones(tmp_path / "wav")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache.np, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        cache.extract_corpus(files, SPEC, tmp_path / "cache", show_progress=False)
    monkeypatch.undo()
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []
    assert cache.load_cached(cache.corpus_key(files, SPEC), tmp_path / "cache") is None


def test_missing_files_reported_together(tmp_path) -> None:
    with pytest.raises(BadAudioError, match="2 bad audio"):
        cache.extract_corpus([tmp_path / "a.wav", tmp_path / "b.wav"], SPEC, tmp_path / "c", show_progress=False)
