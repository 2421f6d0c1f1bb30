"""Segment augmentations for MTL-AUG, applied on the fly to a normalised input batch (b, 1, n_mels, frames).

Each segment gets one augmentation drawn from the configured set (its index is the auxiliary task's
label; `none` leaves the segment clean). All randomness comes from the caller's `torch.Generator`, so a
fold's training is reproducible from its seed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dsl.registry import Registry, first_line

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # one segment (1, n_mels, frames)


@dataclass(frozen=True)
class Augmentation:
    """`fn(segment, generator)`: one augmented segment (all randomness from the generator)."""

    name: str
    fn: Augment
    description: str = ""

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.fn(x, gen)


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")


def register_augmentation(name: str, *, description: str = "") -> Callable[[Augment], Augment]:
    return AUGMENTATIONS.decorator(lambda fn: Augmentation(name, fn, description or first_line(fn.__doc__)))


def _randint(low: int, high: int, gen: torch.Generator) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=gen))


@register_augmentation("none")
def none(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return x


@register_augmentation("noise")
def noise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Additive noise at 0.3 of the (unit) feature scale."""
    return x + 0.3 * torch.randn(x.shape, generator=gen).to(x.device, x.dtype)


@register_augmentation("time_mask")
def time_mask(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A span of 4-8 frames set to the segment's mean (SpecAugment's time mask)."""
    w = _randint(4, 8, gen)
    t0 = _randint(0, x.shape[-1] - w, gen)
    out = x.clone()
    out[..., t0:t0 + w] = x.mean()
    return out


@register_augmentation("freq_mask")
def freq_mask(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A band of 4-8 mel bins set to the segment's mean (SpecAugment's frequency mask)."""
    w = _randint(4, 8, gen)
    f0 = _randint(0, x.shape[-2] - w, gen)
    out = x.clone()
    out[..., f0:f0 + w, :] = x.mean()
    return out


@register_augmentation("pitch_shift")
def pitch_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The mel axis shifted by 2-4 bins up or down (edge bins repeated): a pitch change on log-Mel."""
    k = _randint(2, 4, gen) * (1 if _randint(0, 1, gen) else -1)
    out = torch.roll(x, k, dims=-2)
    if k > 0:
        out[..., :k, :] = x[..., :1, :]
    else:
        out[..., k:, :] = x[..., -1:, :]
    return out


@register_augmentation("speed")
def speed(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Time stretched by 0.8 or 1.25 (linear interpolation), then cropped or edge-padded to the length."""
    frames = x.shape[-1]
    factor = 0.8 if _randint(0, 1, gen) else 1.25
    n = max(2, int(round(frames * factor)))
    y = F.interpolate(x.unsqueeze(0), size=(x.shape[-2], n), mode="bilinear", align_corners=False)[0]
    if n >= frames:
        return y[..., :frames]
    return torch.cat([y, y[..., -1:].expand(*y.shape[:-1], frames - n)], dim=-1)


def augment_batch(x: torch.Tensor, names: tuple[str, ...], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(augmented batch, index into `names` of each segment's augmentation)."""
    ids = torch.randint(len(names), (x.shape[0],), generator=gen)
    out = torch.stack([AUGMENTATIONS[names[int(i)]](x[j], gen) for j, i in enumerate(ids)])
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return (out.contiguous(memory_format=torch.channels_last) if channels_last else out), ids.to(x.device)
