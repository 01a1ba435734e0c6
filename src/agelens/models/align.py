"""Feature alignment after each backbone stage for the occlusion student (paper 1, section 3.2).

The paper aligns F_s with F_s + Conv(Concat(F_s, F_t)); F_t (teacher features of the clean face) does not exist
at inference. Two modules here:
- `residual`: F_s + B(F_s), a zero-initialised bottleneck trained (by the stage-wise L2 loss) to move occluded
  student features toward the teacher's. It needs only student features, so it runs unchanged at inference.
- `concat` (the paper's form): F_s + Conv(Concat(F_s, F_t)) while training; at inference F_t is unavailable and
  F_s is fed in its place (the only teacher-free reading of the formula), which the ablation measures.
Both start as the identity, so a student initialised from the teacher starts as the teacher.
"""

from __future__ import annotations

import torch
from torch import nn


class Identity(nn.Module):
    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        return x


class ResidualAlign(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        h = max(16, c // 2)
        self.body = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True),
                                  nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h),
                                  nn.ReLU(inplace=True), nn.Conv2d(h, c, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.body(x)


class ConcatAlign(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * c, c, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.conv(torch.cat([x, x if teacher is None else teacher], 1))


ALIGNERS = {"none": Identity, "residual": ResidualAlign, "concat": ConcatAlign}


def build_adapters(kind: str, channels: tuple[int, ...]) -> nn.ModuleList | None:
    if kind == "none":
        return None
    if kind not in ALIGNERS:
        raise ValueError(f"model.align must be one of {', '.join(ALIGNERS)}, got {kind!r}")
    return nn.ModuleList([ALIGNERS[kind](c) for c in channels])
