"""Training checkpoints (.pt): atomic save with a digest of every tensor, verified load, model + config rebuild."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig, config_from_dict
from ..errors import CheckpointError
from ..utils import atomic_write
from .model import AgeModel, build_model


def state_digest(obj, h=None) -> str:
    """SHA-256 over every tensor, array and scalar of a (nested) checkpoint state, in key order."""
    h = h or hashlib.sha256()
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            state_digest(obj[k], h)
    elif isinstance(obj, list | tuple):
        for v in obj:
            state_digest(v, h)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().reshape(-1).contiguous()
        h.update(f"{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, int | float | str | bool) or obj is None:
        h.update(repr(obj).encode())
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomic write; the state's digest goes in as "checksum" and is verified by load_checkpoint."""
    state = {k: v for k, v in state.items() if k != "checksum"}
    state["checksum"] = state_digest(state)
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except RuntimeError as e:  # torch.save on a full disk: "unexpected pos ..." (the temp file is removed)
        raise CheckpointError(f"could not write checkpoint {path} ({str(e).splitlines()[0] if str(e) else e!r}; "
                              "is the disk full?)") from None


TRUST_ENV = "AGELENS_TRUST_CHECKPOINTS"  # =1: load .pt files that hold Python objects (runs code the file names)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state, read as tensors and plain data only (torch's `weights_only`): a .pt that names other
    Python objects would run code while loading, so it is refused unless TRUST_ENV=1 (agelens' own hold none)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        if "unsupported global" not in str(e).lower():  # torch: "Unsupported global: GLOBAL x" / "unsupported GLOBAL
            #                                               posix.system whose module posix is blocked"
            raise CheckpointError(f"checkpoint {p} is unreadable or corrupt ({type(e).__name__})") from None
        if os.environ.get(TRUST_ENV) != "1":
            what = next((ln.split("GLOBAL", 1)[1].split()[0] for ln in str(e).splitlines() if "GLOBAL" in ln), "?")
            raise CheckpointError(f"checkpoint {p} holds Python objects beyond tensors and plain data (first: {what}); "
                                  f"loading it would run code the file names, so it is refused. If you trust where it "
                                  f"came from, set {TRUST_ENV}=1") from None
        try:
            ck = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e2:
            raise CheckpointError(f"checkpoint {p} is unreadable or corrupt ({type(e2).__name__})") from None
    if isinstance(ck, dict) and "checksum" in ck:  # checkpoints from before checksums load unverified
        expected = ck.pop("checksum")
        if state_digest(ck) != expected:
            raise CheckpointError(f"checkpoint {p} is corrupt: checksum mismatch (its tensors changed after saving)")
    return ck


def build_model_of(path: str | Path, cfg: RunConfig) -> AgeModel:
    """The model a saved config describes; CheckpointError naming the file where a component is not registered
    (a plugin's backbone or head, not imported: `docs/extending.md`)."""
    from ..errors import ConfigError

    try:
        return build_model(cfg.model)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def model_from_checkpoint(path: str | Path) -> tuple[AgeModel, RunConfig]:
    ck = load_checkpoint(path)
    if "model" not in ck or "config" not in ck:
        raise CheckpointError(f"{path} is not an agelens checkpoint (missing model/config)")
    cfg = config_from_dict(ck["config"])
    cfg.model.pretrained = False
    model = build_model_of(path, cfg)
    model.load_state_dict(ck["model"])
    return model.eval(), cfg
