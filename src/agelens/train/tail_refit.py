"""Re-train the student's last blocks and age head (its tail) on its frozen front, from cached front maps.

`head_refit --model student` re-fits the linear head alone on one occluder draw per face. This goes one step deeper
on the same idea at CPU cost: the network is cut before its last inverted-residual block of stage 4 (`TAIL_FROM`:
the input there is 192 x 5 x 5 at 160 px), the maps of the front are extracted once per view, and the tail (that
block, the 320-channel block, its feature adapter, the 1x1 head conv and the DLDL head: about 1.7 M of the network's
3.5 M weights) is trained again from its shipped weights, with the head's own loss. Batch-norm statistics stay as
shipped (eval mode); dropout before the head stays on. The student reads occluded faces only, so every view gets an
occluder of the student's training mix (`head_refit.occluded`), a fresh draw per view: train parts `VIEWS_TRAIN` views
of every face (one as it is, one mirrored, one with a draw of the training degradations), val and test parts one
draw, read plain and mirrored (flip-TTA, as `head_refit` scores).

    python -m agelens.train.tail_refit features --out runs/tail                   # 28 min on 2 cores
    python -m agelens.train.tail_refit fit --features runs/tail --epochs 6 --out runs/tail/fit   # 16 min
    python -m agelens.train.tail_refit apply --fit runs/tail/fit --out src/agelens/weights

`fit` keeps the epoch with the lowest validation MAE (mean over the datasets) and writes OUT/tail.pt and
OUT/scores.json (val and test per dataset, and the shipped student's on the same maps). `apply` writes the shipped
student with the new tail; its card drops what was measured on the old outputs (test metrics, interval z, TTA
cut), measured again before it ships.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..data.views import centre_views
from ..utils import atomic_write_json
from .head_refit import DATASETS, STALE, _embedder, group_weights, groups_of, occluded

TAIL_FROM = 3  # the tail starts at block TAIL_FROM of the first block group of the backbone's last stage
VIEWS_TRAIN = ("plain", "mirror", "degraded")


def front_and_tail(model):
    """(front, tail) of an AgeModel: front(x) = the maps before the tail (normalised NCHW input), tail(maps) = the
    head's output dict; tail(front(x)) is the model's forward (eval mode)."""
    b = model.backbone
    last = b.stages[-1]

    def adapt(k: int, x):
        return x if b.adapters is None else b.adapters[k](x, None)

    def front(x):
        x = b.stem(x)
        for k, s in enumerate(b.stages[:-1]):
            x = adapt(k, s(x))
        for blk in last[0][:TAIL_FROM]:
            x = blk(x)
        return x

    def tail(x):
        for blk in last[0][TAIL_FROM:]:
            x = blk(x)
        for group in last[1:]:
            x = group(x)
        x = b.final(adapt(len(b.stages) - 1, x))
        return model.head(model.dropout(x.mean((2, 3))))

    return front, tail


def tail_modules(model):
    """The modules `tail` trains (all of its parameters), as one nn.ModuleList: its state dict (keys "INDEX.NAME")
    is what `fit` keeps and `apply` loads."""
    from torch import nn

    b = model.backbone
    last = b.stages[-1]
    mods = [*last[0][TAIL_FROM:], *last[1:], b.final, model.head]
    if b.adapters is not None:
        mods.append(b.adapters[len(b.stages) - 1])
    return nn.ModuleList(mods)


def extract(part_dirs: dict[str, Path], out: Path, seed: int = 0, batch: int = 64) -> None:
    """Front maps (fp16, (N, V, C, H, W)) of every cached face of each part, one occluder draw per view; one .npz per
    part with age, gender and race."""
    from ..data.augment import realistic
    from ..data.cache import FaceCache
    from ..utils import weights_dir

    maps, t = _embedder(batch, "student", read=lambda m, x: front_and_tail(m)[0](x))
    mix = json.loads((weights_dir() / "student.json").read_text())["config"]["occlusion"]["mix"]
    out.mkdir(parents=True, exist_ok=True)
    for key, d in part_dirs.items():
        t0 = time.time()
        c = FaceCache(d, verify=False)
        imgs = np.asarray(c.images)
        views = []
        if key.endswith("_train"):
            rng = np.random.default_rng(seed)
            for k, how in enumerate(VIEWS_TRAIN):
                occ = occluded(imgs, c.landmarks, mix, seed * 1000 + k + 1)
                if how == "degraded":
                    occ = np.stack([realistic(im, rng, 1.0, 0.5) for im in occ])
                v = centre_views(occ, t.crop_size, t.input_size)
                views.append(maps(np.ascontiguousarray(v[:, :, ::-1]) if how == "mirror" else v))
        else:
            v = centre_views(occluded(imgs, c.landmarks, mix, seed), t.crop_size, t.input_size)
            views += [maps(v), maps(np.ascontiguousarray(v[:, :, ::-1]))]
        rec = c.records
        tmp = out / f"{key}.partial.npz"  # renamed when whole: an interrupted run leaves no half-written part
        np.savez(tmp, maps=np.stack(views, 1), age=np.array([r.age for r in rec], np.float32),
                 gender=np.array([r.gender or "" for r in rec]), race=np.array([r.race or "" for r in rec]))
        tmp.replace(out / f"{key}.npz")
        print(f"{key}: {len(rec)} faces x {len(views)} views, {time.time() - t0:.0f} s", flush=True)


def _ages(tail, head, maps: np.ndarray, batch: int = 256) -> np.ndarray:
    """The tail's expected ages of fp16 front maps (eval mode)."""
    import torch

    res = []
    with torch.no_grad():
        for i in range(0, len(maps), batch):
            out = tail(torch.from_numpy(maps[i:i + batch].astype(np.float32)))
            res.append(head.decode(out)[0].numpy())
    return np.concatenate(res)


def evaluate(tail, head, parts: dict[str, dict]) -> dict[str, dict]:
    """Flip-TTA MAE (plain and mirrored view of one occluder draw) and per-bin signed error per dataset."""
    from ..evaluate.metrics import AGE_BINS, age_bin

    res = {}
    for ds, d in parts.items():
        y = d["age"]
        p = (_ages(tail, head, d["maps"][:, 0]) + _ages(tail, head, d["maps"][:, 1])) / 2
        bins = np.array([age_bin(a) for a in y])
        res[ds] = {"n": len(y), "mae": round(float(np.abs(p - y).mean()), 3),
                   "bin_signed": {b: round(float((p - y)[bins == b].mean()), 2) for b, _, _ in AGE_BINS
                                  if (bins == b).any()},
                   "abs_err": np.abs(p - y)}
    return res


def fit(features: Path, out: Path, epochs: int = 6, lr: float = 1e-4, head_lr: float = 3e-4,
        weight_decay: float = 1e-4, batch: int = 128, age_power: float = 0.0, seed: int = 0) -> dict:
    """Train the student's tail on the train parts' maps from its shipped weights; keep the best validation epoch."""
    import torch

    from ..inference.backends.torch import TorchModel

    torch.manual_seed(seed)
    model = TorchModel.load("student", tta_flip=False).model.float().eval()
    _, tail = front_and_tail(model)
    head = model.head
    train = {ds: dict(np.load(features / f"{ds}_train.npz")) for ds in DATASETS}
    val = {ds: dict(np.load(features / f"{ds}_val.npz")) for ds in DATASETS}
    test = {ds: dict(np.load(features / f"{ds}_test.npz")) for ds in DATASETS}
    maps = np.concatenate([d["maps"].reshape(-1, *d["maps"].shape[2:]) for d in train.values()])
    nv = {ds: d["maps"].shape[1] for ds, d in train.items()}
    ages = np.concatenate([np.repeat(d["age"], nv[ds]) for ds, d in train.items()])
    groups = np.concatenate([np.repeat(groups_of(d["race"], d["gender"]), nv[ds]) for ds, d in train.items()])
    strata = np.concatenate([np.full(len(d["age"]) * nv[ds], ds) for ds, d in train.items()])
    weights = torch.from_numpy(group_weights(ages, groups, age_power, 0.0, strata).astype(np.float32))
    y = torch.from_numpy(ages.astype(np.float32))
    mods = tail_modules(model)
    head_params = {id(p) for p in head.parameters()}
    body = [p for p in mods.parameters() if id(p) not in head_params]
    opt = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": list(head.parameters()), "lr": head_lr}],
                            weight_decay=weight_decay)
    per_epoch = len(y) // batch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)

    def state():
        return {k: v.detach().clone() for k, v in mods.state_dict().items()}

    shipped_val, old_test = evaluate(tail, head, val), evaluate(tail, head, test)  # the shipped tail, untrained
    best = (np.mean([r["mae"] for r in shipped_val.values()]), -1, state())
    log = [{"epoch": -1, "val": {ds: r["mae"] for ds, r in shipped_val.items()}}]
    print(json.dumps(log[-1]), flush=True)
    t0 = time.time()
    for ep in range(epochs):
        model.dropout.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(per_epoch):
            idx = perm[i * batch:(i + 1) * batch]
            pred = tail(torch.from_numpy(maps[idx.numpy()].astype(np.float32)))
            loss = head.loss(pred, y[idx], weights[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.dropout.eval()
        r = evaluate(tail, head, val)
        score = float(np.mean([v["mae"] for v in r.values()]))
        log.append({"epoch": ep, "val": {ds: v["mae"] for ds, v in r.items()}, "seconds": round(time.time() - t0)})
        print(json.dumps(log[-1]), flush=True)
        if score < best[0]:
            best = (score, ep, state())
    keep = best[2]
    mods.load_state_dict(keep)
    new_val, new_test = evaluate(tail, head, val), evaluate(tail, head, test)
    res = {"recipe": {"cmd": "fit", "features": str(features), "epochs": epochs, "lr": lr, "head_lr": head_lr,
                      "weight_decay": weight_decay, "batch": batch, "age_power": age_power, "seed": seed,
                      "tail_from": TAIL_FROM, "out": str(out)},
           "best_epoch": best[1], "log": log,
           "shipped": {"val": _public(shipped_val), "test": _public(old_test)},
           "refit": {"val": _public(new_val), "test": _public(new_test)}}
    for ds in DATASETS:  # paired change in absolute error on the test part, 95 % bootstrap
        d = new_test[ds]["abs_err"] - old_test[ds]["abs_err"]
        boot = np.random.default_rng(0).integers(0, len(d), (1000, len(d)))
        res["refit"]["test"][ds]["paired_change"] = [round(float(d.mean()), 3)] + [
            round(float(v), 3) for v in np.percentile(d[boot].mean(1), [2.5, 97.5])]
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "tail.pt.tmp"
    torch.save(keep, tmp)
    tmp.replace(out / "tail.pt")
    atomic_write_json(out / "scores.json", res)
    return res


def _public(r: dict) -> dict:
    return {ds: {k: v for k, v in x.items() if k != "abs_err"} for ds, x in r.items()}


def apply(fit_dir: Path, out: Path) -> Path:
    """The shipped student with the tail from fit_dir/tail.pt, exported to out (fp16 + card with the recipe)."""
    import torch

    from ..models.weights import export_weights, load_weights, weights_dir

    model, cfg, card = load_weights(weights_dir() / "student.safetensors")
    tail_modules(model).load_state_dict(torch.load(fit_dir / "tail.pt"))
    recipe = json.loads((fit_dir / "scores.json").read_text())["recipe"]
    card = {k: v for k, v in card.items() if k not in STALE and k != "name"}
    card["tail_refit"] = {"recipe": recipe, "front_from": card.get("source_checkpoint")}
    return export_weights(model, cfg, out, "student", card)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features", help="extract the student's front maps of the cached faces, occluded")
    f.add_argument("--cache", type=Path, default=Path("cache"))
    f.add_argument("--parts", nargs="+", default=["val", "test", "train"])
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", type=Path, default=Path("runs/tail"))
    g = sub.add_parser("fit", help="re-train the tail; writes OUT/tail.pt and OUT/scores.json")
    g.add_argument("--features", type=Path, default=Path("runs/tail"))
    g.add_argument("--epochs", type=int, default=6)
    g.add_argument("--lr", type=float, default=1e-4, help="the tail's blocks")
    g.add_argument("--head-lr", type=float, default=3e-4)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--age-power", type=float, default=0.0, help="age-bin weight count^-A")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, required=True)
    h = sub.add_parser("apply", help="write the shipped student with a fitted tail")
    h.add_argument("--fit", type=Path, required=True)
    h.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "features":
        extract({f"{ds}_{p}": a.cache / ds / p for p in a.parts for ds in DATASETS}, a.out, a.seed)
    elif a.cmd == "fit":
        res = fit(a.features, a.out, a.epochs, a.lr, a.head_lr, a.weight_decay, age_power=a.age_power, seed=a.seed)
        print(json.dumps({k: res[k]["test"] for k in ("shipped", "refit")}), flush=True)
    else:
        apply(a.fit, a.out)


if __name__ == "__main__":
    main()
