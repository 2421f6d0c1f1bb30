"""Log-Mel features equal a direct librosa call; segmentation handles short utterances explicitly."""
from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest

from dsl.config import FeatureSpec, SegmentSpec
from dsl.data.audio import BadAudioError, load_audio
from dsl.data.frontend import logmel_batch, logmel_reference, n_frames
from dsl.data.segments import ShortUtteranceWarning, build_segments
from tests.support.data import write_tone

SPEC = FeatureSpec()


def test_paper_feature_spec() -> None:
    assert (SPEC.sample_rate, SPEC.win_length, SPEC.hop_length, SPEC.n_fft, SPEC.n_mels) == (16000, 400, 160, 512, 64)
    assert (SPEC.fmin, SPEC.fmax) == (125.0, 7500.0)


def test_logmel_equals_direct_librosa_melspectrogram() -> None:
    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(16000 + 123)).astype(np.float32)
    direct = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, win_length=400, hop_length=160, window="hann",
                                            power=2.0, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None,
                                            center=True, pad_mode="constant")
    expected = np.log(direct + SPEC.log_eps).T
    ours = logmel_batch([y], SPEC)[0]
    assert ours.shape == expected.shape == (n_frames(len(y), SPEC), 64)
    np.testing.assert_allclose(ours, expected, atol=2e-3, rtol=0)
    np.testing.assert_allclose(logmel_reference(y, SPEC), expected, atol=1e-5, rtol=0)


def test_htk_mel_scale_is_1127_ln() -> None:
    f = np.array([125.0, 1000.0, 7500.0])
    np.testing.assert_allclose(librosa.hz_to_mel(f, htk=True), 1127.0 * np.log(1.0 + f / 700.0), rtol=1e-5)  # 2595 log10 = 1126.99 ln


def test_batch_of_mixed_lengths_matches_one_by_one() -> None:
    rng = np.random.default_rng(1)
    signals = [rng.standard_normal(n).astype(np.float32) for n in (4000, 8000, 4000, 16000)]
    batch = logmel_batch(signals, SPEC)
    for s, b in zip(signals, batch):
        np.testing.assert_allclose(b, logmel_batch([s], SPEC)[0], atol=1e-4)


def test_load_audio_stereo_any_rate_to_mono_16k(tmp_path) -> None:
    path = write_tone(tmp_path / "stereo.wav", seconds=1.0, rate=22050, channels=2)
    y = load_audio(path, 16000)
    assert y.ndim == 1 and abs(len(y) - 16000) <= 1 and y.dtype == np.float32
    flac = write_tone(tmp_path / "tone.flac", seconds=0.5, rate=8000)
    assert abs(len(load_audio(flac, 16000)) - 8000) <= 1


def test_bad_audio_names_the_file(tmp_path) -> None:
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(BadAudioError, match="broken.wav"):
        load_audio(tmp_path / "broken.wav")
    short = write_tone(tmp_path / "short.wav", seconds=0.01)
    with pytest.raises(BadAudioError, match="too short"):
        load_audio(short)


def test_segments_cover_utterances_with_hop() -> None:
    offsets = np.array([0, 100, 140, 150])  # lengths 100, 40, 10 (last shorter than one segment)
    with pytest.warns(ShortUtteranceWarning, match="1 utterance"):
        seg = build_segments(offsets, SegmentSpec(length=32, hop=8))
    assert list(np.diff(seg.offsets)) == [(100 - 32) // 8 + 1, (40 - 32) // 8 + 1, 1]
    assert np.array_equal(seg.rows[0], np.arange(32))
    assert np.array_equal(seg.rows[1], np.arange(8, 40))
    padded = seg.rows[-1]
    assert np.array_equal(padded[:10], np.arange(140, 150)) and np.all(padded[10:] == 150)  # 150 = padding row
    assert np.all(seg.rows[seg.utt == 1] < 140) and np.all(seg.rows[seg.utt == 1] >= 100)


def test_no_warning_without_short_utterances() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg = build_segments(np.array([0, 64]), SegmentSpec(32, 1))
    assert seg.n_segments == 33 and seg.n_padded == 0
