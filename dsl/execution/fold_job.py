"""One fold training: a fresh network on the job's training utterances, posteriors for its held-out ones.

A `FoldJob` carries everything that decides its result (utterances, targets, seed), so runners may
execute jobs in any order, process or machine and get the same numbers. It carries the targets of its
training segments only: no label of an utterance it predicts travels with it, so a plugin backbone,
augmentation or loss that reads beyond its training rows finds nothing to read.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from dsl.config import ChainConfig
from dsl.data.bundle import CorpusData
from dsl.data.segments import SegmentIndex, build_segments
from dsl.execution.fold_output import FoldOutput
from dsl.execution.step_claims import StepClaim, StepElsewhere, run_claimed
from dsl.method.stages import stage_input
from dsl.plugins import load_plugins
from dsl.robustness.conditions import JobConditions
from dsl.training.attacks import attack
from dsl.training.train import (
    FitStats,
    SegmentBatcher,
    autocast_for,
    fit,
    predict_proba,
    predict_with_embeddings,
    resolve_device,
    resolve_precision,
)


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31 - 1))


@dataclass(frozen=True)
class FoldJob:
    """One training of a fresh network and its predictions."""

    iteration: int
    scope: int
    fold: int
    train_utterances: np.ndarray  # training utterances (the validation split is carved from them)
    predict_utterances: np.ndarray  # held-out fold, then the scope's test utterances
    targets: np.ndarray  # (n_training_segments, K): the rows of `train_utterances`' segments, in that order
    seed: int
    claim: StepClaim | None = None  # with a step cache: train only under this claim (`dsl.execution.step_claims`)
    conditions: JobConditions | None = None  # eval.noise / eval.adversarial: scored utterances also perturbed

    @classmethod
    def of(cls, iteration: int, scope: int, fold: int, train_utterances: np.ndarray, predict_utterances: np.ndarray,
           targets: np.ndarray, seed: int, segments: SegmentIndex,
           conditions: JobConditions | None = None) -> FoldJob:
        """A job from the targets of every segment: it keeps only its training segments' rows."""
        return cls(iteration, scope, fold, train_utterances, predict_utterances,
                   np.ascontiguousarray(targets[segments.of_utterances(train_utterances)]), seed,
                   conditions=conditions)


@dataclass
class TrainedFold:
    """A fold's network with what it needs to predict: the frame batcher (normalised per batch) and rows."""

    model: nn.Module
    stats: FitStats
    batcher: SegmentBatcher
    rows: torch.Tensor  # (n_segments, length) frame rows of every segment, on the training device
    mean: np.ndarray
    std: np.ndarray


def normalisation_stats(frames: np.ndarray, offsets: np.ndarray, utterances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (mel bin, SSL unit) mean and std over the frames of `utterances` (the training folds only)."""
    n = 0
    s = np.zeros(frames.shape[1], dtype=np.float64)
    ss = np.zeros(frames.shape[1], dtype=np.float64)
    for u in utterances:
        block = np.asarray(frames[offsets[u]:offsets[u + 1]], dtype=np.float64)
        n += len(block)
        s += block.sum(axis=0)
        ss += np.square(block).sum(axis=0)
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(ss / max(n, 1) - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


def split_validation(utterances: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve a stratified validation split (for early stopping) out of the training utterances."""
    if fraction <= 0 or len(utterances) < 10:
        return utterances, utterances[:0]
    y = labels[utterances]
    stratify = y if np.bincount(y).max() > 1 and np.min(np.bincount(y)[np.bincount(y) > 0]) >= 2 else None
    try:
        tr, va = train_test_split(utterances, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:
        tr, va = train_test_split(utterances, test_size=fraction, random_state=seed)
    return np.sort(tr), np.sort(va)


# The corpus frames on an accelerator, kept for the next fold job of this process: (the array it was copied
# from, held so its buffer cannot be freed and reused, its buffer address, shape, dtype and device; the tensor).
_device_frames: tuple[np.ndarray, tuple, torch.Tensor] | None = None


def shared_frames(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """The corpus frames as a tensor: without a copy on the CPU (memory-mapped or object-store arrays are
    read-only; nothing writes to them, so torch's non-writable warning does not apply), and on an accelerator
    copied once per process, not once per fold: a worker that trains several folds (a Ray task worker or a
    pool process) reuses the copy while the frames it gets are the same buffer (the object store hands each
    task a new array over the same memory)."""
    global _device_frames
    arr = np.asarray(frames)
    key = (arr.__array_interface__["data"][0], arr.shape, arr.dtype.str, str(device))
    if device.type != "cpu":
        if _device_frames is not None and _device_frames[1] == key:
            return _device_frames[2]
        _device_frames = None  # the old copy is freed before the new one is made
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(arr).to(device)
    if device.type != "cpu":
        _device_frames = (arr, key, tensor)
    return tensor


def release_device_memory() -> None:
    """Drop the kept accelerator copy of the frames and hand the allocator's cached blocks back to the
    driver: several trials share one GPU (fractional `gpu`), and a trial process that Tune reuses would
    otherwise keep the memory of its last fold."""
    global _device_frames
    _device_frames = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def frame_batcher(frames: np.ndarray, mean: np.ndarray, std: np.ndarray, cfg: ChainConfig,
                  device: torch.device) -> SegmentBatcher:
    """The network's input pipeline: segments gathered from `frames` and normalised per batch with the
    training frames' `mean`/`std` (folds, and `dsl.pipeline.model.EmotionModel` on new audio)."""
    return SegmentBatcher(shared_frames(frames, device), cfg.train.channels_last, mean, std)


def with_resolved_precision(cfg: ChainConfig) -> ChainConfig:
    """`train.precision: auto` decided on this machine (fp32 or bf16), for training and prediction alike."""
    precision = resolve_precision(cfg.train.precision, cfg.backbone)
    return cfg if precision == cfg.train.precision else cfg.replace(**{"train.precision": precision})


def unlabelled_segments(data: CorpusData, cfg: ChainConfig, mean: np.ndarray, std: np.ndarray,
                        device: torch.device) -> tuple[SegmentBatcher | None, torch.Tensor | None]:
    """MTL-AUG's unlabelled segments (`train.aux_data`), cut like the corpus's and normalised with the fold's
    training statistics; (None, None) when the run has none."""
    if cfg.train.aux != "mtl_aug" or not cfg.train.aux_data:
        return None, None
    if data.aux_frames is None or data.aux_offsets is None:
        raise ValueError(f"train.aux_data {cfg.train.aux_data!r} is set but the data carries no aux frames; "
                         "prepare the data with dsl.data.bundle.prepare_data and this config")
    seg = build_segments(data.aux_offsets, cfg.segments, warn=False)
    return (frame_batcher(data.aux_frames, mean, std, cfg, device),
            torch.from_numpy(seg.rows.astype(np.int64)).to(device))


def training_rows(seg: SegmentIndex, job: FoldJob) -> np.ndarray:
    """Per segment of the corpus, its row in `job.targets` (-1: not a training segment of the job)."""
    train_seg = seg.of_utterances(job.train_utterances)
    if len(job.targets) != len(train_seg):
        raise ValueError(f"fold job ({job.iteration}, {job.scope}, {job.fold}): {len(job.targets)} target rows for "
                         f"{len(train_seg)} training segments; build jobs with FoldJob.of")
    row_of = np.full(seg.n_segments, -1, dtype=np.int64)
    row_of[train_seg] = np.arange(len(train_seg))
    return row_of


def train_fold(job: FoldJob, data: CorpusData, cfg: ChainConfig, segments: SegmentIndex | None = None) -> TrainedFold:
    """Train one fresh network on the job's training utterances (frames are normalised per batch, so the
    corpus stays shared between folds, processes and trials instead of being copied per fold)."""
    load_plugins(cfg.plugins)  # this may be a fresh worker process or Ray task
    cfg = with_resolved_precision(cfg)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    seg = segments if segments is not None else build_segments(data.frame_offsets, cfg.segments, warn=False)
    device = resolve_device(cfg.train.device)
    train_utts, val_utts = split_validation(job.train_utterances, data.labels, cfg.train.val_fraction, job.seed)
    mean, std = normalisation_stats(data.frames, data.frame_offsets, job.train_utterances)
    batcher = frame_batcher(data.frames, mean, std, cfg, device)
    tr_seg, va_seg = seg.of_utterances(train_utts), seg.of_utterances(val_utts)
    rows = torch.from_numpy(seg.rows.astype(np.int64)).to(device)
    targets = torch.from_numpy(np.ascontiguousarray(job.targets, dtype=np.float32))
    row_of = training_rows(seg, job)
    tr_t, va_t = torch.from_numpy(tr_seg).to(device), torch.from_numpy(va_seg).to(device)
    aux_batcher, aux_rows = unlabelled_segments(data, cfg, mean, std, device)
    model, stats = fit(cfg.backbone, data.n_classes, batcher, rows[tr_t], targets[row_of[tr_seg]].to(device),
                       rows[va_t], targets[row_of[va_seg]].to(device), cfg.train, job.seed, data.layers,
                       aux_batcher, aux_rows)
    return TrainedFold(model, stats, batcher, rows, mean, std)


def run_fold_job(job: FoldJob, data: CorpusData, cfg: ChainConfig,
                 segments: SegmentIndex | None = None) -> FoldOutput | StepElsewhere:
    """Train one fresh network on the job's training utterances and predict its held-out ones. A job with a
    claim trains only if it gets the claim, and stores its output in the step cache before dropping it."""
    try:
        if job.claim is not None:
            return run_claimed(job.claim, lambda: _train_and_predict(job, data, cfg, segments))  # type: ignore[return-value]
        return _train_and_predict(job, data, cfg, segments)
    finally:
        if resolve_device(cfg.train.device).type == "cuda":
            torch.cuda.empty_cache()  # the fold's model and activations are gone: free their cached blocks


def _train_and_predict(job: FoldJob, data: CorpusData, cfg: ChainConfig, segments: SegmentIndex | None) -> FoldOutput:
    seg = segments if segments is not None else build_segments(data.frame_offsets, cfg.segments, warn=False)
    fold = train_fold(job, data, cfg, seg)
    pr_seg = torch.from_numpy(seg.of_utterances(job.predict_utterances)).to(fold.rows.device)
    spec = with_resolved_precision(cfg).train
    emb = None
    if stage_input(cfg.stage) == "embedding":  # the acp stage reads the penultimate layer; the forest does not
        post, emb32 = predict_with_embeddings(fold.model, fold.batcher, fold.rows[pr_seg], spec)
        emb = compact(emb32)
    else:
        post = predict_proba(fold.model, fold.batcher, fold.rows[pr_seg], spec)
    s = fold.stats
    names, cond_post, cond_emb = (), None, None
    if job.conditions is not None:
        names = job.conditions.names
        cond_post, cond_emb = predict_conditions(fold, job.conditions, seg, cfg, emb is not None)
    return FoldOutput(post, s.epochs, s.best_epoch, s.seconds, s.segments_per_second, emb, names, cond_post, cond_emb)


def predict_conditions(fold: TrainedFold, conditions: JobConditions, seg: SegmentIndex, cfg: ChainConfig,
                       embeddings: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The fold network's outputs on its scored utterances under each condition, stacked in `conditions.names`
    order: noisy frames normalised with the fold's training statistics, and attacks on the clean segments."""
    spec = with_resolved_precision(cfg).train
    device = fold.rows.device

    def outputs(batcher: SegmentBatcher, rows: torch.Tensor, perturb=None) -> tuple[np.ndarray, np.ndarray | None]:
        if embeddings:
            return predict_with_embeddings(fold.model, batcher, rows, spec, perturb)
        return predict_proba(fold.model, batcher, rows, spec, perturb), None

    results = []
    for _, frames, offsets in conditions.noisy:  # the same utterances, so the same segments as the clean ones
        noisy = SegmentBatcher(torch.from_numpy(np.ascontiguousarray(frames)).to(device), cfg.train.channels_last,
                               fold.mean, fold.std)
        rows = torch.from_numpy(build_segments(offsets, cfg.segments, warn=False).rows.astype(np.int64)).to(device)
        results.append(outputs(noisy, rows))
    clean_rows = fold.rows[torch.from_numpy(seg.of_utterances(conditions.utterances)).to(device)]
    autocast = autocast_for(device, spec)
    for a in conditions.attacks:
        results.append(outputs(fold.batcher, clean_rows,
                               lambda model, x, a=a: attack(model, x, a.attack, a.eps, conditions.pgd_steps, autocast)))
    post = np.stack([p for p, _ in results]).astype(np.float32)
    emb = np.stack([compact(e) for _, e in results]) if embeddings else None
    return post, emb


def compact(embeddings: np.ndarray) -> np.ndarray:
    """float16 (half the memory and transfer of float32) unless a value would overflow it."""
    finite16 = float(np.finfo(np.float16).max) / 2
    return embeddings.astype(np.float16) if np.abs(embeddings).max(initial=0.0) < finite16 else embeddings
