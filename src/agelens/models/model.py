"""AgeModel = backbone (stage taps) + global average pool + dropout + age head."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..registry import BACKBONES
from .backbones import Backbone
from .heads import AgeHead, build_head


class AgeModel(nn.Module):
    def __init__(self, backbone: Backbone, head: AgeHead, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.backbone.info.mean, self.backbone.info.std

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        stages, final = self.backbone(x)
        emb = final.mean((2, 3))
        out: dict = self.head(self.dropout(emb))
        out["embedding"] = emb
        out["stages"] = stages
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    @torch.no_grad()
    def predict(self, x: torch.Tensor, tta_flip: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised NCHW batch → (age, spread, embedding), averaged over a horizontal flip when asked."""
        out = self(x)
        age, spread = self.head.decode(out)
        emb = out["embedding"].float()
        if tta_flip:
            out_f = self(torch.flip(x, dims=[3]))
            age_f, spread_f = self.head.decode(out_f)
            age, spread, emb = (age + age_f) / 2, (spread + spread_f) / 2, (emb + out_f["embedding"].float()) / 2
        return age.float(), spread.float(), emb


def build_model(cfg: ModelConfig) -> AgeModel:
    backbone = BACKBONES.build(cfg.backbone, pretrained=cfg.pretrained)
    if cfg.align != "none":
        from .align import build_adapters

        backbone.adapters = build_adapters(cfg.align, backbone.info.stage_channels)
    head = build_head(cfg.head, backbone.info.out_channels, cfg.min_age, cfg.max_age, sigma=cfg.dldl_sigma,
                      window=cfg.mwr_window, iterations=cfg.mwr_iterations)
    return AgeModel(backbone, head, cfg.dropout)
