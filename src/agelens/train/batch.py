"""Training-time batch augmentation: light photometric jitter on uint8 NHWC batches."""

from __future__ import annotations

import torch


def photometric_jitter(images: torch.Tensor, generator: torch.Generator, strength: float = 0.2) -> torch.Tensor:
    """Per-image brightness/contrast/saturation jitter on uint8 NHWC, returning uint8."""
    x = images.float()
    b = x.shape[0]
    bright = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength
    sat = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength
    gray = x.mean(3, keepdim=True)
    x = gray + (x - gray) * sat
    mu = x.mean((1, 2, 3), keepdim=True)
    x = (x - mu) * contrast + mu
    return (x * bright).clamp_(0, 255).to(torch.uint8)
