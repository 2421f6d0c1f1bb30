"""`train.precision`: bf16 autocast on the CPU, and `auto` deciding by the CPU's native bf16 and the backbone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dsl.training.train as train
from dsl.config import ChainConfig, ConfigError, TrainSpec
from dsl.execution.fold_job import with_resolved_precision
from dsl.pipeline.checks import check_config


def test_bf16_autocast_runs_the_convolutions_in_bf16() -> None:
    from dsl.training.backbones import create_backbone

    model = create_backbone("small_cnn", 3).eval()
    seen: dict[str, torch.dtype] = {}
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.__setitem__("dtype", o.dtype))
    x = torch.randn(4, 1, 64, 32)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with torch.no_grad(), train._autocast(torch.device("cpu"), TrainSpec(precision=precision)):
            model(x)
        assert seen["dtype"] == dtype, precision


def test_bf16_training_learns() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    frames = (rng.normal(size=(200, 32, 64)) + 1.5 * labels[:, None, None]).astype(np.float32).reshape(-1, 64)
    rows = torch.from_numpy(np.arange(200 * 32).reshape(200, 32).astype(np.int64))
    targets = torch.from_numpy(np.eye(2, dtype=np.float32)[labels])
    batcher = train.SegmentBatcher(torch.from_numpy(frames))
    spec = TrainSpec(epochs=2, batch_size=32, lr=3e-3, patience=2, precision="bf16")
    model, stats = train.fit("small_cnn", 2, batcher, rows[:150], targets[:150], rows[150:], targets[150:], spec, 0)
    proba = train.predict_proba(model, batcher, rows[150:], spec)
    assert proba.dtype == np.float32 and np.isfinite(proba).all()
    assert (proba.argmax(1) == labels[150:]).mean() > 0.8


def test_auto_is_bf16_only_with_native_bf16_and_a_backbone_that_gains(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ChainConfig().replace(**{"train.precision": "auto"})
    monkeypatch.setattr(train, "native_bf16", lambda: True)
    assert with_resolved_precision(cfg).train.precision == "bf16"
    assert with_resolved_precision(cfg.replace(backbone="efficientnet_b0")).train.precision == "fp32"
    monkeypatch.setattr(train, "native_bf16", lambda: False)
    assert with_resolved_precision(cfg).train.precision == "fp32"
    with pytest.raises(ConfigError, match="train.precision 'fp16' is unknown"):
        check_config(ChainConfig().replace(**{"train.precision": "fp16"}))
