"""`train.compile`: the compiled network trains the same parameters and returns a plain module."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dsl.config import TrainSpec
from dsl.training.train import SegmentBatcher, fit, predict_proba


@pytest.mark.slow
def test_compiled_fit_matches_eager() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    frames = (rng.normal(size=(400, 32, 64)) + 1.5 * labels[:, None, None]).astype(np.float32).reshape(-1, 64)
    rows = torch.from_numpy(np.arange(400 * 32).reshape(400, 32).astype(np.int64))  # one block per segment
    targets = torch.from_numpy(np.eye(2, dtype=np.float32)[labels])
    batcher = SegmentBatcher(torch.from_numpy(frames), channels_last=True)
    out = {}
    for compiled in (False, True):
        spec = TrainSpec(epochs=2, batch_size=32, lr=3e-3, patience=2, compile=compiled, channels_last=True)
        model, stats = fit("small_cnn", 2, batcher, rows[:300], targets[:300], rows[300:], targets[300:], spec, 0)
        assert isinstance(model, torch.nn.Module) and not any(k.startswith("_orig_mod") for k in model.state_dict())
        out[compiled] = (predict_proba(model, batcher, rows[300:], spec), stats)
    # float reassociation in the fused kernels drifts over 2 epochs; a compiled copy that did not train the
    # shared parameters would stay at the initial network's outputs instead
    np.testing.assert_allclose(out[True][0], out[False][0], atol=0.03)
    from dsl.training.backbones import create_backbone

    torch.manual_seed(0)
    untrained = create_backbone("small_cnn", 2).to(memory_format=torch.channels_last)
    assert np.abs(predict_proba(untrained, batcher, rows[300:], spec) - out[True][0]).max() > 0.1
    assert out[True][1].best_epoch == out[False][1].best_epoch
