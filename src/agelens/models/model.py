"""AgeModel = backbone (stage taps) [+ face-region attention] + global average pool + dropout + age head."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import BACKBONES, HEADS
from .backbones import Backbone
from .heads import AgeHead, build_head
from .regions import RegionAttention


class AgeModel(nn.Module):
    def __init__(self, backbone: Backbone, head: AgeHead, dropout: float = 0.0,
                 region_attention: RegionAttention | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.region_attention = region_attention  # optional: on the last feature map, before pooling
        self.guards: nn.Linear | None = None  # optional: pooled features → (occlusion, face) logits (GUARDS order)

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.backbone.info.mean, self.backbone.info.std

    def forward(self, x: torch.Tensor, regions: torch.Tensor | None = None) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """`regions`: (B, R, res, res) face-region masks for region attention (None: the mean-face masks)."""
        stages, final = self.backbone(x)
        guard_in = guard_features(stages, final) if self.guards is not None else None
        if self.region_attention is not None:
            final = self.region_attention(final, regions)
        emb = final.mean((2, 3))
        out: dict = self.head(self.dropout(emb))
        out["embedding"] = emb
        out["stages"] = stages
        if guard_in is not None:
            out["guards"] = self.guards(guard_in)
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def _view_mean(self, x: torch.Tensor, tta_flip: bool, regions: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
        """age, spread, embedding and, for a model with guard heads, the guard probabilities (N, 2) of a normalised
        NCHW batch, each averaged over a horizontal flip when asked (regions are left+right unions: the mirror's
        masks are the mirrored masks)."""
        views = [(x, regions)]
        if tta_flip:
            views.append((torch.flip(x, dims=[3]), None if regions is None else torch.flip(regions, dims=[3])))
        total: dict[str, torch.Tensor] = {}
        for v, r in views:
            out = self(v, r)
            age, spread = self.head.decode(out)
            got = {"age": age.float(), "spread": spread.float(), "embedding": out["embedding"].float()}
            if "guards" in out:
                got["guards"] = torch.sigmoid(out["guards"].float())
            for k, t in got.items():
                total[k] = total[k] + t if k in total else t
        return {k: t / len(views) for k, t in total.items()}

    @torch.no_grad()
    def predict_guards(self, x: torch.Tensor, tta_flip: bool = True) -> tuple[torch.Tensor, ...]:
        """Normalised NCHW batch → (age, spread, guard probabilities (N, 2) in GUARDS order), from one backbone pass
        per view, averaged over a horizontal flip when asked."""
        m = self._view_mean(x, tta_flip)
        return m["age"], m["spread"], m["guards"]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, tta_flip: bool = True, regions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised NCHW batch → (age, spread, embedding), averaged over a horizontal flip when asked."""
        m = self._view_mean(x, tta_flip, regions)
        return m["age"], m["spread"], m["embedding"]


def _takes(registry, name: str, args: dict, key: str) -> None:
    """ConfigError naming the options a builder does not take (a builder with **kwargs takes any)."""
    params, takes_any = registry.options(name)
    if args and not takes_any:
        unknown = sorted(set(args) - set(params))
        if unknown:
            own = [n for n in params if n not in ("pretrained", "in_features", "min_age", "max_age")]
            raise ConfigError(f"{key}: {registry.kind} {name!r} takes no {', '.join(unknown)} (its options: "
                              f"{', '.join(own) or 'none'})")


def build_model(cfg: ModelConfig) -> AgeModel:
    """The model a ModelConfig describes: its registered backbone (with `backbone_args`) and head (`head_args`)."""
    _takes(BACKBONES, cfg.backbone, cfg.backbone_args, "model.backbone_args")
    _takes(HEADS, cfg.head, cfg.head_args, "model.head_args")
    backbone = BACKBONES.build(cfg.backbone, pretrained=cfg.pretrained, **cfg.backbone_args)
    if cfg.align != "none":
        from .align import build_adapters

        backbone.adapters = build_adapters(cfg.align, backbone.info.stage_channels)
    head = build_head(cfg.head, backbone.info.out_channels, cfg.min_age, cfg.max_age, sigma=cfg.dldl_sigma,
                      window=cfg.mwr_window, iterations=cfg.mwr_iterations, **cfg.head_args)
    model = AgeModel(backbone, head, cfg.dropout, RegionAttention() if cfg.region_attention else None)
    if cfg.guards:
        model.guards = nn.Linear(guard_dim(backbone), len(GUARDS))
    return model


GUARDS = ("occlusion", "face")  # the guard logits' order: occluded face; a face at all


def guard_features(stages: list[torch.Tensor], final: torch.Tensor) -> torch.Tensor:
    """What the guard heads read: the last feature map pooled over its upper half (eyes, brows) and its lower
    half (nose, mouth, chin) apart, so an occluder's place shows, plus the last stage pooled whole."""
    h = final.shape[2] // 2
    return torch.cat([final[:, :, :h].mean((2, 3)), final[:, :, h:].mean((2, 3)), stages[-1].mean((2, 3))], 1)


def guard_dim(backbone: Backbone) -> int:
    return 2 * backbone.info.out_channels + backbone.info.stage_channels[-1]


# parameters/buffers a model may lack in an older checkpoint (they start at identity when loaded from one)
OPTIONAL_PREFIXES = ("region_attention.",)


def load_compatible(model: AgeModel, state: dict[str, torch.Tensor], source: str,
                    fresh_ok: tuple[str, ...] = ()) -> list[str]:
    """load_state_dict that tolerates only missing optional modules (region attention, and the `fresh_ok` prefixes):
    returns the keys that kept their fresh initialisation; anything else that does not fit raises CheckpointError
    naming `source` and the first tensor that does not fit."""
    from ..errors import CheckpointError

    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        said = next((x for x in lines if "size mismatch" in x), lines[0] if lines else type(e).__name__)
        raise CheckpointError(f"{source}: weights do not fit this model ({said})") from None
    bad = [k for k in missing if not k.startswith((*OPTIONAL_PREFIXES, *fresh_ok))] + list(unexpected)
    if bad:
        raise CheckpointError(f"{source}: weights do not fit this model (missing/unexpected keys: {bad[:3]})")
    return list(missing)
