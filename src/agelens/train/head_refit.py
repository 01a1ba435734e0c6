"""Re-fit the teacher's age head on its frozen trunk, with faces re-weighted by age bin and by group within each bin.

The trunk's features are extracted once from the cached faces of the train parts (clean, mirrored and one draw of
the training degradations, `data.augment.realistic`); the DLDL head (one linear layer over 1,280 features) is then
trained again from its shipped weights, with the same loss, on those features. This is classifier re-training
(Kang et al. 2020, "Decoupling representation and classifier") and last-layer re-weighting (Kirichenko et al.
2022): with the trunk fixed, the guard heads, the face verifier and everything that reads the trunk stay as they
are, and only the age decoding changes. Weights (`group_weights`): each age bin's faces weighted by the bin's count
to the power −`age_power` (0: as trained), and within a bin and dataset each race × gender group (All-Age-Faces,
without race labels: gender) given equal mass, `group_power` of the way.

Stable answers (issue 19): `features --views resave` adds, per face, the trunk features of two files of the face as a user's
copies of it differ (`resave_features`: train parts the mixed `data.augment.resave_pair`, other parts the stability
benchmark's JPEG q95 -> q75 at a small face's resolution); `fit --consistency C` then adds C x |age(file 1) -
age(file 2)| per pair to the loss (both files also fitted to the label), and the scores report the pairs' mean and
p99 age change.

    python -m agelens.train.head_refit features --out runs/head
    python -m agelens.train.head_refit fit --features runs/head --age-power 0 --group-power 1 --epochs 12 --out runs/head/fit
    python -m agelens.train.head_refit features --views resave --out runs/head    # optional: the re-saved pairs
    python -m agelens.train.head_refit fit --features runs/head --consistency 1 --out runs/head/fit_c1

`--views NAME` (a test degradation, e.g. lowres) adds that view's features (scored per view; `fit --extra-views NAME`
also fits them). `--model student` re-fits the student's head: `extract` draws one occluder of the student's
training mix on every face first (the added views do not).
    python -m agelens.train.head_refit apply --fit runs/head/fit --out runs/head/fit/weights

`apply` writes the shipped teacher with the new head (NAME.safetensors + NAME.json); the card keeps the trunk's and
guards' entries and drops those measured on the old head's outputs (test metrics, interval z, TTA cut, int8 ranges),
which are measured again before it ships.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..data.augment import TEST_DEGRADATIONS
from ..data.views import centre_views
from ..evaluate.metrics import AGE_BINS, age_bin, standardised_mae
from ..utils import atomic_write_json

DATASETS = ("utkface", "aaf")
VIEWS = ("clean", "mirror", "degraded")
BINS = [b for b, _, _ in AGE_BINS]


def group_weights(ages: np.ndarray, groups: np.ndarray, age_power: float, group_power: float,
                  strata: np.ndarray | None = None) -> np.ndarray:
    """Per-face weights with mean 1: count(age bin)^−age_power × count(bin, stratum, group)^−group_power, the
    latter rescaled so every (bin, stratum) keeps the mass it had (strata: e.g. the dataset, so balancing the
    groups of one dataset does not move weight to or from the other)."""
    bins = np.array([age_bin(a) for a in ages])
    _, b_inv = np.unique(bins, return_inverse=True)
    w = np.bincount(b_inv)[b_inv].astype(np.float64) ** -age_power
    if group_power > 0:
        cell = np.char.add(bins.astype(str), "|")
        if strata is not None:
            cell = np.char.add(np.char.add(cell, np.asarray(strata, str)), "|")
        _, c_inv = np.unique(cell, return_inverse=True)
        _, k_inv = np.unique(np.char.add(cell, np.asarray(groups, str)), return_inverse=True)
        g = np.bincount(k_inv)[k_inv].astype(np.float64) ** -group_power
        for c in np.unique(c_inv):
            sel = c_inv == c
            g[sel] *= sel.sum() / g[sel].sum()
        w *= g
    return w / w.mean()


def groups_of(race: np.ndarray, gender: np.ndarray) -> np.ndarray:
    """race|gender per face; faces without a race label (All-Age-Faces) form 'aaf|gender'."""
    race = np.where(np.asarray(race, str) == "", "aaf", np.asarray(race, str))
    return np.char.add(np.char.add(race, "|"), np.asarray(gender, str))


RESAVE_SCALE = (0.3, 0.6)  # held-out pairs: the face's working resolution as a share of the crop (a small photo)


def jpeg_pair(img: np.ndarray, rng: np.random.Generator, q: tuple[int, int] = (95, 75),
              scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The stability benchmark's re-save on a cached crop: the face at a small working resolution (`scale`, default
    drawn from RESAVE_SCALE, of the crop) saved as JPEG q[0], that file saved again at q[1]; both brought back to the
    crop's size."""
    import cv2

    from ..data.augment import _jpeg_q, shrink

    h, w = img.shape[:2]
    a = _jpeg_q(shrink(img, rng.uniform(*RESAVE_SCALE) if scale is None else scale), q[0])
    b = _jpeg_q(a, q[1])
    return tuple(np.ascontiguousarray(cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)) for x in (a, b))


def resave_features(part_dirs: dict[str, Path], out: Path, seed: int = 0, batch: int = 64,
                    model: str = "teacher") -> None:
    """Trunk features (fp16) of two files of every cached face (KEY_resave.npz: a, b): train parts one draw of
    `data.augment.resave_pair` (working resolution 30-100 %, JPEG / x0.5 / shift), other parts `jpeg_pair`."""
    from ..data.augment import resave_pair
    from ..data.cache import FaceCache

    emb, t = _embedder(batch, model)
    out.mkdir(parents=True, exist_ok=True)
    for key, d in part_dirs.items():
        t0 = time.time()
        imgs = np.asarray(FaceCache(d, verify=False).images)
        rng = np.random.default_rng(seed)
        pairs = [resave_pair(im, rng, 0.3) if key.endswith("_train") else jpeg_pair(im, rng) for im in imgs]
        arrays = {k: emb(centre_views(np.stack([p[i] for p in pairs]), t.crop_size, t.input_size))
                  for i, k in enumerate("ab")}
        np.savez(out / f"{key}_resave.npz", **arrays)
        print(f"{key} resave: {len(imgs)} pairs, {time.time() - t0:.0f} s", flush=True)


PHOTO = "photo_"  # a view name's prefix: the degradation at a small photo's pixel scale (`at_photo_scale`)


def at_photo_scale(img: np.ndarray, name: str, seed: int) -> np.ndarray:
    """A cached crop under test degradation `name` applied where a small photo applies it: the face shrunk to a
    working resolution drawn from RESAVE_SCALE of the crop, degraded there (grain, noise and blur at the photo's
    pixel scale, as `benchmarks/generalise.py` degrades a whole photo), brought back to the crop's size."""
    import cv2

    from ..data.augment import degrade_for_test, shrink

    h, w = img.shape[:2]
    small = shrink(img, np.random.default_rng(seed).uniform(*RESAVE_SCALE))
    return np.ascontiguousarray(cv2.resize(degrade_for_test(small, name, seed), (w, h),
                                           interpolation=cv2.INTER_LINEAR))


def degraded_views(imgs: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """Every face of a stack under test degradation `name` (prefixed PHOTO: at a small photo's scale), seeded per
    face and degradation: the views `features --views NAME` extracts."""
    from ..data.augment import degrade_for_test

    base = name.removeprefix(PHOTO)
    k = TEST_DEGRADATIONS.index(base)
    degrade = at_photo_scale if name.startswith(PHOTO) else degrade_for_test
    return np.stack([degrade(im, base, seed * 100_003 + i * 101 + k) for i, im in enumerate(imgs)])


def degraded_features(part_dirs: dict[str, Path], names: list[str], out: Path, seed: int = 0,
                      batch: int = 64, model: str = "teacher") -> None:
    """Trunk features (fp16) of every cached face under each named test degradation (KEY_NAME.npz: x), seeded per
    face as `data.augment.degrade_for_test`; a name prefixed PHOTO degrades at a small photo's scale
    (`at_photo_scale`)."""
    from ..data.cache import FaceCache

    unknown = sorted(n for n in names if n.removeprefix(PHOTO) not in TEST_DEGRADATIONS)
    if unknown:
        raise SystemExit(f"unknown view(s) {', '.join(unknown)}; known: resave, {', '.join(TEST_DEGRADATIONS)}, "
                         f"each also as {PHOTO}NAME")
    emb, t = _embedder(batch, model)
    out.mkdir(parents=True, exist_ok=True)
    for key, d in part_dirs.items():
        imgs = np.asarray(FaceCache(d, verify=False).images)
        for name in names:
            t0 = time.time()
            views = degraded_views(imgs, name, seed)
            np.savez(out / f"{key}_{name}.npz", x=emb(centre_views(views, t.crop_size, t.input_size)))
            print(f"{key} {name}: {len(imgs)} faces, {time.time() - t0:.0f} s", flush=True)


def _embedder(batch: int, model: str = "teacher", read=None):
    """(features of a stack of views, the shipped model's TorchModel); read(model, x) picks what is kept of a
    normalised batch (default: the pooled trunk features)."""
    import torch

    from ..inference.backends.torch import TorchModel
    from ..models.inputs import to_input

    t = TorchModel.load(model, tta_flip=False)
    m = t.model

    def emb(views: np.ndarray) -> np.ndarray:
        res = []
        for i in range(0, len(views), batch):
            x = to_input(torch.from_numpy(np.ascontiguousarray(views[i:i + batch])), *m.mean_std, "cpu", True)
            with torch.no_grad():
                res.append((m(x)["embedding"] if read is None else read(m, x)).float().numpy().astype(np.float16))
        return np.concatenate(res)

    return emb, t


def occluded(imgs: np.ndarray, landmarks: np.ndarray, mix: dict[str, float], seed: int) -> np.ndarray:
    """Each face with one occluder of a kind drawn from `mix` (a card's occlusion mix), seeded per face; faces
    without landmarks (or whose occluder cannot be fitted) are left clean."""
    from ..occlusion.paper import OcclusionError
    from ..occlusion.synth import occlude

    kinds, p = list(mix), np.array(list(mix.values()), np.float64)
    out = imgs.copy()
    for i, (im, lm) in enumerate(zip(imgs, landmarks)):
        if lm is None or not np.isfinite(np.asarray(lm, np.float64)).all():
            continue
        rng = np.random.default_rng((seed, i))
        try:
            out[i] = occlude(im, np.asarray(lm), kinds[rng.choice(len(kinds), p=p / p.sum())], rng).image
        except OcclusionError:  # an occluder that cannot cover its share of this face: the face stays clean
            continue
    return out


def extract(part_dirs: dict[str, Path], out: Path, seed: int = 0, batch: int = 64, model: str = "teacher") -> None:
    """Trunk features (fp16) of every cached face of each part: clean and mirrored; train parts also one degraded
    draw. One .npz per part, with age, gender and race. For the student every face first gets one occluder drawn
    from its card's training mix (the faces it answers)."""
    from ..data.augment import realistic
    from ..data.cache import FaceCache

    emb, t = _embedder(batch, model)
    mix = None
    if model == "student":
        from ..utils import weights_dir

        mix = json.loads((weights_dir() / f"{model}.json").read_text())["config"]["occlusion"]["mix"]
    out.mkdir(parents=True, exist_ok=True)
    for key, d in part_dirs.items():
        t0 = time.time()
        c = FaceCache(d, verify=False)
        imgs = np.asarray(c.images)
        if mix:
            imgs = occluded(imgs, c.landmarks, mix, seed)
        v = centre_views(imgs, t.crop_size, t.input_size)
        arrays = {"clean": emb(v), "mirror": emb(v[:, :, ::-1])}
        if key.endswith("_train"):
            rng = np.random.default_rng(seed)
            deg = np.stack([realistic(im, rng, 1.0, 0.5) for im in imgs])
            arrays["degraded"] = emb(centre_views(deg, t.crop_size, t.input_size))
        rec = c.records
        np.savez(out / f"{key}.npz", age=np.array([r.age for r in rec], np.float32),
                 gender=np.array([r.gender or "" for r in rec]), race=np.array([r.race or "" for r in rec]),
                 model=np.array(model), **arrays)
        print(f"{key}: {len(rec)} faces, {time.time() - t0:.0f} s", flush=True)


def fit_head(emb: np.ndarray, ages: np.ndarray, weights: np.ndarray, w0: np.ndarray, b0: np.ndarray,
             sigma: float, epochs: int = 6, lr: float = 3e-4, dropout: float = 0.2, batch: int = 512,
             seed: int = 0, pairs: tuple | None = None, consistency: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The DLDL loss (KL to a Gaussian label distribution + |expectation − age|), weighted per face, minimised
    over a linear head from (w0, b0) with AdamW and a cosine schedule; the trunk's dropout kept on the features.
    pairs = (features a, features b, ages, weights): two files of each face; each step also fits a batch of them to
    the label and adds consistency × |age(a) − age(b)| (one dropout mask per pair)."""
    import torch
    import torch.nn.functional as F

    from ..models.heads import gaussian_label_distribution

    n_ages = w0.shape[0]
    grid = torch.arange(n_ages, dtype=torch.float32)
    e, y = torch.from_numpy(np.asarray(emb, np.float32)), torch.from_numpy(np.asarray(ages, np.float32))
    wt = torch.from_numpy(np.asarray(weights, np.float32))
    w = torch.tensor(w0, dtype=torch.float32, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=0.0)
    per_epoch = max(1, len(y) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def dldl(logits, target_ages):
        mean = logits.softmax(-1) @ grid
        kl = F.kl_div(logits.log_softmax(-1), gaussian_label_distribution(target_ages, grid, sigma), reduction="none")
        return kl.sum(1) + (mean - target_ages).abs(), mean

    if pairs is not None:
        pa, pb, py, pw = (torch.from_numpy(np.asarray(x, np.float32)) for x in pairs)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(per_epoch):
            idx = perm[i * batch:(i + 1) * batch]
            loss, _ = dldl(F.dropout(e[idx], dropout, training=True) @ w.T + b, y[idx])
            loss = (loss * wt[idx]).mean()
            if pairs is not None:
                j = torch.randint(0, len(py), (batch,), generator=gen)
                mask = F.dropout(torch.ones(batch, pa.shape[1]), dropout, training=True)
                la, ma = dldl((pa[j] * mask) @ w.T + b, py[j])
                lb, mb = dldl((pb[j] * mask) @ w.T + b, py[j])
                loss = loss + (pw[j] * ((la + lb) / 2 + consistency * (ma - mb).abs())).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return w.detach().numpy(), b.detach().numpy()


def head_ages(w: np.ndarray, b: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """The head's expected age per row of features."""
    z = np.asarray(emb, np.float32) @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p @ np.arange(w.shape[0], dtype=np.float32)


def scores(w: np.ndarray, b: np.ndarray, part: dict, n_boot: int = 0) -> dict:
    """Flip-TTA MAE, per-bin MAE and signed error, and (with race labels) age-standardised race spread and gender
    gap (with bootstrap 95 % intervals when n_boot > 0), of a head on one part's features."""
    p = (head_ages(w, b, part["clean"]) + head_ages(w, b, part["mirror"])) / 2
    y = part["age"]
    bins = np.array([age_bin(a) for a in y])
    out = {"n": len(y), "mae": round(float(np.abs(p - y).mean()), 3),
           "bin_mae": {k: round(float(np.abs(p - y)[bins == k].mean()), 2) for k in BINS if (bins == k).any()},
           "bin_signed": {k: round(float((p - y)[bins == k].mean()), 2) for k in BINS if (bins == k).any()}}
    views = sorted(k for k in part if k.startswith("view_"))
    if views:  # single-view MAE (and signed error) per degraded view, next to the clean view's
        out["single_view"] = {k.removeprefix("view_"): [round(float(np.abs(head_ages(w, b, part[k]) - y).mean()), 3),
                                                        round(float((head_ages(w, b, part[k]) - y).mean()), 2)]
                              for k in ["clean"] + views}
    if "resave_a" in part:
        change = np.abs(head_ages(w, b, part["resave_a"]) - head_ages(w, b, part["resave_b"]))
        out["resave_change"] = {"mean": round(float(change.mean()), 3),
                                "p99": round(float(np.percentile(change, 99)), 2),
                                "over_5": round(float((change > 5).mean()), 4)}
    if (part["race"] != "").all():
        s = standardised_mae(p, y, list(part["gender"]), list(part["race"]), n_boot=n_boot)
        out |= {"race_spread": s["race"]["spread"], "gender_gap": s["gender"]["spread"],
                "race_spread_ci95": s["race"]["spread_ci95"], "gender_gap_ci95": s["gender"]["spread_ci95"],
                "race": {k: v["mae"] for k, v in s["race"]["by_group"].items()}}
    return out


STALE = ("test_metrics", "test_metrics_aaf", "interval_z", "interval_calibration", "tta_spread", "tta_spread_recipe",
         "int8_ranges")


def apply(fit: Path, out: Path, name: str = "teacher") -> Path:
    """The shipped model `name` with the head from fit/head.npz, exported to out (fp16 + card with the re-fit
    recipe)."""
    import torch

    from ..models.weights import export_weights, load_weights, weights_dir

    src = weights_dir() / f"{name}.safetensors"
    model, cfg, card = load_weights(src)
    head = np.load(fit / "head.npz")
    with torch.no_grad():
        model.head.fc.weight.copy_(torch.from_numpy(head["weight"]))
        model.head.fc.bias.copy_(torch.from_numpy(head["bias"]))
    recipe = json.loads((fit / "scores.json").read_text())["recipe"]
    card = {k: v for k, v in card.items() if k not in STALE and k != "name"}
    card["head_refit"] = {"recipe": recipe, "trunk_from": card.get("source_checkpoint")}
    return export_weights(model, cfg, out, name, card)


def load_parts(features: Path, part: str) -> dict[str, dict]:
    """Each dataset's features of one part, with its re-saved pairs (resave_a, resave_b) where extracted."""
    parts = {}
    for ds in DATASETS:
        d = dict(np.load(features / f"{ds}_{part}.npz"))
        if (features / f"{ds}_{part}_resave.npz").exists():
            r = np.load(features / f"{ds}_{part}_resave.npz")
            d |= {"resave_a": r["a"], "resave_b": r["b"]}
        for name in TEST_DEGRADATIONS + tuple(PHOTO + n for n in TEST_DEGRADATIONS):
            if (features / f"{ds}_{part}_{name}.npz").exists():
                d[f"view_{name}"] = np.load(features / f"{ds}_{part}_{name}.npz")["x"]
        parts[ds] = d
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features", help="extract the shipped teacher's trunk features of the cached faces")
    f.add_argument("--cache", type=Path, default=Path("cache"))
    f.add_argument("--parts", nargs="+", default=["val", "test", "train"])
    f.add_argument("--out", type=Path, default=Path("runs/head"))
    f.add_argument("--model", default="teacher", choices=("teacher", "student"),
                   help="whose trunk; the student's faces each get one occluder of its training mix")
    f.add_argument("--views", nargs="+", default=None,
                   help="extract these views instead: resave (the re-saved pairs, KEY_resave.npz) and/or test "
                        "degradations (KEY_NAME.npz)")
    g = sub.add_parser("fit", help="re-fit the head; writes OUT/head.npz and OUT/scores.json (val and test)")
    g.add_argument("--features", type=Path, default=Path("runs/head"))
    g.add_argument("--age-power", type=float, default=0.0, help="age-bin weight count^-A (0: as trained)")
    g.add_argument("--group-power", type=float, default=0.0, help="within-bin group balance (1: equal mass)")
    g.add_argument("--epochs", type=int, default=6)
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--model", default="teacher", choices=("teacher", "student"), help="whose head (as extracted)")
    g.add_argument("--extra-views", nargs="+", default=[], metavar="NAME",
                   help="also fit these degraded views of the train parts (from `features --views NAME`)")
    g.add_argument("--pairs", action="store_true", help="also fit the train parts' re-saved pairs to the label")
    g.add_argument("--consistency", type=float, default=0.0,
                   help="weight of |age(file 1) - age(file 2)| on the re-saved pairs (implies --pairs)")
    g.add_argument("--out", type=Path, required=True)
    h = sub.add_parser("apply", help="write the shipped teacher with a fitted head")
    h.add_argument("--fit", type=Path, required=True, help="a `fit` output folder")
    h.add_argument("--name", default="teacher")
    h.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "apply":
        apply(a.fit, a.out, a.name)
        return
    if a.cmd == "features":
        dirs = {f"{ds}_{p}": a.cache / ds / p for p in a.parts for ds in DATASETS}
        if a.views is None:
            extract(dirs, a.out, model=a.model)
        if a.views and "resave" in a.views:
            resave_features(dirs, a.out, model=a.model)
        if a.views and set(a.views) - {"resave"}:
            degraded_features(dirs, [v for v in a.views if v != "resave"], a.out, model=a.model)
        return
    from ..inference.backends.torch import TorchModel

    train = load_parts(a.features, "train")
    made_by = {str(d["model"]) for d in train.values() if "model" in d}
    if made_by - {a.model}:
        raise SystemExit(f"{a.features} holds the {', '.join(sorted(made_by))}'s features; this fit is for "
                         f"--model {a.model}")
    head = TorchModel.load(a.model, tta_flip=False).model.head
    w0, b0 = head.fc.weight.detach().float().numpy(), head.fc.bias.detach().float().numpy()
    views = list(VIEWS) + [f"view_{v}" for v in a.extra_views]
    missing = [f"{ds}: {v}" for ds, d in train.items() for v in views if v not in d]
    if missing:
        raise SystemExit(f"views not extracted in {a.features}: {', '.join(missing)} (run `features --views`)")
    emb = np.concatenate([np.concatenate([d[v] for v in views]) for d in train.values()])
    ages = np.concatenate([np.tile(d["age"], len(views)) for d in train.values()])
    groups = np.concatenate([np.tile(groups_of(d["race"], d["gender"]), len(views)) for d in train.values()])
    strata = np.concatenate([np.full(len(d["age"]) * len(views), ds) for ds, d in train.items()])
    weights = group_weights(ages, groups, a.age_power, a.group_power, strata)
    pairs = None
    if a.pairs or a.consistency > 0:
        if not all("resave_a" in d for d in train.values()):
            raise SystemExit(f"no re-saved pairs in {a.features}: run `features --resave` first")
        starts = np.cumsum([0] + [len(views) * len(d["age"]) for d in train.values()])[:-1]
        face_w = np.concatenate([weights[s0:s0 + len(d["age"])] for s0, d in zip(starts, train.values())])
        pairs = (np.concatenate([d["resave_a"] for d in train.values()]),
                 np.concatenate([d["resave_b"] for d in train.values()]),
                 np.concatenate([d["age"] for d in train.values()]), face_w)
    w, b = fit_head(emb, ages, weights, w0, b0, head.sigma, a.epochs, a.lr, seed=a.seed, pairs=pairs,
                    consistency=a.consistency)
    parts = {p: load_parts(a.features, p) for p in ("val", "test")}
    res = {"recipe": vars(a) | {"features": str(a.features), "out": str(a.out)},
           "shipped": {p: {ds: scores(w0, b0, d, 1000 * (p == "test")) for ds, d in parts[p].items()} for p in parts},
           "refit": {p: {ds: scores(w, b, d, 1000 * (p == "test")) for ds, d in parts[p].items()} for p in parts}}
    for ds, d in parts["test"].items():  # paired change in absolute error on the test part, 95 % bootstrap
        y = d["age"]
        old = np.abs((head_ages(w0, b0, d["clean"]) + head_ages(w0, b0, d["mirror"])) / 2 - y)
        new = np.abs((head_ages(w, b, d["clean"]) + head_ages(w, b, d["mirror"])) / 2 - y)
        boot = np.random.default_rng(0).integers(0, len(y), (1000, len(y)))
        res["refit"]["test"][ds]["paired_change"] = [round(float((new - old).mean()), 3)] + [
            round(float(v), 3) for v in np.percentile((new - old)[boot].mean(1), [2.5, 97.5])]
    a.out.mkdir(parents=True, exist_ok=True)
    np.savez(a.out / "head.npz", weight=w, bias=b)
    atomic_write_json(a.out / "scores.json", res)
    print(json.dumps({k: res[k]["val"] for k in ("shipped", "refit")}), flush=True)


if __name__ == "__main__":
    from ..utils import run_tool

    run_tool(main)
