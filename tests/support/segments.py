"""Synthetic segments for training-loop tests: two classes that differ in their mean."""
from __future__ import annotations

import numpy as np
import torch

from dsl.training.train import SegmentBatcher


def separable_segments(n: int) -> tuple[np.ndarray, SegmentBatcher, torch.Tensor, torch.Tensor]:
    """(labels, batcher over the frames, each segment's 32 frame rows, one-hot targets) of `n` 32x64 segments."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    frames = (rng.normal(size=(n, 32, 64)) + 1.5 * labels[:, None, None]).astype(np.float32).reshape(-1, 64)
    rows = torch.from_numpy(np.arange(n * 32).reshape(n, 32).astype(np.int64))
    return labels, SegmentBatcher(torch.from_numpy(frames)), rows, torch.from_numpy(np.eye(2, dtype=np.float32)[labels])
