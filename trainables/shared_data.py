"""The corpus in Ray's object store: frames once, zero-copy and read-only in every trial and fold task.

The driver calls `share_corpus(data)` once; `tune.with_parameters(fn, frames=ref, meta=meta)` hands the
trial the frames ObjectRef's value (a read-only view of the object-store buffer, no copy) and the small
metadata, which also carries the ref itself so fold tasks can receive the frames by reference.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsl.data import CorpusData


@dataclass(frozen=True)
class CorpusMeta:
    """`CorpusData` without its frames, plus the frames' ObjectRef (nested, so it stays a reference)."""

    frame_offsets: np.ndarray
    labels: np.ndarray
    speakers: np.ndarray
    label_names: tuple[str, ...]
    paths: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    frames_ref: Any = None


def share_corpus(data: CorpusData) -> tuple[Any, CorpusMeta]:
    """Put the frames into the object store once; returns (ObjectRef, metadata holding the same ref)."""
    import ray

    ref = ray.put(np.asarray(data.frames))
    meta = CorpusMeta(data.frame_offsets, data.labels, data.speakers, data.label_names, data.paths,
                      dict(data.skipped), ref)
    return ref, meta


def attach(frames: np.ndarray, meta: CorpusMeta) -> CorpusData:
    """Rebuild `CorpusData` around the object-store view of the frames (never copied, never written)."""
    return CorpusData(frames=frames, frame_offsets=meta.frame_offsets, labels=meta.labels, speakers=meta.speakers,
                      label_names=meta.label_names, paths=meta.paths, skipped=meta.skipped)


def with_corpus(trainable: Callable, data: CorpusData, **params: Any) -> Callable:
    """`tune.with_parameters(trainable, frames=<ref>, meta=<CorpusMeta>, **params)`."""
    from ray import tune

    ref, meta = share_corpus(data)
    return tune.with_parameters(trainable, frames=ref, meta=meta, **params)


def is_shared_view(arr: np.ndarray) -> bool:
    """True for a read-only array that does not own its memory (an object-store or memmap view)."""
    return not arr.flags.writeable and not arr.flags.owndata
