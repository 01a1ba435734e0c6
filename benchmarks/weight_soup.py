"""A weight soup (Wortsman et al. 2022): the mean (uniform, or weighted by --weights) of several fine-tunes of one
parent, written as a training checkpoint that `agelens evaluate --model` reads. Members: shipped names,
.safetensors, .pt checkpoints or run folders of the same architecture; parameters and BatchNorm statistics are
averaged, counters taken from the first member.

    python benchmarks/weight_soup.py teacher runs/teacher_anchor runs/teacher_anchor_hard --out runs/soup/all3/best.pt
    agelens evaluate -c configs/teacher_stable.yaml --model runs/soup/all3/best.pt --part val --from-cache -o OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agelens.config import config_to_dict
from agelens.models.checkpoint import save_checkpoint
from agelens.models.weights import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("members", nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--weights", type=float, nargs="+", default=None,
                    help="one weight per member (normalised to sum 1); default: uniform")
    a = ap.parse_args()
    if a.weights is not None and (len(a.weights) != len(a.members) or min(a.weights) < 0 or sum(a.weights) <= 0):
        ap.error(f"--weights needs {len(a.members)} non-negative weights with a positive sum, got {a.weights}")
    weights = [1.0] * len(a.members) if a.weights is None else a.weights
    weights = [w / sum(weights) for w in weights]
    models = [resolve_model(m) for m in a.members]
    first, cfg, _ = models[0]
    states = [m[0].state_dict() for m in models]
    soup = {}
    for k, v in first.state_dict().items():
        if not v.is_floating_point():
            soup[k] = v
            continue
        if any(k not in s for s in states):  # e.g. guard heads only some members carry: left out
            continue
        soup[k] = sum(w * s[k].float() for w, s in zip(weights, states))
    if not any(k.startswith("guards.") for k in soup):  # a member without the guard heads: the soup has none
        cfg.model.guards = False
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(a.out, {"model": soup, "config": config_to_dict(cfg), "epoch": 0, "members": a.members,
                            "member_weights": weights})
    print(f"{a.out}: mean of {len(states)} members (weights {[round(w, 3) for w in weights]}), {len(soup)} tensors")


if __name__ == "__main__":
    main()
