"""Additive noise on waveforms at a given SNR: white, pink (1/f power) and babble (several talkers mixed).

Nothing is downloaded: white and pink noise are generated, babble is built from the utterances of a folder the
user names (`eval.noise.babble_data`). The SNR is over the whole utterance (mean power of the clean signal,
silences included, over mean power of the scaled noise), not over active speech as in ITU-T P.56: an utterance
with long pauses gets relatively more noise on its speech than its nominal SNR says.

Each utterance's noise is seeded by `eval.noise.seed`, the utterance's file name and the noise type, not by the
chain's seed: every seed, method and SNR of a study sees the same noise realisation (scaled per SNR), so
differences between them are paired on the noise too.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dsl.config import NOISE_TYPES


def utterance_rng(seed: int, path: str | Path, noise_type: str) -> np.random.Generator:
    """The generator of one utterance's noise of one type (by file name, so it does not depend on the folder)."""
    return np.random.default_rng([int(seed), zlib.crc32(Path(path).name.encode()), NOISE_TYPES.index(noise_type)])


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power falling as 1/f (white noise shaped in the frequency domain; DC removed)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n).astype(np.float32)


def fit_length(source: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of `source` from a random start, wrapping around (a short source repeats)."""
    reps = -(-n // len(source)) + 1
    tiled = np.tile(source, reps)
    start = int(rng.integers(len(source)))
    return tiled[start:start + n]


def babble_noise(n: int, sources: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The sum of `sources` (each cut to `n` samples from a random start and scaled to unit RMS): several
    talkers at once, as in a crowd."""
    if not sources:
        raise ValueError("babble needs at least one source utterance")
    out = np.zeros(n, dtype=np.float64)
    for s in sources:
        piece = fit_length(np.asarray(s, dtype=np.float64), n, rng)
        out += piece / max(float(np.sqrt(np.mean(piece ** 2))), 1e-12)
    return out.astype(np.float32)


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(np.asarray(x, dtype=np.float64))))


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`signal` + `noise` scaled so that power(signal) / power(scaled noise) is `snr_db` dB (no clipping: the
    front end reads floats)."""
    noise = np.asarray(noise, dtype=np.float64)[:len(signal)]
    scale = np.sqrt(power(signal) / (max(power(noise), 1e-20) * 10.0 ** (snr_db / 10.0)))
    return (np.asarray(signal, dtype=np.float64) + scale * noise).astype(np.float32)


def measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """The SNR (dB) of `noisy` against `clean`: what `mix_at_snr` promises."""
    residual = np.asarray(noisy, dtype=np.float64) - np.asarray(clean, dtype=np.float64)
    return 10.0 * np.log10(power(clean) / max(power(residual), 1e-30))


def make_noise(noise_type: str, n: int, rng: np.random.Generator,
               babble_sources: Sequence[np.ndarray] = ()) -> np.ndarray:
    """One noise realisation of `n` samples (babble: from the given source signals)."""
    if noise_type == "white":
        return white_noise(n, rng)
    if noise_type == "pink":
        return pink_noise(n, rng)
    if noise_type == "babble":
        return babble_noise(n, babble_sources, rng)
    raise ValueError(f"unknown noise type {noise_type!r}; known: {', '.join(NOISE_TYPES)}")
