"""Cheaper CNNs probed as the `cpu` preset's backbone (bench/RESULTS.md, "cheaper backbones"); a plugin module.

    python -m bench.recipes '[{"plugins": ["bench.probe_backbones"], "backbone": "patch_s"}]' --seeds 3,4

None of them kept small_cnn's UA, so they stay here and are not in `dsl.training.backbones` (tiny_cnn is, for
smoke sweeps).
"""
from __future__ import annotations

from torch import nn

from dsl.training.backbones import SmallCNN, _conv_bn_relu, register_backbone


class PatchCNN(nn.Module):
    """A 4x4 stride-4 'patchify' stem (one cheap GEMM instead of two strided 3x3 blocks on the largest
    maps), then two 3x3 blocks around a max-pool, global average pooling."""

    def __init__(self, n_classes: int, widths: tuple[int, int, int] = (24, 48, 64), patch: int = 4):
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(nn.Conv2d(1, w1, patch, stride=patch, bias=False), nn.BatchNorm2d(w1),
                                      nn.ReLU(inplace=True), *_conv_bn_relu(w1, w2), nn.MaxPool2d(2),
                                      *_conv_bn_relu(w2, w3))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(w3, n_classes))

    def forward(self, x):
        return self.head(self.features(x))


@register_backbone("mid_cnn")
def mid_cnn(n_classes: int) -> nn.Module:
    return SmallCNN(n_classes, widths=(16, 24, 48, 64))


@register_backbone("patch_s")
def patch_s(n_classes: int) -> nn.Module:
    return PatchCNN(n_classes)


@register_backbone("patch_t")
def patch_t(n_classes: int) -> nn.Module:
    return PatchCNN(n_classes, (32, 48, 64))
