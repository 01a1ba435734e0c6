"""uint8 NHWC face batches → normalised float NCHW tensors (channels_last when chosen): the one preprocessing
step every torch model shares, in training, evaluation and inference."""

from __future__ import annotations

import torch


def to_input(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], device: str = "cpu",
             channels_last: bool = True) -> torch.Tensor:
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
