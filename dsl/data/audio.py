"""Audio loading: any rate, mono or stereo, wav or flac -> float32 mono at the target rate.

Every problem is collected per file so that a corpus with several bad files is reported in one
error (`BadAudioError`) instead of one file per run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


class BadAudioError(ValueError):
    """One or more audio files are unusable; `.problems` maps each path to what is wrong."""

    def __init__(self, problems: dict[str, str], hint: str = ""):
        self.problems = dict(problems)
        lines = "\n  ".join(f"{p}: {why}" for p, why in self.problems.items())
        super().__init__(f"{len(self.problems)} bad audio file(s){f' ({hint})' if hint else ''}:\n  {lines}")


@dataclass(frozen=True)
class AudioCheck:
    """What `inspect_audio` found: `problem` is None for a usable file, `warning` flags odd but usable ones."""

    path: str
    problem: str | None = None
    warning: str | None = None
    sample_rate: int = 0
    channels: int = 0
    frames: int = 0


def wav_truncation(path: str | Path) -> str | None:
    """For RIFF/WAVE files: the problem if the data chunk declares more bytes than the file holds.

    libsndfile silently reads what is there, so a file cut short by a failed copy would pass.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = Path(path).stat().st_size
            pos = 12
            while pos + 8 <= size:
                fh.seek(pos)
                chunk = fh.read(8)
                declared = int.from_bytes(chunk[4:8], "little")
                if chunk[:4] == b"data":
                    available = size - pos - 8
                    if declared > available and declared != 0xFFFFFFFF:
                        return f"truncated: data chunk declares {declared} bytes, file holds {available}"
                    return None
                pos += 8 + declared + (declared & 1)
    except OSError:
        return None
    return None


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a file as float32 (frames, channels) and its rate; raises ValueError saying what is wrong."""
    try:
        with sf.SoundFile(str(path)) as fh:
            declared = fh.frames
            data = fh.read(dtype="float32", always_2d=True)
            rate = fh.samplerate
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise ValueError(f"unreadable audio ({exc.__class__.__name__}: {exc})") from None
    if declared > 0 and data.shape[0] < declared:
        raise ValueError(f"truncated: header declares {declared} frames, only {data.shape[0]} could be read")
    truncated = wav_truncation(path)
    if truncated:
        raise ValueError(truncated)
    return data, int(rate)


def to_mono_resampled(data: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Average channels, then resample with librosa (soxr) when the rate differs."""
    mono = data.mean(axis=1) if data.ndim == 2 else data
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate != target_rate:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=target_rate).astype(np.float32)
    return mono


def check_signal(data: np.ndarray, rate: int, min_seconds: float) -> tuple[str | None, str | None]:
    """(problem, warning) for a decoded signal."""
    if data.size == 0 or data.shape[0] == 0:
        return "empty audio (0 samples)", None
    if not np.all(np.isfinite(data)):
        return "contains NaN or Inf samples", None
    seconds = data.shape[0] / float(rate)
    if seconds < min_seconds:
        return f"too short: {seconds * 1000:.1f} ms < {min_seconds * 1000:.0f} ms (one analysis window)", None
    if float(np.max(np.abs(data))) == 0.0:
        return "silence only (all samples are zero)", None
    notes = []
    if data.ndim == 2 and data.shape[1] > 1:
        notes.append(f"{data.shape[1]} channels (averaged to mono)")
    return None, "; ".join(notes) or None


def load_audio(path: str | Path, target_rate: int = 16000, min_seconds: float = 0.025) -> np.ndarray:
    """Load one file as mono float32 at `target_rate`; raises BadAudioError naming the file."""
    try:
        data, rate = read_audio(path)
    except ValueError as exc:
        raise BadAudioError({str(path): str(exc)}) from None
    problem, _ = check_signal(data, rate, min_seconds)
    if problem:
        raise BadAudioError({str(path): problem})
    return to_mono_resampled(data, rate, target_rate)


def inspect_audio(path: str | Path, min_seconds: float = 0.025) -> AudioCheck:
    """Decode one file fully and report whether it is usable (no resampling)."""
    try:
        data, rate = read_audio(path)
    except ValueError as exc:
        return AudioCheck(str(path), problem=str(exc))
    problem, warning = check_signal(data, rate, min_seconds)
    return AudioCheck(str(path), problem, warning, rate, data.shape[1] if data.ndim == 2 else 1, data.shape[0])
