"""The training age mix as an age model sees it, for adapting a job's ages to its own mix (`inference.prior`).

The mix is the mean, over a seeded sample of cached training faces of each dataset weighted by its train part's
size, of each face's answer read as a Gaussian of its age and spread (both views, as the cache protocol reads a
face): what the model's answers look like on faces that follow its training mix. Stored in the model card as
`age_prior` (one probability per whole age from the head's min_age).

    python -m agelens.train.age_prior --model teacher --config configs/teacher_stable.yaml --n 3000 --write
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ..config import RunConfig, load_config
from ..data.cache import FaceCache
from ..evaluate.predict import predict_cache
from ..inference.prior import posteriors
from ..models.weights import resolve_model, weights_dir
from ..numerics import Numerics
from ..utils import atomic_write_json


def training_mix(model, caches: list[str], n: int, cfg: RunConfig, seed: int = 0) -> np.ndarray:
    """The mean Gaussian answer over up to n seeded faces per train cache, caches weighted by their sizes; each
    face answered by the cache evaluation pass (`evaluate.predict.predict_cache`, face and mirror, fp32 on the CPU)
    at the model's own crop and input size (`cfg`, its config)."""
    grid = np.arange(int(model.head.max_age - model.head.min_age) + 1, dtype=np.float64)
    numerics = Numerics("cpu", "fp32", False, "the training age mix: fp32")
    total, mix = 0, np.zeros(len(grid))
    for path in caches:
        c = FaceCache(path)
        idx = np.sort(np.random.default_rng(seed).choice(len(c), min(n, len(c)), replace=False))
        a, s, _ = predict_cache(model, c, cfg, numerics, tta_flip=True, indices=idx)
        mix += posteriors(a - model.head.min_age, s, grid).mean(0) * len(c)
        total += len(c)
        print(f"{path}: {len(idx)} faces, mean age {a.mean():.2f}", flush=True)
    return mix / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="teacher", help="shipped name, .safetensors, .pt or run folder")
    ap.add_argument("--config", required=True, help="the model's training config (its train caches)")
    ap.add_argument("--n", type=int, default=3000, help="faces per train cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="store it in the shipped model's card")
    a = ap.parse_args()
    if a.write and not (weights_dir() / f"{a.model}.json").is_file():
        ap.error(f"--write stores the mix in a shipped model's card; {a.model!r} is not a shipped model")
    import torch

    torch.set_num_threads(2)
    cfg = load_config(a.config)
    model, mcfg, _ = resolve_model(a.model)
    model.eval()
    caches = [f"{d.cache_dir}/train" for d in [cfg.data, *cfg.extra_data]]
    mix = training_mix(model, caches, a.n, mcfg, a.seed)
    grid = np.arange(len(mix))
    rec = {"age_prior": [round(float(p), 7) for p in mix],
           "age_prior_recipe": f"python -m agelens.train.age_prior --model {a.model} --config {a.config} --n {a.n}"
                               f" --seed {a.seed}: mean Gaussian answer over training faces, mean age "
                               f"{float(mix @ grid):.2f}"}
    print(rec["age_prior_recipe"])
    if a.write:
        card_p = weights_dir() / f"{a.model}.json"
        card = json.loads(card_p.read_text())
        card.update(rec)
        atomic_write_json(card_p, card)
        print(f"written to {card_p}")


if __name__ == "__main__":
    from ..utils import run_tool

    run_tool(main)
