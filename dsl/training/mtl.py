"""MTL-AUG: the emotion network's encoder shared with two auxiliary tasks that need no labels:
classifying which augmentation a segment got, and reconstructing the clean segment from the encoder's
embedding (the input of the backbone's classifier, `dsl.training.backbones.classifier_of`, so any backbone works).

`train.aux: mtl_aug` trains on augmented segments with loss = emotion soft-CE + `aux_cls_weight` x
augmentation CE + `aux_rec_weight` x reconstruction MSE; validation, early stopping and prediction use
clean segments and the emotion head only, and the returned network is the backbone alone.

With `train.aux_data` (`dsl.data.aux_data`), each step also draws as many unlabelled segments, augments them
(from a stream of their own) and adds their augmentation CE and reconstruction MSE, with the same weights;
the network's emotion output on them is never read. They pass through the network in a forward of their
own, so BatchNorm's batch statistics of the labelled segments stay theirs, and BatchNorm's running statistics
(used at evaluation) are restored after it: they describe the labelled corpus alone, however different the
unlabelled audio is (another language, silence).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from dsl.config import TrainSpec
from dsl.training.augment import augment_batch
from dsl.training.backbones import classifier_of

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)  # timm's BatchNormAct2d included


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
        self.unlabelled_gen = torch.Generator().manual_seed(seed + 104729)  # train.aux_data's augmentations
        self._emb: torch.Tensor | None = None
        head.register_forward_pre_hook(self._keep)
        self._norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]

    def _keep(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._emb = args[0]

    def loss(self, net: nn.Module, x_clean: torch.Tensor, targets: torch.Tensor, emotion_loss,
             x_unlabelled: torch.Tensor | None = None) -> torch.Tensor:
        """Emotion loss of the labelled batch plus the auxiliary losses of it and of `x_unlabelled` (if any)."""
        x_aug, ids = augment_batch(x_clean, self.names, self.gen)
        logits = net(x_aug)
        emb = self._embedding()
        rec = self.decoder(emb)  # before the emotion loss, as ever: the graph (and so the bits) stay as they were
        total = emotion_loss(logits, targets) + self._cls_loss(emb, ids) + self._rec_loss(rec, x_clean)
        if x_unlabelled is not None:
            u_aug, u_ids = augment_batch(x_unlabelled, self.names, self.unlabelled_gen)
            with self._running_stats_kept():
                net(u_aug)  # only the embedding is used: there is no emotion target for these segments
            u_emb = self._embedding()
            total = total + self._cls_loss(u_emb, u_ids) + self._rec_loss(self.decoder(u_emb), x_unlabelled)
        return total

    @contextmanager
    def _running_stats_kept(self) -> Iterator[None]:
        """BatchNorm running statistics (and batch counts) as they were before the block: the block updates
        copies, then the originals are put back (not written in place: the labelled forward's graph holds them)."""
        names = ("running_mean", "running_var", "num_batches_tracked")
        kept = [[getattr(m, n) for n in names] for m in self._norms]
        for m, buffers in zip(self._norms, kept):
            for n, b in zip(names, buffers):
                if b is not None:
                    setattr(m, n, b.clone())
        try:
            yield
        finally:
            for m, buffers in zip(self._norms, kept):
                for n, b in zip(names, buffers):
                    setattr(m, n, b)

    def _embedding(self) -> torch.Tensor:
        assert self._emb is not None, "the classifier's forward pre-hook did not run"
        return self._emb.float().flatten(1)

    def _cls_loss(self, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.spec.aux_cls_weight * F.cross_entropy(self.aug_head(emb), ids)

    def _rec_loss(self, rec: torch.Tensor, x_clean: torch.Tensor) -> torch.Tensor:
        return self.spec.aux_rec_weight * F.mse_loss(rec, x_clean.float().flatten(1))
