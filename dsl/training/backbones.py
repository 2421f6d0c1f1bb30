"""Backbone registry: name -> factory(n_classes) giving a randomly initialised 1-channel CNN.

Paper backbones come from timm with `in_chans=1` and `pretrained=False`; `small_cnn` is ours and
trains fast on a CPU. Register a new backbone with `@register_backbone("name")`: one function.
Outside this package, name the registering module in `ChainConfig.plugins` so that fold workers
and Ray trials import it too.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from dsl.registry import Registry, first_line

BackboneFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class Backbone:
    """`factory(n_classes)` gives a randomly initialised network with one input channel."""

    name: str
    factory: BackboneFactory
    description: str = ""


BACKBONES: Registry[Backbone] = Registry("backbone")


def register_backbone(name: str, *, description: str = "") -> Callable[[BackboneFactory], BackboneFactory]:
    return BACKBONES.decorator(lambda fn: Backbone(name, fn, description or first_line(fn.__doc__)))


def create_backbone(name: str, n_classes: int) -> nn.Module:
    return BACKBONES.get(name).factory(n_classes)


def classifier_of(model: nn.Module) -> nn.Linear:
    """The network's final classifier, whose input is the segment embedding (MTL-AUG's heads and the
    `acp` stage read it): timm's `get_classifier()`, else the last `nn.Linear`."""
    get = getattr(model, "get_classifier", None)
    if callable(get) and isinstance(get(), nn.Linear):
        return get()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier: MTL-AUG and the acp stage's "
                         "embedding input need one (use stage.input: posterior)")
    return linears[-1]


@contextmanager
def captured_embeddings(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, each forward pass appends its embedding (the classifier's input, flattened to
    (batch, E)) to the yielded list."""
    kept: list[torch.Tensor] = []
    handle = classifier_of(model).register_forward_pre_hook(lambda _m, args: kept.append(args[0].flatten(1)))
    try:
        yield kept
    finally:
        handle.remove()


def _timm(name: str, n_classes: int, **kwargs) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, in_chans=1, num_classes=n_classes, **kwargs)


@register_backbone("efficientnet_b0")
def efficientnet_b0(n_classes: int) -> nn.Module:
    return _timm("efficientnet_b0", n_classes)


@register_backbone("mobilenetv2_100")
def mobilenetv2_100(n_classes: int) -> nn.Module:
    return _timm("mobilenetv2_100", n_classes)


@register_backbone("vgg19")
def vgg19(n_classes: int) -> nn.Module:
    return _timm("vgg19", n_classes)


@register_backbone("densenet22")
def densenet22(n_classes: int) -> nn.Module:
    """The paper's DenseNet22: 3 dense blocks of 3 bottleneck layers, growth rate 12 (22 weight layers)."""
    from timm.models.densenet import DenseNet

    return DenseNet(growth_rate=12, block_config=(3, 3, 3), in_chans=1, num_classes=n_classes)


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """A CPU-friendly CNN (~80 k parameters): two strided conv blocks shrink the 64x32 input to 16x8
    early, then two wider blocks and global average pooling. About 1.5-2.5 k segments/s of training
    on 2 CPU cores, 10-30x an EfficientNet-B0."""

    def __init__(self, n_classes: int, widths: tuple[int, int, int, int] = (16, 32, 64, 96)):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.features = nn.Sequential(*_conv_bn_relu(1, w1, 2), *_conv_bn_relu(w1, w2, 2), *_conv_bn_relu(w2, w3),
                                      nn.MaxPool2d(2), *_conv_bn_relu(w3, w4))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(w4, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_backbone("small_cnn")
def small_cnn(n_classes: int) -> nn.Module:
    return SmallCNN(n_classes)


@register_backbone("tiny_cnn")
def tiny_cnn(n_classes: int) -> nn.Module:
    """small_cnn at half the width (~20 k parameters, ~1/4 of the arithmetic): a `cpu` preset chain on
    EmoDB takes ~0.45x the time, at ~4 UA points less (bench/RESULTS.md). For smoke sweeps."""
    return SmallCNN(n_classes, widths=(8, 16, 32, 48))
