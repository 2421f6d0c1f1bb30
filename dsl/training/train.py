"""Training one freshly initialised network on soft segment targets, and batched inference.

The whole fold stays in memory as tensors (frames + segment row indices), batches are gathered by
indexing, and nothing runs per sample in Python. Loss is the soft-target cross-entropy of Eq. 5.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsl.config import TrainSpec
from dsl.training.layer_sum import create_network


@dataclass(frozen=True)
class FitStats:
    epochs: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    segments_per_second: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 5: -sum_k g_k log p_k, averaged over the batch."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


class SegmentBatcher:
    """Gathers (batch, 1, n_mels, length) inputs from frame rows without copying the corpus.

    With `mean`/`std` (per mel bin) each batch is normalised as it is gathered: a few hundred
    thousand values per batch, against a private normalised copy of the whole corpus per fold.
    """

    def __init__(self, frames: torch.Tensor, channels_last: bool = False, mean: np.ndarray | None = None,
                 std: np.ndarray | None = None):
        self.frames = frames
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=frames.dtype, device=frames.device)
        self.std = None if std is None else torch.as_tensor(std, dtype=frames.dtype, device=frames.device)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        x = self.frames[rows]  # (b, length, n_mels): a fresh tensor, safe to normalise in place
        if self.mean is not None:
            x.sub_(self.mean).div_(self.std)
        return x.transpose(1, 2).unsqueeze(1).contiguous(memory_format=self.memory_format)


# Backbones measured faster under CPU bf16 autocast on a CPU with native bf16 (AMX): small_cnn 1.7x per
# training step; EfficientNet-B0 was 3.5x slower, so `auto` keeps it (and anything unmeasured) in fp32.
BF16_GAINS = ("small_cnn",)


def native_bf16() -> bool:
    """The CPU computes bf16 natively (AMX or AVX512-BF16); elsewhere bf16 is emulated and slower."""
    from dsl.runtime.environment import machine_info

    return bool({"amx_bf16", "avx512_bf16"} & set(machine_info().get("cpu_flags") or []))


def resolve_precision(precision: str, backbone: str) -> str:
    """`fp32` or `bf16` for CPU training: `auto` is bf16 only with native bf16 and a backbone in BF16_GAINS."""
    if precision == "auto":
        return "bf16" if native_bf16() and backbone in BF16_GAINS else "fp32"
    return precision


def _autocast(device: torch.device, spec: TrainSpec):
    """CUDA: mixed precision when `spec.amp`; CPU: bf16 autocast when `spec.precision` is `bf16` (resolve
    `auto` first with `resolve_precision`)."""
    if device.type == "cuda" and spec.amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and spec.precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


Perturb = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (model in eval mode, input batch) -> changed batch


@torch.no_grad()
def predict_proba(model: nn.Module, batcher: SegmentBatcher, rows: torch.Tensor, spec: TrainSpec,
                  perturb: Perturb | None = None) -> np.ndarray:
    """Softmax posteriors (n, K) in large batches; with `perturb`, of each input batch as it changes it (an
    attack, `dsl.training.attacks`), in the same batches as the clean prediction."""
    return _predict(model, batcher, rows, spec, embeddings=False, perturb=perturb)[0]


@torch.no_grad()
def predict_with_embeddings(model: nn.Module, batcher: SegmentBatcher, rows: torch.Tensor,
                            spec: TrainSpec, perturb: Perturb | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors (n, K) and the segment embeddings (n, E) of the same forward passes: the input of the
    backbone's classifier (`dsl.training.backbones.captured_embeddings`), as float32."""
    post, emb = _predict(model, batcher, rows, spec, embeddings=True, perturb=perturb)
    assert emb is not None
    return post, emb


def autocast_for(device: torch.device, spec: TrainSpec) -> Callable[[], Any]:
    """A factory of the autocast context that training and prediction use on `device` (for attacks)."""
    return lambda: _autocast(device, spec)


def _predict(model: nn.Module, batcher: SegmentBatcher, rows: torch.Tensor, spec: TrainSpec,
             embeddings: bool, perturb: Perturb | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    from contextlib import nullcontext

    from dsl.training.backbones import captured_embeddings

    model.eval()
    device = batcher.frames.device
    out, emb = [], []
    with captured_embeddings(model) if embeddings else nullcontext([]) as kept:
        for i in range(0, len(rows), spec.eval_batch_size):
            x = batcher(rows[i:i + spec.eval_batch_size])
            if perturb is not None:
                x = perturb(model, x)
                kept.clear()  # the attack's own forward passes were captured too
            with _autocast(device, spec):
                logits = model(x)
            out.append(torch.softmax(logits.float(), dim=1).cpu())
            if embeddings:
                emb.append(kept.pop().float().cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0, 0), dtype=np.float32) if embeddings else None
    post = torch.cat(out).numpy().astype(np.float32)
    return post, torch.cat(emb).numpy().astype(np.float32) if embeddings else None


@torch.no_grad()
def _mean_loss(model: nn.Module, batcher: SegmentBatcher, rows: torch.Tensor, targets: torch.Tensor,
               spec: TrainSpec) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(rows), spec.eval_batch_size):
        with _autocast(batcher.frames.device, spec):
            logits = model(batcher(rows[i:i + spec.eval_batch_size]))
        total += float(soft_cross_entropy(logits, targets[i:i + spec.eval_batch_size])) * len(logits)
    return total / max(len(rows), 1)


def fit(backbone: str, n_classes: int, batcher: SegmentBatcher, rows: torch.Tensor, targets: torch.Tensor,
        val_rows: torch.Tensor, val_targets: torch.Tensor, spec: TrainSpec, seed: int,
        layers: int = 1, aux_batcher: SegmentBatcher | None = None,
        aux_rows: torch.Tensor | None = None) -> tuple[nn.Module, FitStats]:
    """Train a fresh network: Adam, step decay, early stopping on validation loss (best weights kept).
    `layers` > 1: each frame holds that many stacked SSL layers, summed by a learned `LayerSum`.
    `aux_batcher`/`aux_rows` (MTL-AUG with `train.aux_data`): unlabelled segments, as many per step as the
    labelled batch, drawn from a generator seeded from `seed`, for the auxiliary losses only."""
    device = batcher.frames.device
    torch.manual_seed(seed)
    model = create_network(backbone, n_classes, layers).to(device)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if spec.compile else model  # shares the parameters of `model`
    aux = None
    if spec.aux == "mtl_aug":
        from dsl.training.mtl import MTLAug

        shape = tuple(batcher(rows[:1]).shape[-2:])
        aux = MTLAug(model, spec, shape, seed).to(device)
    unlabelled = aux is not None and aux_batcher is not None and aux_rows is not None and len(aux_rows) > 0
    aux_gen = torch.Generator().manual_seed(seed + 1299709) if unlabelled else None
    opt = torch.optim.Adam([*model.parameters(), *(aux.parameters() if aux is not None else [])], lr=spec.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=spec.lr_decay_every, gamma=spec.lr_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(rows)
    per_epoch = n if spec.epoch_fraction >= 1.0 else max(2, int(round(n * spec.epoch_fraction)))
    best_loss, best_epoch, best_state, bad = float("inf"), -1, None, 0
    seen, start, epoch = 0, time.perf_counter(), 0
    for epoch in range(1, spec.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)[:per_epoch].to(device)
        for i in range(0, per_epoch, spec.batch_size):
            idx = perm[i:i + spec.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on one sample
                continue
            if aux is None:
                with _autocast(device, spec):
                    logits = net(batcher(rows[idx]))
                loss = soft_cross_entropy(logits, targets[idx])
            else:  # MTL-AUG: augmented input, emotion + augmentation + reconstruction losses
                x_u = None
                if unlabelled:
                    pick = torch.randint(len(aux_rows), (len(idx),), generator=aux_gen).to(aux_rows.device)
                    x_u = aux_batcher(aux_rows[pick])
                with _autocast(device, spec):
                    loss = aux.loss(net, batcher(rows[idx]), targets[idx], soft_cross_entropy, x_u)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
        sched.step()
        if len(val_rows) == 0:
            best_epoch, best_state = epoch, None
            continue
        val_loss = _mean_loss(net, batcher, val_rows, val_targets, spec)
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, bad = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= spec.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    return model, FitStats(epoch, best_epoch, best_loss, seconds, seen / max(seconds, 1e-9))
