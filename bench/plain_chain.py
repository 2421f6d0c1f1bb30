"""The same DSL chain trained the plain way: a `dsl.pipeline.chain` runner built on DataLoader over materialised tensors.

Everything but the training loop is the project's: `dsl.pipeline.chain.run_chain` makes the jobs (folds from
`dsl.protocols.plans.make_plan`, seeds from `dsl.pipeline.chain.derive_seed`), applies the label rule and evaluates with
`dsl.method.evaluate`; per fold this runner uses the project's `split_validation` and `normalisation_stats`.
What differs is the typical research-code training loop:

* every segment of the fold is copied out once into (N, 1, 64, 32) float32 NCHW tensors,
* `TensorDataset` + `DataLoader(batch_size=128, shuffle=True)`, no channels_last,
* folds in series in this process with torch's default thread count,
* validation loss and prediction in batches of 128 through a DataLoader,
* the same recipe otherwise: Adam, StepLR, soft-target cross-entropy, early stopping with patience
  `cfg.train.patience` and at most `cfg.train.epochs` epochs, best weights kept.

Usage: `run_chain(cfg, data, runner=plain_runner(data, cfg))`.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np

PLAIN_BATCH = 128
# The reference training recipe of the plain loop, pinned here so that changing the `cpu` preset's
# recipe cannot change the yardstick: the paper's optimiser (Adam 1e-3, x0.8 every 2 epochs, batch 128,
# patience 3) at the laptop budget of 6 epochs, every training segment in every epoch.
PLAIN_RECIPE = {"train.epochs": 6, "train.patience": 3, "train.lr": 1e-3, "train.lr_decay": 0.8,
                "train.lr_decay_every": 2, "train.batch_size": PLAIN_BATCH, "train.val_fraction": 0.1,
                "train.epoch_fraction": 1.0}


def _tensor(frames: np.ndarray, rows: np.ndarray):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames[rows], dtype=np.float32))  # (n, length, n_mels)
    return x.transpose(1, 2).unsqueeze(1).contiguous()  # (n, 1, n_mels, length)


def plain_fit_predict(job, data, cfg, seg, batch_size: int = PLAIN_BATCH):
    """Train one fold the plain way and predict its held-out segments; returns a `FoldOutput`."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from dsl.execution.fold_job import training_rows
    from dsl.pipeline.chain import FoldOutput, normalisation_stats, split_validation
    from dsl.training.backbones import create_backbone
    from dsl.training.train import soft_cross_entropy

    train_utts, val_utts = split_validation(job.train_utterances, data.labels, cfg.train.val_fraction, job.seed)
    mean, std = normalisation_stats(data.frames, data.frame_offsets, job.train_utterances)
    frames = (np.asarray(data.frames) - mean) / std
    tr_seg, va_seg = seg.of_utterances(train_utts), seg.of_utterances(val_utts)
    pr_seg = seg.of_utterances(job.predict_utterances)
    targets = np.ascontiguousarray(job.targets, dtype=np.float32)  # the training segments' rows
    row_of = training_rows(seg, job)
    train_ds = TensorDataset(_tensor(frames, seg.rows[tr_seg]), torch.from_numpy(targets[row_of[tr_seg]]))
    val_ds = TensorDataset(_tensor(frames, seg.rows[va_seg]), torch.from_numpy(targets[row_of[va_seg]]))
    pred_x = _tensor(frames, seg.rows[pr_seg])
    del frames

    torch.manual_seed(job.seed)
    model = create_backbone(cfg.backbone, data.n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.train.lr_decay_every, gamma=cfg.train.lr_decay)
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(job.seed))
    best_loss, best_epoch, best_state, bad, seen, epoch = float("inf"), -1, None, 0, 0, 0
    start = time.perf_counter()
    for epoch in range(1, cfg.train.epochs + 1):
        model.train()
        for xb, yb in loader:
            if len(xb) < 2:  # BatchNorm cannot train on one sample
                continue
            loss = soft_cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(xb)
        sched.step()
        if len(val_ds) == 0:
            best_epoch, best_state = epoch, None
            continue
        model.eval()
        total = 0.0
        with torch.no_grad():
            for xb, yb in DataLoader(val_ds, batch_size=batch_size):
                total += float(soft_cross_entropy(model(xb), yb)) * len(xb)
        val_loss = total / len(val_ds)
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, bad = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.train.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    posts = []
    with torch.no_grad():
        for (xb,) in DataLoader(TensorDataset(pred_x), batch_size=batch_size):
            posts.append(torch.softmax(model(xb), dim=1))
    post = torch.cat(posts).numpy().astype(np.float32) if posts else np.zeros((0, data.n_classes), np.float32)
    seconds = time.perf_counter() - start
    return FoldOutput(post, epoch, best_epoch, seconds, seen / max(seconds, 1e-9))


def plain_runner(data, cfg, batch_size: int = PLAIN_BATCH, threads: int | None = None):
    """A `dsl.pipeline.chain` runner training its jobs one after another in this process (default threads)."""
    from dsl.data.segments import build_segments

    from .common import torch_threads

    seg = build_segments(data.frame_offsets, cfg.segments, warn=False)

    def run(jobs: Sequence) -> list:
        with torch_threads(threads):
            return [plain_fit_predict(job, data, cfg, seg, batch_size) for job in jobs]

    run.close = lambda: None  # type: ignore[attr-defined]
    return run
