"""Shipped weights: fp16 safetensors + a JSON card (configs, metrics, provenance); resolve names or paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import RunConfig, config_from_dict, config_to_dict
from ..errors import CheckpointError
from ..utils import atomic_write, atomic_write_json, shipped_models, weights_dir
from .checkpoint import build_model_of
from .model import AgeModel

DEFAULT_MODEL = "teacher"
__all__ = ["DEFAULT_MODEL", "export_weights", "load_weights", "resolve_model", "shipped_models", "weights_dir"]


def export_weights(model: AgeModel, cfg: RunConfig, out_dir: str | Path, name: str, card: dict) -> Path:
    """Write NAME.safetensors (fp16) and NAME.json (config + card) atomically."""
    out = Path(out_dir)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / f"{name}.safetensors", lambda tmp: save_file(sd, tmp))
    atomic_write_json(out / f"{name}.json", {"name": name, "config": config_to_dict(cfg), **card})
    return out / f"{name}.safetensors"


def load_weights(path: str | Path) -> tuple[AgeModel, RunConfig, dict]:
    """Load NAME.safetensors + NAME.json into a float32 model in eval mode."""
    p = Path(path)
    card_p = p.with_suffix(".json")
    if not p.is_file() or not card_p.is_file():
        raise CheckpointError(f"weights not found: need {p} and {card_p}")
    try:
        card = json.loads(card_p.read_text())
        cfg = config_from_dict(card["config"])
        sd = load_file(str(p))
    except Exception as e:
        raise CheckpointError(f"weights {p} are unreadable or corrupt ({type(e).__name__}: {e})") from None
    cfg.model.pretrained = False
    model = build_model_of(p, cfg)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    except RuntimeError as e:
        raise CheckpointError(f"weights {p} do not match their config: {str(e).splitlines()[0]}") from None
    return model.eval(), cfg, card


def frozen_model(name_or_path: str) -> tuple[AgeModel, RunConfig]:
    """`resolve_model`'s model in eval mode with no parameter trainable (a distillation teacher), and its config."""
    model, cfg, _ = resolve_model(name_or_path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), cfg


def resolve_model(name_or_path: str | None = None) -> tuple[AgeModel, RunConfig, dict]:
    """A shipped model name, a .safetensors file, a .pt checkpoint, or a run folder (its best.pt)."""
    from .checkpoint import model_from_checkpoint

    target = name_or_path or DEFAULT_MODEL
    p = Path(target)
    if p.is_dir():
        if not (p / "best.pt").is_file() and (p / "stages.pt").is_file():
            raise CheckpointError(f"{p} holds no best.pt (its fine-tuning has not run or finished): {p / 'stages.pt'} "
                                  "is its stage-wise student; give that file")
        p = p / "best.pt"
    if p.suffix == ".pt" or (p.is_file() and p.suffix not in (".safetensors", ".json")):
        model, cfg = model_from_checkpoint(p)
        return model, cfg, {"name": str(p), "source": "checkpoint"}
    if p.suffix in (".safetensors", ".json"):
        return load_weights(p.with_suffix(".safetensors"))
    if target in shipped_models():
        return load_weights(weights_dir() / f"{target}.safetensors")
    avail = shipped_models()
    raise CheckpointError(f"model {target!r} is neither a file nor a shipped model "
                          f"(shipped: {', '.join(avail) if avail else 'none'})")


def model_fingerprint(model: torch.nn.Module, crop_size: int, input_size: int) -> str:
    """sha256 (16 hex) of the model's weights rounded to fp16 (so a .pt run and its exported fp16 weights agree)
    and the crop geometry the embeddings were computed with."""
    h = hashlib.sha256(f"{crop_size}|{input_size}".encode())
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu()
        t = t.half() if t.is_floating_point() else t
        h.update(k.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
