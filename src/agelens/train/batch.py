"""uint8 NHWC batches → normalised float NCHW (channels_last when chosen), plus light photometric jitter."""

from __future__ import annotations

import torch


def to_input(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], device: str = "cpu",
             channels_last: bool = True) -> torch.Tensor:
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


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
