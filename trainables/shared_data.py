"""The corpus in Ray's object store: frames once, zero-copy and read-only in every trial and fold task.

The driver calls `share_corpus(data)` once; `tune.with_parameters(fn, frames=ref, meta=meta)` hands the
trial the frames ObjectRef's value (a read-only view of the object-store buffer, no copy) and the small
metadata, which also carries the ref itself so fold tasks can receive the frames by reference.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsl.data.bundle import CorpusData


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
    layers: int = 1
    aux_offsets: np.ndarray | None = None  # train.aux_data: the unlabelled frames travel like `frames`, by ref
    aux_ref: Any = None


def share_corpus(data: CorpusData) -> tuple[Any, CorpusMeta]:
    """Put the frames (and any `train.aux_data` frames) into the object store once; returns (ObjectRef,
    metadata holding the same ref and the aux frames' ref)."""
    import ray

    ref = ray.put(np.asarray(data.frames))
    aux_ref = None if data.aux_frames is None else ray.put(np.asarray(data.aux_frames))
    meta = CorpusMeta(data.frame_offsets, data.labels, data.speakers, data.label_names, data.paths,
                      dict(data.skipped), ref, data.layers, data.aux_offsets, aux_ref)
    return ref, meta


def attach(frames: np.ndarray, meta: CorpusMeta) -> CorpusData:
    """Rebuild `CorpusData` around the object-store view of the frames (never copied, never written); the
    aux frames, when the sweep has them, are fetched by their ref: also a zero-copy read-only view."""
    aux_ref = getattr(meta, "aux_ref", None)
    aux_frames = None
    if aux_ref is not None:
        import ray

        aux_frames = ray.get(aux_ref)
    return CorpusData(frames=frames, frame_offsets=meta.frame_offsets, labels=meta.labels, speakers=meta.speakers,
                      label_names=meta.label_names, paths=meta.paths, skipped=meta.skipped,
                      layers=getattr(meta, "layers", 1), aux_frames=aux_frames,
                      aux_offsets=getattr(meta, "aux_offsets", None) if aux_frames is not None else None)


def with_corpus(trainable: Callable, data: CorpusData, variants: Mapping[Any, CorpusData] | None = None,
                **params: Any) -> Callable:
    """`tune.with_parameters(trainable, frames=<ref>, meta=<CorpusMeta>, **params)`; with more than one front
    end in `variants` (FeatureSpec -> data, `data` among them), also `variants={FeatureSpec: CorpusMeta}`:
    a trial whose front end is not `data`'s attaches its own frames by the ref in its CorpusMeta."""
    from ray import tune

    ref, meta = share_corpus(data)
    if variants and len(variants) > 1:
        params["variants"] = {f: (meta if d is data else share_corpus(d)[1]) for f, d in variants.items()}
    return tune.with_parameters(trainable, frames=ref, meta=meta, **params)


def select_variant(frames: np.ndarray, meta: CorpusMeta, variants: Mapping[Any, CorpusMeta] | None,
                   features: Any) -> tuple[np.ndarray, CorpusMeta]:
    """The frames and metadata of front end `features` (a FeatureSpec): the trial's own when the sweep shared
    several, else the one corpus it was given."""
    if not variants:
        return frames, meta
    if features not in variants:
        raise ValueError(f"the sweep extracted no frames for this trial's front end {features}; it has "
                         f"{len(variants)} front end(s) from the search space's features.* choices")
    chosen = variants[features]
    if chosen.frames_ref == meta.frames_ref:
        return frames, meta
    import ray

    return ray.get(chosen.frames_ref), chosen


def is_shared_view(arr: np.ndarray) -> bool:
    """True for a read-only array that does not own its memory (an object-store or memmap view)."""
    return not arr.flags.writeable and not arr.flags.owndata
