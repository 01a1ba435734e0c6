"""Guard heads on the age model's own features: one backbone pass answers age, occlusion and faceness.

The separate guards (`train.guards`: an occlusion detector and a face verifier, each an EfficientNet-Lite0 at
112 px) cost two extra network passes per face. Here the teacher's features (frozen; its last map pooled over the
upper and lower face apart, see `models.model.guard_features`) feed two logistic regressions fitted on the same
kinds of crops the separate guards learn from (`cache/guards`, see `train.guards`):

- occlusion: real masked / sunglasses faces (the realocc fit half) and synthetic occluders of the paper's types are
  positives; clean faces (30 % with see-through glasses) negatives. Threshold: 99 % specificity on clean
  validation faces.
- face: faces (clean, under any occluder family, real occluded) are positives; the guards' negatives (non-face
  patches, procedural images and, where the data has them, detector proposals on animal photos) negatives.
  Threshold: keeps 99.5 % of validation faces (clean and occluded).

Alone, the heads do not match the separate networks (a linear read of age features: at 99 % specificity the
occlusion head finds about 3 in 4 real masks, the occlusion detector 49 in 50), so they are used as a cascade
(`guard_cascade` in the card): where a head is sure (a clean face below half the lowest held-out occluded face's
score; a face above every held-out non-face) its answer stands, and only the uncertain crops go to the separate
network, whose threshold decides. These first bands come from aligned crops; `train.guard_bands` measures them
again on faces as `predict` finds them and writes the card's final ones.

Every crop is seen at the teacher's own view (centre crop, input size), half of them photo-degraded. Held out for
the metrics: the validation faces, the odd half of the real occluded faces and of the negatives.

    python -m agelens.train.trunk_guards --model runs/teacher_flip --out runs/teacher_guards
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..models.model import GUARDS, guard_features
from ..occlusion.synth import ALL_TYPES, OCCLUSION_TYPES, OcclusionError, add_clear_glasses
from ..utils import atomic_write, atomic_write_json
from .guards import _occluded, _shapes, _view, degrade

GUARDED_LICENCE = ("weights trained on UTKFace (non-commercial research use) and All-Age-Faces (research use); the guard "
                   "layer also on realocc photos (RWMFD, MaskON, Selfies-with-sunglasses: research/evaluation use): "
                   "non-commercial research use only")


def _pool(data: dict[str, np.ndarray], n: int, rng: np.random.Generator, real_idx: np.ndarray,
          neg_idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """n training crops (256 px) with (occlusion, face) labels; NaN = not a sample of that task."""
    faces = [(k, i) for k in ("utk", "aaf") for i in range(len(data[k]))]
    imgs, occ, face = [], [], []
    for _ in range(n):
        u = rng.random()
        if u < 0.3:  # a clean face (some with see-through glasses): not occluded, a face
            k, i = faces[rng.integers(len(faces))]
            img, lm = data[k][i], data[f"{k}_lm"][i]
            if rng.random() < 0.3:
                with contextlib.suppress(OcclusionError):
                    img = add_clear_glasses(img, lm, rng)
            o, f = 0.0, 1.0
        elif u < 0.45:  # the paper's occluders: occluded, a face
            k, i = faces[rng.integers(len(faces))]
            img = _occluded(data[k][i], data[f"{k}_lm"][i], rng, OCCLUSION_TYPES)
            if img is None:
                continue
            o, f = 1.0, 1.0
        elif u < 0.55:  # any occluder family: a face (its occlusion label is left out: the newer families vary)
            k, i = faces[rng.integers(len(faces))]
            img = _occluded(data[k][i], data[f"{k}_lm"][i], rng, ALL_TYPES)
            if img is None:
                continue
            o, f = np.nan, 1.0
        elif u < 0.7:  # real masks and sunglasses
            img, o, f = data["real"][real_idx[rng.integers(len(real_idx))]], 1.0, 1.0
        else:  # no face
            img = data["neg"][neg_idx[rng.integers(len(neg_idx))]]
            if rng.random() < 0.15:
                img = _shapes(rng)
            o, f = np.nan, 0.0
        if rng.random() < 0.5:
            img = degrade(img, rng)
        imgs.append(img)
        occ.append(o)
        face.append(f)
    return imgs, np.array(occ, np.float32), np.array(face, np.float32)


@torch.no_grad()
def embed(model, crops, crop: int, size: int, rng: np.random.Generator | None, batch: int = 64) -> np.ndarray:
    """The guard heads' features (`models.model.guard_features`) of each 256 px crop at the model's view
    (jittered training views when rng is given)."""
    from ..data.views import centre_crop
    from ..models.inputs import to_input

    out = []
    for i in range(0, len(crops), batch):
        views = np.stack([_view(c, rng, crop, size) if rng is not None else centre_crop(c, crop, size)
                          for c in crops[i:i + batch]])
        x = to_input(torch.from_numpy(views), *model.mean_std, "cpu", True)
        out.append(guard_features(*model.backbone(x)).float().numpy())
    return np.concatenate(out)


CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Logistic regression on standardised features, its L2 strength chosen by 5-fold cross-validated log-loss
    over CS, folded back to raw features: (weights, bias, C)."""
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV

    # scikit-learn 1.8 names the L2 penalty l1_ratios=(0,) and will forbid the old default; the same fit either way
    new_api = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8)
    kw = {"l1_ratios": (0.0,), "use_legacy_attributes": False} if new_api else {}
    mu, sd = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegressionCV(Cs=list(CS), cv=5, scoring="neg_log_loss", max_iter=3000, **kw).fit((x - mu) / sd, y)
    w = np.ravel(lr.coef_) / sd
    return w.astype(np.float32), float(np.ravel(lr.intercept_)[0] - (w * mu).sum()), float(np.ravel(lr.C_)[0])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def fit_guards(model_path: str, data_dir: Path, out: Path, n: int = 4000, seed: int = 0) -> dict:
    """Fit both heads on `model_path`'s frozen features; write OUT/teacher.safetensors + .json (the model with its
    guards, thresholds and metrics in the card) and OUT/metrics.json."""
    from ..models.weights import export_weights, resolve_model

    t0 = time.perf_counter()
    model, cfg, card = resolve_model(model_path)
    model.eval().to(memory_format=torch.channels_last)
    crop, size = cfg.data.crop_size, cfg.data.input_size
    data = dict(np.load(data_dir / "guards.npz", mmap_mode="r"))
    rng = np.random.default_rng(seed)
    real_fit, real_held = np.arange(0, len(data["real"]), 2), np.arange(1, len(data["real"]), 2)
    neg_fit, neg_held = np.arange(0, len(data["neg"]), 2), np.arange(1, len(data["neg"]), 4)
    feats_file = out / "features.npz"  # the frozen model's features: a refit reads them (delete the file for new crops)
    if feats_file.is_file():
        z = np.load(feats_file)
        feats, occ, face = z["feats"], z["occ"], z["face"]
        held = {k[5:]: z[k] for k in z.files if k.startswith("held_")}
    else:
        imgs, occ, face = _pool(data, n, rng, real_fit, neg_fit)
        feats = embed(model, imgs, crop, size, rng)
        # held-out sets at the inference view (centre crop)
        vrng = np.random.default_rng(123)
        val, val_lm = data["utk_val"], data["utk_val_lm"]
        occ_paper = [o for o in (_occluded(v, m, vrng, OCCLUSION_TYPES) for v, m in zip(val, val_lm, strict=True))
                     if o is not None]
        occ_all = [o for o in (_occluded(v, m, vrng, ALL_TYPES) for v, m in zip(val, val_lm, strict=True))
                   if o is not None]
        sets = {"val_clean": list(val), "val_occluded_paper": occ_paper, "val_occluded_any": occ_all,
                "real_held": [data["real"][i] for i in real_held], "neg_held": [data["neg"][i] for i in neg_held]}
        held = {k: embed(model, v, crop, size, None) for k, v in sets.items()}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(feats_file, lambda tmp: np.savez(open(tmp, "wb"), feats=feats, occ=occ, face=face,  # noqa: SIM115
                                                      **{f"held_{k}": v for k, v in held.items()}))
    heads = {}
    for name, y in (("occlusion", occ), ("face", face)):
        keep = np.isfinite(y)
        heads[name] = fit_logistic(feats[keep], y[keep])
    w = np.stack([heads[g][0] for g in GUARDS])
    b = np.array([heads[g][1] for g in GUARDS], np.float32)
    probs = {k: _sigmoid(v @ w.T + b) for k, v in held.items()}
    p_occ, p_face = ({k: v[:, j] for k, v in probs.items()} for j in range(2))
    t_occ = float(np.quantile(p_occ["val_clean"], 0.99))
    t_face = float(np.quantile(np.concatenate([p_face["val_clean"], p_face["val_occluded_any"]]), 0.005))
    kinds = data["real_kind"][real_held]
    # the cascade (inference.finding.TrunkGuard): where the head is sure, the separate network is not run. Sure
    # clean: below half the lowest score of any held-out occluded face (synthetic and real; a margin, because
    # occluders drawn on whole photos score lower than these: a cut at the 0.2 % quantile lost 3 of 99 sunglasses
    # end to end); sure face: above every held-out non-face and the separate verifier's threshold
    occluded = np.concatenate([p_occ["val_occluded_paper"], p_occ["real_held"]])
    skip_occ = float(occluded.min()) / 2
    skip_face = float(max(p_face["neg_held"].max(), t_face))
    cascade = {"occlusion": {"skip_below": round(skip_occ, 4),
                             "clean_val_skipped": float((p_occ["val_clean"] < skip_occ).mean()),
                             "occluded_skipped": float((occluded < skip_occ).mean())},
               "face": {"skip_above": round(skip_face, 4),
                        "val_faces_skipped": float((np.concatenate([p_face["val_clean"], p_face["val_occluded_any"]])
                                                    >= skip_face).mean()),
                        "negatives_skipped": float((p_face["neg_held"] >= skip_face).mean())}}
    metrics = {
        "occlusion": {"threshold": round(t_occ, 4), "val_specificity": float((p_occ["val_clean"] < t_occ).mean()),
                      "val_synthetic_recall": float((p_occ["val_occluded_paper"] >= t_occ).mean()),
                      **{f"real_held_recall_{k}": float((p_occ["real_held"][kinds == k] >= t_occ).mean())
                         for k in np.unique(kinds)}},
        "face": {"threshold": round(t_face, 4), "val_clean_recall": float((p_face["val_clean"] >= t_face).mean()),
                 "val_occluded_recall": float((p_face["val_occluded_any"] >= t_face).mean()),
                 "real_held_recall": float((p_face["real_held"] >= t_face).mean()),
                 "negatives_held_accepted": float((p_face["neg_held"] >= t_face).mean())},
        "cascade": cascade, "c": {g: heads[g][2] for g in GUARDS},
        "n_train": len(feats), "n_val": len(held["val_clean"]), "n_real_held": len(real_held),
        "n_neg_held": len(neg_held),
        "seconds": round(time.perf_counter() - t0)}
    cfg.model.guards = True
    model.guards = torch.nn.Linear(w.shape[1], len(GUARDS))  # the same model with its guard layer
    with torch.no_grad():
        model.guards.weight.copy_(torch.from_numpy(w))
        model.guards.bias.copy_(torch.from_numpy(b))
    new_card = {k: v for k, v in card.items() if k not in ("name", "config")}
    new_card.update({"guard_thresholds": {"occlusion": metrics["occlusion"]["threshold"],
                                          "face": metrics["face"]["threshold"]},
                     "guard_cascade": {"occlusion": {"skip_below": cascade["occlusion"]["skip_below"]},
                                       "face": {"skip_above": cascade["face"]["skip_above"]}},
                     "guard_metrics": metrics,
                     "guard_recipe": f"python -m agelens.train.trunk_guards --model {model_path} --out {out} --n {n}"})
    if "realocc" not in str(new_card.get("licence", "")):  # the guard layer learnt from realocc's real occluders
        new_card["licence"] = GUARDED_LICENCE
    out.mkdir(parents=True, exist_ok=True)
    export_weights(model, cfg, out, "teacher", new_card)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the age model (shipped name, .safetensors, .pt or run folder)")
    ap.add_argument("--data", type=Path, default=Path("cache/guards"), help="`python -m agelens.train.guards data`")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=4000, help="training crops")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(fit_guards(a.model, a.data, a.out, a.n), indent=1))


if __name__ == "__main__":
    from ..utils import run_tool

    run_tool(main)
