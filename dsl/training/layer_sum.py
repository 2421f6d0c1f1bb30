"""The learned weighted sum of SSL layers in front of any registered backbone (`features.ssl_layer_sum`).

Frames of a layer stack are stored flattened, (frames, L*D), so the cache, the per-dimension normalisation
and the segment batcher treat them like any frame; `LayerSum` views each (1, L*D, frames) input as
(L, D, frames), sums the layers with softmax-normalised weights trained with the network, and hands the
backbone a (1, D, frames) input. The backbone registry is untouched: `create_network` wraps what it builds.
"""
from __future__ import annotations

import torch
from torch import nn

from dsl.training.backbones import create_backbone


class LayerSum(nn.Module):
    """softmax(w)-weighted sum over L stacked layers, then the backbone. `w` starts at zero (equal weights)."""

    def __init__(self, backbone: nn.Module, layers: int):
        super().__init__()
        if layers < 2:
            raise ValueError(f"LayerSum needs at least two layers, got {layers}")
        self.layers = layers
        self.layer_logits = nn.Parameter(torch.zeros(layers))
        self.backbone = backbone

    def layer_weights(self) -> torch.Tensor:
        """The current softmax weights of the layers (sum to 1)."""
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, t = x.shape  # (b, 1, L*D, frames)
        if c != 1 or height % self.layers:
            raise ValueError(f"LayerSum expects (batch, 1, {self.layers}*D, frames) inputs, got {tuple(x.shape)}")
        stacked = x.reshape(b, self.layers, height // self.layers, t)
        w = self.layer_weights().to(stacked.dtype)
        return self.backbone(torch.einsum("l,bldt->bdt", w, stacked).unsqueeze(1))


def create_network(backbone: str, n_classes: int, layers: int = 1) -> nn.Module:
    """The registered backbone, wrapped in a `LayerSum` when each frame holds `layers` > 1 stacked layers."""
    net = create_backbone(backbone, n_classes)
    return LayerSum(net, layers) if layers > 1 else net
