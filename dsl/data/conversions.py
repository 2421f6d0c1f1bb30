"""What loading does to a corpus's audio, said once per run: resampling, down-mixing, padding.

`dsl.data.audio` turns any rate and channel count into mono at the front end's rate, and a chain pads
utterances shorter than one segment with silence frames. Each is right, but done silently it hides a
corpus that mixes 8 kHz mono with 48 kHz stereo, or a clip too short to hold one segment. The summary
reads only file headers, so it costs milliseconds and holds when the features come from the cache.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Conversions:
    """Files converted on loading: source rates and channel counts, and the utterances padded to one segment."""

    target_rate: int
    segment_frames: int
    resampled: Counter[int] = field(default_factory=Counter)  # source rate (Hz) -> files
    downmixed: Counter[int] = field(default_factory=Counter)  # source channels -> files
    padded: list[tuple[str, float | None]] = field(default_factory=list)  # (file, seconds) shorter than a segment

    def lines(self) -> list[str]:
        """One line per kind of conversion (none when nothing was converted)."""
        out = []
        if self.resampled:
            n = sum(self.resampled.values())
            out.append(f"audio: {n} file(s) resampled to {self.target_rate} Hz (from "
                       + ", ".join(f"{r} Hz: {k}" for r, k in sorted(self.resampled.items())) + ")")
        if self.downmixed:
            n = sum(self.downmixed.values())
            out.append(f"audio: {n} file(s) down-mixed to mono (from "
                       + ", ".join(f"{c} channels: {k}" for c, k in sorted(self.downmixed.items())) + ")")
        return out

    def padding_line(self, show: int = 3) -> str | None:
        if not self.padded:
            return None
        named = ", ".join(f"{Path(p).name}" + (f" ({s:.3f} s)" if s is not None else "") for p, s in self.padded[:show])
        more = f", ... ({len(self.padded) - show} more)" if len(self.padded) > show else ""
        return (f"audio: {len(self.padded)} utterance(s) shorter than one segment ({self.segment_frames} frames) "
                f"padded with silence frames: {named}{more}")


def audio_conversions(paths: Sequence[str | Path], target_rate: int, frame_offsets: np.ndarray,
                      segment_frames: int) -> Conversions:
    """The conversions of `paths` (from their headers) and the utterances with fewer frames than a segment."""
    import soundfile as sf

    conv = Conversions(target_rate, segment_frames)
    seconds: list[float | None] = []
    for p in paths:
        try:
            info = sf.info(str(p))
        except Exception:  # unreadable files were reported (or skipped) when they were decoded
            seconds.append(None)
            continue
        if info.samplerate != target_rate:
            conv.resampled[int(info.samplerate)] += 1
        if info.channels > 1:
            conv.downmixed[int(info.channels)] += 1
        seconds.append(info.frames / info.samplerate if info.samplerate else None)
    lengths = np.diff(np.asarray(frame_offsets, dtype=np.int64))
    conv.padded = [(str(paths[u]), seconds[u]) for u in np.flatnonzero(lengths < segment_frames)]
    return conv
