"""Additive noise on waveforms at a given SNR, from a registry of noise types: white, pink (1/f power) and babble
(several talkers mixed); a plugin registers more with `@register_noise(name)`.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsl.registry import Registry, first_line

NOISE_FORMAT = 1  # how noise is made and mixed; part of every cached noisy feature's key (bump when it changes)
NoiseFn = Callable[[int, np.random.Generator, Sequence[np.ndarray]], np.ndarray]  # (samples, rng, speech) -> noise


@dataclass(frozen=True)
class NoiseType:
    """`fn(n, rng, speech)`: `n` samples of noise (all randomness from `rng`); `needs_speech`: made of other
    utterances (`speech`, drawn from `eval.noise.babble_data`, never of a test speaker)."""

    name: str
    fn: NoiseFn
    needs_speech: bool = False
    description: str = ""


NOISES: Registry[NoiseType] = Registry("noise type")


def register_noise(name: str, *, needs_speech: bool = False, description: str = "") -> Callable[[NoiseFn], NoiseFn]:
    return NOISES.decorator(lambda fn: NoiseType(name, fn, needs_speech, description or first_line(fn.__doc__)))


def utterance_rng(seed: int, path: str | Path, noise_type: str) -> np.random.Generator:
    """The generator of one utterance's noise of one type (by file name, so it does not depend on the folder)."""
    return np.random.default_rng([int(seed), zlib.crc32(Path(path).name.encode()), zlib.crc32(noise_type.encode())])


@register_noise("white")
def white_noise(n: int, rng: np.random.Generator, speech: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Gaussian white noise."""
    return rng.standard_normal(n).astype(np.float32)


@register_noise("pink")
def pink_noise(n: int, rng: np.random.Generator, speech: Sequence[np.ndarray] = ()) -> np.ndarray:
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


@register_noise("babble", needs_speech=True)
def babble_noise(n: int, rng: np.random.Generator, speech: Sequence[np.ndarray]) -> np.ndarray:
    """Several talkers at once, as in a crowd: the sum of the `speech` signals (each cut to `n` samples from a random
    start and scaled to unit RMS)."""
    if not speech:
        raise ValueError("babble needs at least one utterance to be made of")
    out = np.zeros(n, dtype=np.float64)
    for s in speech:
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
               speech: Sequence[np.ndarray] = ()) -> np.ndarray:
    """One realisation of `n` samples of a registered noise type (babble: from the given speech signals)."""
    return np.asarray(NOISES.get(noise_type).fn(n, rng, speech), dtype=np.float32)
