"""Section 2: training throughput (segments/s) per backbone, plain DataLoader loop vs the project's `fit`.

Plain loop (typical research code): every segment materialised once as an (N, 1, 64, 32) float32 tensor,
`TensorDataset` + `DataLoader(batch_size=128, shuffle=True)`, NCHW, torch's default thread count.
Project loop: `dsl.training.train.fit` with `SegmentBatcher` (batches gathered by index from the frames tensor)
and the `cpu` preset's settings (channels_last), at 1 and at 2 intra-op threads. The `cpu` preset runs
two single-threaded folds side by side, so on 2 cores its aggregate rate is about twice the 1-thread one.
The plain loop is also timed at 1 thread, which separates the input pipeline/memory format from threading.

Both loops train the same model with the same soft-target loss (Eq. 5) and Adam; only the input
pipeline, the memory format and the thread count differ. A fixed number of steps is timed after a few
warm-up steps (oneDNN builds its kernels on the first batches).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .common import default_threads, torch_threads

# (warm-up steps, timed steps) per backbone; vgg19 trains at a few segments/s on 2 cores.
STEPS = {"small_cnn": (3, 30), "densenet22": (2, 10), "mobilenetv2_100": (1, 5), "efficientnet_b0": (1, 3),
         "vgg19": (1, 1)}
QUICK_STEPS = {"small_cnn": (2, 10), "densenet22": (1, 4), "mobilenetv2_100": (1, 3)}
# Rounds (interleaved repeats; the best round is kept: the one least disturbed by other jobs).
ROUNDS = {"small_cnn": 2, "densenet22": 2, "mobilenetv2_100": 2}
QUICK_SKIP = ("vgg19", "efficientnet_b0")
VARIANTS = ("plain_default_threads", "plain_1_thread", "project_1_thread", "project_2_threads")


@dataclass
class SegmentSet:
    """Normalised frames, segment rows and soft targets of a corpus (what both loops train on)."""

    frames: np.ndarray  # (total_frames + 1, n_mels) float32, normalised
    rows: np.ndarray  # (n_segments, length) int
    targets: np.ndarray  # (n_segments, K) float32
    n_classes: int


def segment_set(data, segment_spec) -> SegmentSet:
    """Segments of all utterances, frames normalised with the corpus-wide statistics."""
    from dsl.data.segments import build_segments
    from dsl.method.rules import one_hot
    from dsl.pipeline.chain import normalisation_stats

    seg = build_segments(data.frame_offsets, segment_spec, warn=False)
    mean, std = normalisation_stats(data.frames, data.frame_offsets, np.arange(data.n_utterances))
    frames = ((np.asarray(data.frames) - mean) / std).astype(np.float32)
    targets = one_hot(data.labels[seg.utt], data.n_classes).astype(np.float32)
    return SegmentSet(frames, seg.rows, targets, data.n_classes)


def materialise(frames: np.ndarray, rows: np.ndarray):
    """All segments as one contiguous NCHW tensor (N, 1, n_mels, length): the plain recipe's input."""
    import torch

    x = torch.from_numpy(frames[rows])  # (N, length, n_mels)
    return x.transpose(1, 2).unsqueeze(1).contiguous()


def plain_steps(backbone: str, x, targets, warmup: int, steps: int, seed: int = 0, batch_size: int = 128) -> float:
    """Segments/s of `steps` DataLoader steps after `warmup` ones (NCHW, current thread setting)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from dsl.training.backbones import create_backbone
    from dsl.training.train import soft_cross_entropy

    torch.manual_seed(seed)
    model = create_backbone(backbone, targets.shape[1])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, torch.as_tensor(targets)), batch_size=batch_size, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(seed))

    def batches():
        while True:
            yield from loader

    it = batches()
    seen, start = 0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        xb, yb = next(it)
        loss = soft_cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            seen += len(xb)
    return seen / (time.perf_counter() - start)


def project_steps(backbone: str, s: SegmentSet, warmup: int, steps: int, seed: int = 0, batch_size: int = 128,
                  channels_last: bool = True) -> float:
    """Segments/s of `dsl.training.train.fit` over exactly `steps` batches (one epoch, no validation), after a warm-up fit."""
    import torch

    from dsl.config import TrainSpec
    from dsl.training.train import SegmentBatcher, fit

    spec = TrainSpec(epochs=1, batch_size=batch_size, channels_last=channels_last, device="cpu", amp=False)
    batcher = SegmentBatcher(torch.from_numpy(s.frames), channels_last)
    rows = torch.from_numpy(s.rows.astype(np.int64))
    targets = torch.from_numpy(s.targets)
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    empty = pick[:0]

    def one(n_steps: int) -> float:
        idx = pick[:n_steps * batch_size]
        _, stats = fit(backbone, s.n_classes, batcher, rows[idx], targets[idx], rows[empty], targets[empty], spec, seed)
        return stats.segments_per_second

    if warmup:
        one(warmup)
    return one(steps)


def run_throughput(data, segment_spec, backbones: list[str], quick: bool = False, log=print) -> dict:
    """Per backbone: plain (default threads) vs project at 1 and 2 threads, segments/s and ratios."""
    s = segment_set(data, segment_spec)
    x = materialise(s.frames, s.rows)
    out = {"n_segments": int(len(s.rows)), "batch_size": 128, "default_threads": default_threads(),
           "materialised_tensor_mib": round(x.numel() * 4 / 2**20, 1), "backbones": {}}
    for name in backbones:
        if quick and name in QUICK_SKIP:
            out["backbones"][name] = {"skipped": "--quick"}
            continue
        warmup, steps = (QUICK_STEPS if quick else STEPS).get(name, (2, 5))
        rounds = 1 if quick else ROUNDS.get(name, 1)
        runs: dict[str, list[float]] = {k: [] for k in VARIANTS}
        for _ in range(rounds):
            with torch_threads(None):
                runs["plain_default_threads"].append(plain_steps(name, x, s.targets, warmup, steps))
            with torch_threads(1):
                runs["plain_1_thread"].append(plain_steps(name, x, s.targets, warmup, steps))
                runs["project_1_thread"].append(project_steps(name, s, warmup, steps))
            with torch_threads(2):
                runs["project_2_threads"].append(project_steps(name, s, warmup, steps))
        best = {k: max(v) for k, v in runs.items()}
        plain = best["plain_default_threads"]
        row = {"steps": steps, "warmup_steps": warmup, "rounds": rounds, **best,
               "all_rounds": {k: [round(x_, 1) for x_ in v] for k, v in runs.items()},
               "ratio_project_2t_vs_plain": best["project_2_threads"] / plain,
               "ratio_project_1t_vs_plain": best["project_1_thread"] / plain,
               "ratio_project_1t_vs_plain_1t": best["project_1_thread"] / best["plain_1_thread"],
               "ratio_project_2x1t_aggregate_estimate_vs_plain": 2 * best["project_1_thread"] / plain}
        out["backbones"][name] = row
        log(f"  {name:16s} plain {plain:8.1f} seg/s (1t {best['plain_1_thread']:8.1f}) | project 1t "
            f"{best['project_1_thread']:8.1f} | 2t {best['project_2_threads']:8.1f} | 1t/plain {row['ratio_project_1t_vs_plain']:5.2f}x "
            f"| 2t/plain {row['ratio_project_2t_vs_plain']:5.2f}x", flush=True)
    del x
    return out
