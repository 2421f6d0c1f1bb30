"""CUDA path: the fold's frames live on the GPU, bf16/fp16 autocast, large eval batches. Skips without CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dsl.config import TrainSpec
from dsl.training.train import SegmentBatcher, fit, predict_proba

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


@pytest.mark.parametrize("backbone", ["small_cnn", "efficientnet_b0"])
def test_fit_and_predict_on_cuda_with_amp(backbone) -> None:
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.standard_normal((2000, 64)).astype(np.float32)).cuda()
    rows = torch.from_numpy(rng.integers(0, 1968, 512)[:, None] + np.arange(32)[None, :]).cuda()
    labels = torch.from_numpy(rng.integers(0, 4, 512)).cuda()
    targets = torch.nn.functional.one_hot(labels, 4).float()
    spec = TrainSpec(epochs=2, device="cuda", amp=True, channels_last=True)
    batcher = SegmentBatcher(frames, channels_last=True)
    model, stats = fit(backbone, 4, batcher, rows[:448], targets[:448], rows[448:], targets[448:], spec, seed=0)
    assert next(model.parameters()).is_cuda and stats.epochs >= 1
    post = predict_proba(model, batcher, rows, spec)
    assert post.shape == (512, 4) and np.allclose(post.sum(axis=1), 1.0, atol=1e-3)
