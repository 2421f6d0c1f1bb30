"""MTL-AUG: augmentations, auxiliary losses that reach the encoder, and a conditional search space."""
from __future__ import annotations

import pytest
import torch

from dsl.config import ChainConfig, ConfigError, TrainSpec
from dsl.pipeline.checks import check_config
from dsl.training.augment import AUGMENTATIONS, augment_batch
from dsl.training.train import fit, predict_proba
from tests.support.segments import separable_segments


def test_each_augmentation_keeps_the_shape_and_changes_the_segment() -> None:
    x = torch.randn(1, 64, 32)
    for name, fn in AUGMENTATIONS.items():
        y = fn(x, torch.Generator().manual_seed(0))
        assert y.shape == x.shape, name
        assert torch.equal(y, x) == (name == "none"), name
    batch = torch.randn(16, 1, 64, 32)
    a, ids = augment_batch(batch, ("none", "noise"), torch.Generator().manual_seed(1))
    b, ids2 = augment_batch(batch, ("none", "noise"), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(ids, ids2)  # seeded
    assert all(torch.equal(a[i], batch[i]) == (int(ids[i]) == 0) for i in range(16))


def _data(n: int = 160):
    return separable_segments(n)


def test_auxiliary_losses_change_the_encoder_and_the_network_still_learns() -> None:
    torch.set_num_threads(1)
    labels, batcher, rows, targets = _data()
    out = {}
    for aux in ("none", "mtl_aug"):
        spec = TrainSpec(epochs=2, batch_size=32, lr=3e-3, patience=2, aux=aux)
        model, _ = fit("small_cnn", 2, batcher, rows[:120], targets[:120], rows[120:], targets[120:], spec, 0)
        out[aux] = (model, predict_proba(model, batcher, rows[120:], spec))
    first = lambda m: next(p for p in m.parameters())  # noqa: E731 - the first conv's weights
    assert not torch.allclose(first(out["none"][0]), first(out["mtl_aug"][0]))  # the aux gradients reached it
    assert (out["mtl_aug"][1].argmax(1) == labels[120:]).mean() > 0.8
    assert set(out["mtl_aug"][0].state_dict()) == set(out["none"][0].state_dict())  # the backbone alone


def test_mtl_aug_config_and_conditional_search_space() -> None:
    with pytest.raises(ConfigError, match="train.aux 'mtl' is unknown"):
        check_config(ChainConfig().replace(**{"train.aux": "mtl"}))
    with pytest.raises(ConfigError, match="need at least two of"):
        check_config(ChainConfig().replace(**{"train.aux": "mtl_aug", "train.aux_augs": ("none",)}))
    from sweeps.search.spec import parse_sweep

    spec = parse_sweep({"name": "m", "base": {"corpus": "emodb", "data": "/x"},
                        "search": {"train.aux": ["none", "mtl_aug"], "train.aux_cls_weight": [0.1, 0.5]}})
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        t = study.ask()
        spec.space(t)
        assert ("train.aux_cls_weight" in t.params) == (t.params["train.aux"] == "mtl_aug"), t.params
        seen.add(t.params["train.aux"])
    assert seen == {"none", "mtl_aug"}
    for cfg in spec.samples:  # trial configs: a non-MTL trial keeps the default weight
        assert cfg.train.aux == "mtl_aug" or cfg.train.aux_cls_weight == TrainSpec().aux_cls_weight
