import numpy as np
import pytest
import torch

from agelens.config import load_config
from agelens.errors import ConfigError
from agelens.models import build_model
from agelens.models.backbones import efficientnet_lite_imagenet


@pytest.mark.parametrize("backbone,chans", [("resnet18", [64, 128, 256, 512]), ("resnet34", [64, 128, 256, 512]),
                                            ("resnet50", [256, 512, 1024, 2048]),
                                            ("efficientnet_lite0", [24, 40, 112, 320]),
                                            ("efficientnet_lite1", [24, 40, 112, 320]),
                                            ("efficientnet_lite2", [24, 48, 120, 352])])
def test_stage_taps(backbone, chans):
    cfg = load_config(None, [f"model.backbone={backbone}", "model.pretrained=false"])
    m = build_model(cfg.model).eval()
    out = m(torch.randn(2, 3, 64, 64))
    assert [s.shape[1] for s in out["stages"]] == chans
    assert [s.shape[-1] for s in out["stages"]] == [16, 8, 4, 2]
    assert sum(p.numel() for k in range(1, 5) for p in m.backbone.stage_parameters(k)) == \
        sum(p.numel() for p in m.backbone.parameters())


def test_pretrained_resnet_is_refused_not_silently_random():
    """Only EfficientNet-Lite has ImageNet weights offline: asking for them on a ResNet is an error (it trained
    from scratch without a word), while the default (none) takes them where they install."""
    with pytest.raises(ConfigError, match="no ImageNet weights for resnet50"):
        build_model(load_config(None, ["model.backbone=resnet50", "model.pretrained=true"]).model)
    assert build_model(load_config(None, ["model.backbone=resnet18"]).model).backbone.info.weights.startswith("random")
    lite = build_model(load_config(None, ["model.backbone=efficientnet_lite0"]).model)
    assert lite.backbone.info.weights.startswith("ImageNet")


@pytest.mark.parametrize("k,size", [(0, 224), (1, 240), (2, 260)])
def test_efficientnet_lite_imagenet_weights_recognise_a_cat(k, size):
    from skimage import data
    from skimage.transform import resize

    m = efficientnet_lite_imagenet(k).eval()
    img = resize(data.chelsea(), (size, size), anti_aliasing=True).astype(np.float32)
    x = torch.from_numpy((img - 0.498) / 0.502).permute(2, 0, 1)[None]
    with torch.no_grad():
        p = m(x).softmax(-1)[0]
    assert p.argmax().item() == 285 and p[285].item() > 0.5  # ImageNet class 285: Egyptian cat
