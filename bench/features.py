"""Section 1: log-Mel extraction, per-file librosa (the usual recipe) vs the project's batched torch path.

Plain path, per file: `librosa.load(path, sr=16000)` then `librosa.feature.melspectrogram` (through
`dsl.data.frontend.logmel_reference`, the same call with the paper's settings).
Project path: `dsl.data.audio.load_audio` per file, then `dsl.data.frontend.logmel_batch` on chunks of 32 files
(what `dsl.data.feature_cache.extract_corpus` does).

Loading (decode + resample 22.05 -> 16 kHz with soxr) is the same work in both and is timed separately,
so both the end-to-end ratio and the feature-only ratio are reported. Repeats alternate the two paths
and the median is kept, which damps the noise of other jobs on the machine.

Numerical equality: the log of a float32 power near zero is ill-conditioned (a bin at 1e-9 of the peak
may differ by several nats between two FFT implementations while being equal to float32 rounding in
power), so the log-Mel difference is compared where the mel power exceeds 1e-6 x the utterance's peak,
and the power difference everywhere relative to the utterance's peak.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .common import median, timed

LOG_TOLERANCE = 1e-2  # nats (1 %) on bins with power > POWER_FLOOR x peak
POWER_FLOOR = 1e-6
POWER_TOLERANCE = 1e-5  # |P_ref - P_ours| / peak(P_ref), all bins
CHUNK = 32  # files per logmel_batch call, as in dsl.data.feature_cache.extract_corpus


def plain_load(paths: Sequence[Path], rate: int) -> list[np.ndarray]:
    import librosa

    return [librosa.load(str(p), sr=rate)[0] for p in paths]


def project_load(paths: Sequence[Path], rate: int) -> list[np.ndarray]:
    from dsl.data.audio import load_audio

    return [load_audio(p, rate) for p in paths]


def plain_features(signals: Sequence[np.ndarray], spec) -> list[np.ndarray]:
    from dsl.data.frontend import logmel_reference

    return [logmel_reference(s, spec) for s in signals]


def project_features(signals: Sequence[np.ndarray], spec) -> list[np.ndarray]:
    from dsl.data.frontend import logmel_batch

    out: list[np.ndarray] = []
    for i in range(0, len(signals), CHUNK):
        out.extend(logmel_batch(list(signals[i:i + CHUNK]), spec))
    return out


def compare(reference: Sequence[np.ndarray], ours: Sequence[np.ndarray], spec) -> dict:
    """Max differences between two lists of (frames, n_mels) log-Mel arrays (see module docstring)."""
    max_all = max_masked = max_power = 0.0
    masked_share = []
    for r, o in zip(reference, ours):
        if r.shape != o.shape:
            raise AssertionError(f"shape mismatch {r.shape} vs {o.shape}")
        pr, po = np.exp(r.astype(np.float64)) - spec.log_eps, np.exp(o.astype(np.float64)) - spec.log_eps
        peak = max(float(pr.max()), 1e-30)
        mask = pr > POWER_FLOOR * peak
        diff = np.abs(r.astype(np.float64) - o)
        max_all = max(max_all, float(diff.max()))
        if mask.any():
            max_masked = max(max_masked, float(diff[mask].max()))
        max_power = max(max_power, float(np.abs(pr - po).max() / peak))
        masked_share.append(float(mask.mean()))
    return {
        "max_abs_logmel_all_bins": max_all,
        "max_abs_logmel_above_floor": max_masked,
        "power_floor_relative_to_peak": POWER_FLOOR,
        "share_of_bins_above_floor": float(np.mean(masked_share)) if masked_share else 0.0,
        "max_power_diff_relative_to_peak": max_power,
        "log_tolerance": LOG_TOLERANCE,
        "power_tolerance": POWER_TOLERANCE,
        "within_tolerance": bool(max_masked <= LOG_TOLERANCE and max_power <= POWER_TOLERANCE),
    }


def run_features(paths: Sequence[Path], repeats: int = 3, spec=None) -> dict:
    """Time both paths on `paths` (alternating, `repeats` times) and compare their outputs."""
    from dsl.config import FeatureSpec

    spec = spec or FeatureSpec()
    paths = list(paths)
    n = len(paths)
    # Warm-up: page cache for every file, librosa's filter cache, torch's FFT plans.
    warm = plain_load(paths, spec.sample_rate)
    plain_features(warm[:2], spec)
    project_features(warm[:CHUNK], spec)

    times: dict[str, list[float]] = {k: [] for k in ("plain_load", "plain_feat", "project_load", "project_feat")}
    plain_out = project_out = None
    project_signals: list[np.ndarray] = []
    for _ in range(repeats):
        t, plain_signals = timed(lambda: plain_load(paths, spec.sample_rate))
        times["plain_load"].append(t)
        t, plain_out = timed(lambda s=plain_signals: plain_features(s, spec))
        times["plain_feat"].append(t)
        t, project_signals = timed(lambda: project_load(paths, spec.sample_rate))
        times["project_load"].append(t)
        t, project_out = timed(lambda s=project_signals: project_features(s, spec))
        times["project_feat"].append(t)

    med = {k: median(v) for k, v in times.items()}
    plain_total, project_total = med["plain_load"] + med["plain_feat"], med["project_load"] + med["project_feat"]
    # Equality of the feature computation alone: both feature paths on the very same signals.
    reference = plain_features(project_signals, spec)
    signal_diff = max(float(np.max(np.abs(a[:len(b)] - b[:len(a)]))) if len(a) and len(b) else 0.0
                      for a, b in zip(plain_signals, project_signals))
    return {
        "files": n,
        "repeats": repeats,
        "seconds_median": {k: round(v, 4) for k, v in med.items()},
        "seconds_all": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "plain_files_per_s": n / plain_total,
        "project_files_per_s": n / project_total,
        "speedup_end_to_end": plain_total / project_total,
        "plain_feature_only_files_per_s": n / med["plain_feat"],
        "project_feature_only_files_per_s": n / med["project_feat"],
        "speedup_feature_only": med["plain_feat"] / med["project_feat"],
        "max_abs_signal_diff_librosa_load_vs_load_audio": signal_diff,
        "equality": compare(reference, project_out, spec),
        "equality_vs_plain_path_end_to_end": compare(plain_out, project_out, spec),
    }
