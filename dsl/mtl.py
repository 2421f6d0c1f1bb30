"""MTL-AUG: the emotion network's encoder shared with two auxiliary tasks that need no labels:
classifying which augmentation a segment got, and reconstructing the clean segment from the encoder's
embedding (the input of the backbone's classifier, `dsl.backbones.classifier_of`, so any backbone works).

`train.aux: mtl_aug` trains on augmented segments with loss = emotion soft-CE + `aux_cls_weight` x
augmentation CE + `aux_rec_weight` x reconstruction MSE; validation, early stopping and prediction use
clean segments and the emotion head only, and the returned network is the backbone alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .augment import augment_batch
from .backbones import classifier_of
from .config import TrainSpec


class MTLAug(nn.Module):
    """The auxiliary heads on a backbone's embedding, and the multi-task loss of one batch."""

    def __init__(self, model: nn.Module, spec: TrainSpec, input_shape: tuple[int, int], seed: int):
        super().__init__()
        head = classifier_of(model)
        d = head.in_features
        self.names = tuple(spec.aux_augs)
        self.aug_head = nn.Linear(d, len(self.names))
        self.decoder = nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, input_shape[0] * input_shape[1]))
        self.spec = spec
        self.gen = torch.Generator().manual_seed(seed + 7919)  # its own stream: the main RNG is untouched
        self._emb: torch.Tensor | None = None
        head.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._emb = args[0]

    def loss(self, net: nn.Module, x_clean: torch.Tensor, targets: torch.Tensor, emotion_loss) -> torch.Tensor:
        x_aug, ids = augment_batch(x_clean, self.names, self.gen)
        logits = net(x_aug)
        emb = self._emb.float().flatten(1)
        rec = self.decoder(emb)
        return (emotion_loss(logits, targets) + self.spec.aux_cls_weight * F.cross_entropy(self.aug_head(emb), ids)
                + self.spec.aux_rec_weight * F.mse_loss(rec, x_clean.float().flatten(1)))
