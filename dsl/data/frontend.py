"""Log-Mel filterbank features exactly as in the paper, computed in batches with torch; and the front-end
dispatch (`compute_features`, `feature_identity`) that the cache and the fitted model share.

`logmel_reference` is the direct librosa call the paper's recipe describes; `logmel_batch` computes
the same numbers (to float32 rounding) with one batched STFT and one mel matmul, which is several
times faster per clip. Tests hold the two equal. `features.kind: ssl` is `dsl.data.ssl_features`.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from dsl.config import FeatureSpec


def n_frames(n_samples: int, spec: FeatureSpec) -> int:
    """Frames of a centred STFT (librosa's default `center=True`)."""
    return 1 + n_samples // spec.hop_length


def logmel_reference(signal: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(frames, n_mels) log-Mel via `librosa.feature.melspectrogram` (HTK scale, no Slaney norm)."""
    import librosa

    power = librosa.feature.melspectrogram(
        y=np.asarray(signal, dtype=np.float32), sr=spec.sample_rate, n_fft=spec.n_fft,
        win_length=spec.win_length, hop_length=spec.hop_length, window="hann", center=True,
        pad_mode="constant", power=2.0, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax,
        htk=True, norm=None,
    )
    return np.log(power + spec.log_eps).T.astype(np.float32)


@lru_cache(maxsize=8)
def _mel_basis(spec: FeatureSpec) -> torch.Tensor:
    import librosa

    basis = librosa.filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels,
                                fmin=spec.fmin, fmax=spec.fmax, htk=True, norm=None)
    return torch.from_numpy(basis.astype(np.float32))  # (n_mels, n_fft // 2 + 1)


def logmel_batch(signals: list[np.ndarray], spec: FeatureSpec, batch_seconds: float = 60.0) -> list[np.ndarray]:
    """Log-Mel of many signals; equal-length groups share one STFT call. Returns (frames, n_mels) each."""
    basis = _mel_basis(spec)
    window = torch.hann_window(spec.win_length, periodic=True, dtype=torch.float32)
    out: list[np.ndarray | None] = [None] * len(signals)
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(signals):
        by_length.setdefault(len(s), []).append(i)
    for length, idx in by_length.items():
        per_batch = max(1, int(batch_seconds * spec.sample_rate // max(length, 1)))
        for start in range(0, len(idx), per_batch):
            chunk = idx[start:start + per_batch]
            x = torch.from_numpy(np.stack([np.asarray(signals[i], dtype=np.float32) for i in chunk]))
            stft = torch.stft(x, n_fft=spec.n_fft, hop_length=spec.hop_length, win_length=spec.win_length,
                              window=window, center=True, pad_mode="constant", return_complex=True)
            power = stft.real.square() + stft.imag.square()  # (b, freq, frames)
            mel = torch.matmul(basis, power)  # (b, n_mels, frames)
            logmel = torch.log(mel + spec.log_eps).transpose(1, 2).contiguous().numpy()
            for j, i in enumerate(chunk):
                out[i] = logmel[j]
    return out  # type: ignore[return-value]


SSL_FIELDS = ("kind", "ssl_model", "ssl_layer", "ssl_layer_sum")


def compute_features(signals: list[np.ndarray], spec: FeatureSpec) -> list[np.ndarray]:
    """Per-utterance features of the spec's front end: (frames, n_mels) log-Mel, (frames, D) of one SSL
    layer, or (frames, L, D) of every SSL hidden state."""
    if spec.kind == "ssl":
        from dsl.data.ssl_features import ssl_batch

        return ssl_batch(signals, spec)
    return logmel_batch(signals, spec)


def feature_identity(spec: FeatureSpec) -> dict[str, Any]:
    """What the cache keys hash for these features. Log-Mel: the log-Mel fields alone (keys made before
    `kind` existed stay valid); SSL: the whole spec plus the checkpoint's fingerprint."""
    fields = dataclasses.asdict(spec)
    if spec.kind == "ssl":
        from dsl.data.ssl_features import identity

        return {**fields, **identity(spec)}
    return {k: v for k, v in fields.items() if k not in SSL_FIELDS}


def layers_of(per_utterance: list[np.ndarray] | tuple[np.ndarray, ...]) -> int:
    """Stacked layers per frame: L of (frames, L, D) arrays (SSL layer sum), else 1."""
    return int(per_utterance[0].shape[1]) if per_utterance and per_utterance[0].ndim == 3 else 1


def stack_utterances(per_utterance: list[np.ndarray] | tuple[np.ndarray, ...],
                     spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """One contiguous float32 (total_frames + 1, width) array and its int64 offsets: utterance u is
    `frames[offsets[u]:offsets[u+1]]`; the last row pads utterances shorter than one segment (log-Mel:
    silence, the log of the floor; SSL: zeros). (frames, L, D) inputs are flattened to width L*D. The
    layout every chain, cache and model reads."""
    flat = [f.reshape(len(f), -1) for f in per_utterance]
    lengths = [len(f) for f in flat]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    width = flat[0].shape[1] if flat else spec.n_mels
    pad = np.full((1, width), 0.0 if spec.kind == "ssl" else np.log(spec.log_eps), dtype=np.float32)
    return np.concatenate([*flat, pad]).astype(np.float32, copy=False), offsets
