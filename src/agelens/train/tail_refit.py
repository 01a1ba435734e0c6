"""Re-train a model's last blocks and age head (its tail) on its frozen front, from cached front maps.

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
OUT/scores.json (val and test per dataset, and the shipped model's on the same maps). `apply` writes the shipped
model with the new tail; its card drops what was measured on the old outputs (test metrics, interval z, TTA
cut), measured again before it ships.

`--model teacher` (issue 19: photos, not occluders): the teacher reads clean faces, so no occluder is drawn. Train
parts: the face as it is, mirrored, and one `photo_view` (the face at a small photo's working resolution, degraded
there with grain, noise, colour and JPEG as a scanned or re-saved photo is, brought back up). Val and test parts:
plain, mirrored, `PHOTO + "scan_grain"` (`head_refit.at_photo_scale`, seeded as `head_refit features --views`)
and the stability benchmark's JPEG q95 -> q75 pair at a small face's resolution (`head_refit.jpeg_pair`); `fit`
scores clean flip-TTA MAE, grain MAE (signed per age bin) and the pair's age change, and keeps the epoch with the
lowest mean of clean and grain MAE. `fit --consistency C` batches by face and adds C x |age(view) - age(plain)|
(plain held fixed) for every other view of the face. The teacher's guard heads read the tail's maps: after
`apply`, `train.trunk_guards` and `train.guard_bands` fit them again (the card drops their entries too).

    python -m agelens.train.tail_refit features --model teacher --out runs/tail_teacher      # 13 min on 2 cores
    python -m agelens.train.tail_refit fit --model teacher --features runs/tail_teacher --consistency 1 \
        --age-power 0 --out runs/tail_teacher/fit_c1_a0                                   # 16 min

Measured 2026-12-05 and not shipped (`docs/results.md`, "The teacher's tail on photo views"): grain reads a little
better, clean and grey children a little worse end to end.

`fit --kd W` (the student): the paper's distillation at the output, plus W x KL(teacher || tail) towards the shipped
teacher's distribution of the same face clean (plain, or mirrored for the mirrored view), from `targets` (4 min):

    python -m agelens.train.tail_refit targets --out runs/tail
    python -m agelens.train.tail_refit fit --features runs/tail --epochs 6 --kd 1 --out runs/tail/fit_kd1    # 18 min

Measured 2026-12-05 from the shipped tail and not shipped (`docs/results.md`, "Distilling the teacher's answers
into the student's tail"): no change on the cached test faces.

`features --tail-from 0` cuts before the whole last stage (maps 112 x 10 x 10; the maps record their cut, `fit` and
`apply` follow it). Measured 2026-12-05 on the student and not shipped (`docs/results.md`, "The student's whole last
stage re-trained"): validation UTKFace worse, All-Age-Faces better, neither cached test change significant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..data.views import centre_views
from ..utils import atomic_write_json
from .head_refit import (
    DATASETS,
    PHOTO,
    RESAVE_SCALE,
    STALE,
    _embedder,
    degraded_views,
    group_weights,
    groups_of,
    jpeg_pair,
    occluded,
)

TAIL_FROM = 3  # the tail starts at block TAIL_FROM of the first block group of the backbone's last stage
VIEWS_TRAIN = ("plain", "mirror", "degraded")
TEACHER_VIEWS_TRAIN = ("plain", "mirror", "photo")
TEACHER_VIEWS_HELD = ("plain", "mirror", PHOTO + "scan_grain", "jpeg_q95", "jpeg_q75")
GUARD_ENTRIES = ("guard_thresholds", "guard_cascade", "guard_metrics", "guard_recipe", "age_prior",
                 "age_prior_recipe")  # what reads the teacher's tail's maps or outputs, fitted again after apply
# the pixel-level and colour degradations of a scanned or re-saved photo (`realistic` probabilities they replace)
PHOTO_P = {"grayscale": 0.2, "sepia": 0.1, "lowres": 0.05, "blur": 0.15, "noise": 0.3, "scan_grain": 0.3,
           "jpeg": 0.3}


def photo_view(img, rng):
    """A cached crop as a small photo gives it: shrunk to a working resolution drawn from [RESAVE_SCALE[0], 1] of
    the crop, degraded there (`data.augment.realistic` with PHOTO_P), saved as JPEG q 60-95, brought back up."""
    import cv2

    from ..data.augment import _jpeg_q, _working_resolution, realistic

    h, w = img.shape[:2]
    small = _working_resolution(img, rng, RESAVE_SCALE[0])
    small = _jpeg_q(realistic(small, rng, 1.0, p=PHOTO_P), int(rng.integers(60, 96)))
    return np.ascontiguousarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))


def front_and_tail(model, tail_from: int = TAIL_FROM):
    """(front, tail) of an AgeModel cut before block `tail_from` of the last stage's first block group: front(x) =
    the maps before the tail (normalised NCHW input), tail(maps) = the head's output dict; tail(front(x)) is the
    model's forward (eval mode)."""
    b = model.backbone
    last = b.stages[-1]

    def adapt(k: int, x):
        return x if b.adapters is None else b.adapters[k](x, None)

    def front(x):
        x = b.stem(x)
        for k, s in enumerate(b.stages[:-1]):
            x = adapt(k, s(x))
        for blk in last[0][:tail_from]:
            x = blk(x)
        return x

    def tail(x):
        for blk in last[0][tail_from:]:
            x = blk(x)
        for group in last[1:]:
            x = group(x)
        x = b.final(adapt(len(b.stages) - 1, x))
        return model.head(model.dropout(x.mean((2, 3))))

    return front, tail


def tail_modules(model, tail_from: int = TAIL_FROM):
    """The modules `tail` trains (all of its parameters), as one nn.ModuleList: its state dict (keys "INDEX.NAME")
    is what `fit` keeps and `apply` loads."""
    from torch import nn

    b = model.backbone
    last = b.stages[-1]
    mods = [*last[0][tail_from:], *last[1:], b.final, model.head]
    if b.adapters is not None:
        mods.append(b.adapters[len(b.stages) - 1])
    return nn.ModuleList(mods)


def extract(part_dirs: dict[str, Path], out: Path, seed: int = 0, batch: int = 64, model: str = "student",
            tail_from: int = TAIL_FROM) -> None:
    """Front maps (fp16, (N, V, C, H, W)) of every cached face of each part, the network cut at `tail_from`; one
    .npz per part with age, gender, race and the cut. Student: one occluder draw per view; teacher: the views of
    TEACHER_VIEWS_TRAIN / TEACHER_VIEWS_HELD."""
    from ..data.augment import realistic
    from ..data.cache import FaceCache
    from ..utils import weights_dir

    maps, t = _embedder(batch, model, read=lambda m, x: front_and_tail(m, tail_from)[0](x))
    if model == "student":  # the student's own training mix of occluders
        mix = json.loads((weights_dir() / "student.json").read_text())["config"]["occlusion"]["mix"]
    out.mkdir(parents=True, exist_ok=True)

    def mirrored(v):
        return np.ascontiguousarray(v[:, :, ::-1])

    for key, d in part_dirs.items():
        t0 = time.time()
        c = FaceCache(d, verify=False)
        imgs = np.asarray(c.images)
        views = []
        rng = np.random.default_rng(seed)
        if model == "teacher":  # TEACHER_VIEWS_TRAIN / TEACHER_VIEWS_HELD
            v = centre_views(imgs, t.crop_size, t.input_size)
            views += [maps(v), maps(mirrored(v))]
            if key.endswith("_train"):
                photo = np.stack([photo_view(im, rng) for im in imgs])
                views.append(maps(centre_views(photo, t.crop_size, t.input_size)))
            else:
                views.append(maps(centre_views(degraded_views(imgs, TEACHER_VIEWS_HELD[2], seed), t.crop_size,
                                               t.input_size)))
                pairs = [jpeg_pair(im, rng) for im in imgs]
                views += [maps(centre_views(np.stack([p[j] for p in pairs]), t.crop_size, t.input_size))
                          for j in (0, 1)]
        elif key.endswith("_train"):
            for k, how in enumerate(VIEWS_TRAIN):
                occ = occluded(imgs, c.landmarks, mix, seed * 1000 + k + 1)
                if how == "degraded":
                    occ = np.stack([realistic(im, rng, 1.0, 0.5) for im in occ])
                v = centre_views(occ, t.crop_size, t.input_size)
                views.append(maps(mirrored(v) if how == "mirror" else v))
        else:
            v = centre_views(occluded(imgs, c.landmarks, mix, seed), t.crop_size, t.input_size)
            views += [maps(v), maps(mirrored(v))]
        rec = c.records
        tmp = out / f"{key}.partial.npz"  # renamed when whole: an interrupted run leaves no half-written part
        np.savez(tmp, maps=np.stack(views, 1), age=np.array([r.age for r in rec], np.float32),
                 gender=np.array([r.gender or "" for r in rec]), race=np.array([r.race or "" for r in rec]),
                 model=np.array(model), tail_from=np.array(tail_from))
        tmp.replace(out / f"{key}.npz")
        print(f"{key}: {len(rec)} faces x {len(views)} views, {time.time() - t0:.0f} s", flush=True)


def teacher_targets(part_dirs: dict[str, Path], out: Path, batch: int = 64) -> None:
    """The shipped teacher's age distributions (fp16, (N, 2, ages): the clean face plain and mirrored) of every
    cached face of each part, in the order of its front maps: `fit --kd`'s soft targets (OUT/KEY.teacher.npz)."""
    from ..data.cache import FaceCache

    probs, t = _embedder(batch, "teacher", read=lambda m, x: m(x)["logits"].float().softmax(-1))
    out.mkdir(parents=True, exist_ok=True)
    for key, d in part_dirs.items():
        t0 = time.time()
        v = centre_views(np.asarray(FaceCache(d, verify=False).images), t.crop_size, t.input_size)
        p = np.stack([probs(v), probs(np.ascontiguousarray(v[:, :, ::-1]))], 1)
        tmp = out / f"{key}.teacher.partial.npz"  # renamed when whole
        np.savez(tmp, probs=p)
        tmp.replace(out / f"{key}.teacher.npz")
        print(f"{key}: teacher targets of {len(p)} faces, {time.time() - t0:.0f} s", flush=True)


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
    """Per dataset: flip-TTA MAE (views 0 and 1: plain and mirrored) and per-bin signed error; with the teacher's
    held-out views (TEACHER_VIEWS_HELD) also the grain view's MAE and per-bin signed error and the JPEG pair's age
    change (mean, p99, share over 5 years)."""
    from ..evaluate.metrics import AGE_BINS, age_bin

    def signed(e, bins):
        return {b: round(float(e[bins == b].mean()), 2) for b, _, _ in AGE_BINS if (bins == b).any()}

    res = {}
    for ds, d in parts.items():
        y = d["age"]
        p = (_ages(tail, head, d["maps"][:, 0]) + _ages(tail, head, d["maps"][:, 1])) / 2
        bins = np.array([age_bin(a) for a in y])
        r = {"n": len(y), "mae": round(float(np.abs(p - y).mean()), 3), "bin_signed": signed(p - y, bins),
             "abs_err": np.abs(p - y)}
        if d["maps"].shape[1] == len(TEACHER_VIEWS_HELD):
            g = _ages(tail, head, d["maps"][:, 2])
            change = np.abs(_ages(tail, head, d["maps"][:, 3]) - _ages(tail, head, d["maps"][:, 4]))
            r.update(grain_mae=round(float(np.abs(g - y).mean()), 3), grain_bin_signed=signed(g - y, bins),
                     resave_change=[round(float(change.mean()), 3), round(float(np.percentile(change, 99)), 2),
                                    round(float((change > 5).mean()), 4)])
        res[ds] = r
    return res


def score(r: dict[str, dict]) -> float:
    """The selection score of `evaluate`'s result: mean over the datasets of the MAE, or of the mean of clean and
    grain MAE where the grain view was scored (the teacher)."""
    return float(np.mean([(v["mae"] + v["grain_mae"]) / 2 if "grain_mae" in v else v["mae"] for v in r.values()]))


def tail_optimiser(model, steps: int, lr: float = 1e-4, head_lr: float = 3e-4, weight_decay: float = 1e-4,
                   tail_from: int = TAIL_FROM):
    """(tail modules, AdamW, cosine schedule over `steps`) for training the model's tail from `tail_from` on: the
    head at head_lr, the tail's other parameters at lr."""
    import torch

    mods = tail_modules(model, tail_from)
    head_params = {id(p) for p in model.head.parameters()}
    body = [p for p in mods.parameters() if id(p) not in head_params]
    opt = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": list(model.head.parameters()), "lr": head_lr}],
                            weight_decay=weight_decay)
    return mods, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)


def fit(features: Path, out: Path, epochs: int = 6, lr: float = 1e-4, head_lr: float = 3e-4,
        weight_decay: float = 1e-4, batch: int = 128, age_power: float = 0.0, seed: int = 0,
        model_name: str = "student", consistency: float = 0.0, label_views: int | None = None,
        kd: float = 0.0) -> dict:
    """Train the model's tail on the train parts' maps from its shipped weights; keep the best validation epoch.
    consistency > 0: batches of batch // V faces with all V views, plus consistency x |age(view) - age(view 0)|
    (view 0 held fixed) over the other views; label_views = K (with consistency): only the first K views of a face
    are fitted to its label, the others learn the plain view's answer alone. kd > 0 (the student, single views):
    plus kd x KL(teacher || tail) towards the shipped teacher's distribution of the same face clean (`teacher_targets`;
    the mirrored one for the mirrored view), the paper's teacher-to-student distillation at the output."""
    import torch

    from ..inference.backends.torch import TorchModel

    if label_views is not None and consistency <= 0:
        raise SystemExit("--label-views needs --consistency > 0 (the other views learn the plain view's answer)")
    if kd > 0 and (model_name != "student" or consistency > 0):
        raise SystemExit("--kd distils the teacher into the student's single views: --model student, no --consistency")
    torch.manual_seed(seed)
    model = TorchModel.load(model_name, tta_flip=False).model.float().eval()
    train = {ds: dict(np.load(features / f"{ds}_train.npz")) for ds in DATASETS}
    val = {ds: dict(np.load(features / f"{ds}_val.npz")) for ds in DATASETS}
    test = {ds: dict(np.load(features / f"{ds}_test.npz")) for ds in DATASETS}
    cuts = {int(d.get("tail_from", TAIL_FROM)) for part in (train, val, test) for d in part.values()}
    if len(cuts) != 1:
        raise SystemExit(f"{features}: the parts' maps come from different cuts ({sorted(cuts)})")
    tail_from = cuts.pop()
    _, tail = front_and_tail(model, tail_from)
    head = model.head
    made_by = {str(d.get("model", "student")) for d in train.values()}
    if made_by != {model_name}:
        raise SystemExit(f"{features} holds the front maps of {', '.join(sorted(made_by))}, not {model_name}: "
                         f"run `features --model {model_name}`")
    views = {d["maps"].shape[1] for d in train.values()}
    if len(views) != 1:
        raise SystemExit(f"{features}: the train parts differ in their number of views ({sorted(views)})")
    nv = views.pop()
    if label_views is not None and not 1 <= label_views <= nv:
        raise SystemExit(f"--label-views {label_views}: the train parts hold {nv} views a face")
    maps = np.concatenate([d["maps"] for d in train.values()])  # (N faces, V, C, H, W)
    soft = None
    if kd > 0:
        missing = [ds for ds in DATASETS if not (features / f"{ds}_train.teacher.npz").exists()]
        if missing:
            raise SystemExit(f"{features}: no teacher targets for {', '.join(missing)}: run `targets` first")
        soft = np.concatenate([np.load(features / f"{ds}_train.teacher.npz")["probs"] for ds in DATASETS])
        if len(soft) != len(maps):
            raise SystemExit(f"{features}: {len(soft)} teacher targets for {len(maps)} faces")
        which = np.array([1 if v == "mirror" else 0 for v in VIEWS_TRAIN[:nv]])  # the teacher view per view
    ages = np.concatenate([d["age"] for d in train.values()])
    groups = np.concatenate([groups_of(d["race"], d["gender"]) for d in train.values()])
    strata = np.concatenate([np.full(len(d["age"]), ds) for ds, d in train.items()])
    weights = torch.from_numpy(group_weights(ages, groups, age_power, 0.0, strata).astype(np.float32))
    y = torch.from_numpy(ages.astype(np.float32))
    faces = batch // nv if consistency > 0 else batch  # per step: faces with all their views, or single views
    rows = len(y) if consistency > 0 else len(y) * nv
    per_epoch = rows // faces
    mods, opt, sched = tail_optimiser(model, epochs * per_epoch, lr, head_lr, weight_decay, tail_from)
    gen = torch.Generator().manual_seed(seed)

    def state():
        return {k: v.detach().clone() for k, v in mods.state_dict().items()}

    def step(idx):
        if consistency <= 0:  # rows are (face, view) pairs
            f, v = idx // nv, idx % nv
            pred = tail(torch.from_numpy(maps[f, v].astype(np.float32)))
            loss = head.loss(pred, y[f], weights[f])
            if soft is None:
                return loss
            target = torch.from_numpy(soft[f, which[v]].astype(np.float32))
            kl = torch.nn.functional.kl_div(pred["logits"].float().log_softmax(-1), target, reduction="none").sum(1)
            return loss + kd * head.reduce(kl, weights[f])
        f = np.sort(idx)
        x = torch.from_numpy(maps[f].astype(np.float32))  # (B, V, C, H, W)
        pred = tail(x.flatten(0, 1))
        k = nv if label_views is None else label_views
        lab = torch.from_numpy(np.tile(np.arange(nv) < k, len(f)))  # the (face, view) rows fitted to the label
        yy, ww = y[f].repeat_interleave(nv), weights[f].repeat_interleave(nv) * lab * (nv / k)
        age = head.decode(pred)[0].view(len(f), nv)
        cons = (age[:, 1:] - age[:, :1].detach()).abs().mean(1)
        return head.loss(pred, yy, ww) + consistency * (cons * weights[f]).mean()

    shipped_val, old_test = evaluate(tail, head, val), evaluate(tail, head, test)  # the shipped tail, untrained
    best = (score(shipped_val), -1, state())

    def brief(r):
        return {ds: {k: v[k] for k in ("mae", "grain_mae", "resave_change") if k in v} for ds, v in r.items()}

    log = [{"epoch": -1, "val": brief(shipped_val)}]
    print(json.dumps(log[-1]), flush=True)
    t0 = time.time()
    for ep in range(epochs):
        model.dropout.train()
        perm = torch.randperm(rows, generator=gen).numpy()
        for i in range(per_epoch):
            loss = step(perm[i * faces:(i + 1) * faces])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.dropout.eval()
        r = evaluate(tail, head, val)
        log.append({"epoch": ep, "val": brief(r), "score": round(score(r), 3), "seconds": round(time.time() - t0)})
        print(json.dumps(log[-1]), flush=True)
        if score(r) < best[0]:
            best = (score(r), ep, state())
    keep = best[2]
    mods.load_state_dict(keep)
    new_val, new_test = evaluate(tail, head, val), evaluate(tail, head, test)
    res = {"recipe": {"cmd": "fit", "model": model_name, "features": str(features), "epochs": epochs, "lr": lr,
                      "head_lr": head_lr, "weight_decay": weight_decay, "batch": batch, "age_power": age_power,
                      "consistency": consistency, "label_views": label_views, "kd": kd, "seed": seed,
                      "tail_from": tail_from, "out": str(out)},
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
    """The shipped model (the fit's recipe says which) with the tail from fit_dir/tail.pt, exported to out (fp16 +
    card with the recipe). The teacher's card also drops its guard and age-prior entries (GUARD_ENTRIES)."""
    import torch

    from ..models.weights import export_weights, load_weights, weights_dir

    recipe = json.loads((fit_dir / "scores.json").read_text())["recipe"]
    name = recipe.get("model", "student")
    model, cfg, card = load_weights(weights_dir() / f"{name}.safetensors")
    tail = torch.load(fit_dir / "tail.pt", map_location="cpu", weights_only=True)  # tensors only: no code runs
    tail_modules(model, recipe.get("tail_from", TAIL_FROM)).load_state_dict(tail)
    drop = set(STALE) | {"name"} | (set(GUARD_ENTRIES) if name == "teacher" else set())
    card = {k: v for k, v in card.items() if k not in drop}
    card["tail_refit"] = {"recipe": recipe, "front_from": card.get("source_checkpoint")}
    return export_weights(model, cfg, out, name, card)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features", help="extract the model's front maps of the cached faces (student: occluded)")
    f.add_argument("--model", choices=("student", "teacher"), default="student")
    f.add_argument("--cache", type=Path, default=Path("cache"))
    f.add_argument("--parts", nargs="+", default=["val", "test", "train"])
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", type=Path, default=Path("runs/tail"))
    f.add_argument("--tail-from", type=int, default=TAIL_FROM,
                   help="cut before this block of the last stage's first block group (0: the whole last stage)")
    g = sub.add_parser("fit", help="re-train the tail; writes OUT/tail.pt and OUT/scores.json")
    g.add_argument("--features", type=Path, default=Path("runs/tail"))
    g.add_argument("--epochs", type=int, default=6)
    g.add_argument("--lr", type=float, default=1e-4, help="the tail's blocks")
    g.add_argument("--head-lr", type=float, default=3e-4)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--age-power", type=float, default=0.0, help="age-bin weight count^-A")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--model", choices=("student", "teacher"), default="student")
    g.add_argument("--consistency", type=float, default=0.0,
                   help="weight of |age(view) - age(plain)| over a face's other views (batches by face)")
    g.add_argument("--label-views", type=int, default=None,
                   help="with --consistency: only a face's first K views are fitted to the label (teacher: 2, plain "
                        "and mirror; the photo view learns the plain view's answer)")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--kd", type=float, default=0.0,
                   help="student: weight of KL(teacher on the clean face || tail) (needs `targets`)")
    k = sub.add_parser("targets", help="the shipped teacher's age distributions of the clean cached train faces")
    k.add_argument("--cache", type=Path, default=Path("cache"))
    k.add_argument("--parts", nargs="+", default=["train"])
    k.add_argument("--out", type=Path, default=Path("runs/tail"))
    h = sub.add_parser("apply", help="write the shipped model with a fitted tail")
    h.add_argument("--fit", type=Path, required=True)
    h.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "features":
        extract({f"{ds}_{p}": a.cache / ds / p for p in a.parts for ds in DATASETS}, a.out, a.seed,
                model=a.model, tail_from=a.tail_from)
    elif a.cmd == "fit":
        res = fit(a.features, a.out, a.epochs, a.lr, a.head_lr, a.weight_decay, age_power=a.age_power, seed=a.seed,
                  model_name=a.model, consistency=a.consistency, label_views=a.label_views, kd=a.kd)
        print(json.dumps({k: res[k]["test"] for k in ("shipped", "refit")}), flush=True)
    elif a.cmd == "targets":
        teacher_targets({f"{ds}_{p}": a.cache / ds / p for p in a.parts for ds in DATASETS}, a.out)
    else:
        apply(a.fit, a.out)


if __name__ == "__main__":
    from ..utils import run_tool

    run_tool(main)
