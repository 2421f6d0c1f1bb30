"""Segmentation of utterance frame sequences into fixed-length overlapping segments.

Frames of all utterances live in one contiguous (total_frames + 1, n_mels) array whose last row is a
padding frame (log of the floor, i.e. silence). A segment is a row of `length` frame indices into it,
so any segment hop is a cheap view of the same cached frames and sweeps over the hop reuse the cache.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from dsl.config import SegmentSpec


class ShortUtteranceWarning(UserWarning):
    """Some utterances are shorter than one segment and were padded with silence frames."""


@dataclass(frozen=True)
class SegmentIndex:
    """rows[i] = frame-array rows of segment i; utt[i] = its utterance; offsets[u] = first segment of u."""

    rows: np.ndarray  # int32 (n_segments, length)
    utt: np.ndarray  # int64 (n_segments,)
    offsets: np.ndarray  # int64 (n_utterances + 1,)
    n_padded: int

    @property
    def n_segments(self) -> int:
        return len(self.utt)

    def of_utterances(self, utterances: np.ndarray) -> np.ndarray:
        """Segment indices of the given utterances, in utterance order."""
        if len(utterances) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(self.offsets[u], self.offsets[u + 1]) for u in utterances])


def build_segments(frame_offsets: np.ndarray, spec: SegmentSpec, warn: bool = True) -> SegmentIndex:
    """Segments for utterances whose frames are `frame_offsets[u]:frame_offsets[u+1]`.

    Utterances shorter than one segment give one segment padded at the end with the padding row
    (index `frame_offsets[-1]`); their number is reported in a `ShortUtteranceWarning`.
    """
    if spec.length < 1 or spec.hop < 1:
        raise ValueError(f"segment length and hop must be >= 1, got {spec}")
    frame_offsets = np.asarray(frame_offsets, dtype=np.int64)
    pad_row = int(frame_offsets[-1])
    lengths = np.diff(frame_offsets)
    counts = np.where(lengths >= spec.length, (lengths - spec.length) // spec.hop + 1, 1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    utt = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    within = np.arange(offsets[-1], dtype=np.int64) - offsets[utt]
    starts = frame_offsets[utt] + within * spec.hop
    rows = starts[:, None] + np.arange(spec.length, dtype=np.int64)[None, :]
    ends = frame_offsets[utt + 1][:, None]
    rows = np.where(rows < ends, rows, pad_row).astype(np.int32)
    n_padded = int(np.sum(lengths < spec.length))
    if n_padded and warn:
        warnings.warn(f"{n_padded} utterance(s) shorter than one segment ({spec.length} frames) were padded "
                      "with silence frames", ShortUtteranceWarning, stacklevel=2)
    return SegmentIndex(rows=rows, utt=utt, offsets=offsets, n_padded=n_padded)
