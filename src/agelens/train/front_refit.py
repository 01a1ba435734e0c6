"""Re-train a model's front (stem and first stages) so that a small face's JPEG blocks do not move its age.

Issue 19's stability benchmark re-saves a photo (JPEG q95 -> q75) and All-Age-Faces answers move about a year. The
cause is the teacher's reading of a small face's pixels: on scikit-image's astronaut, one alignment warped from the
image saved as JPEG q100 reads 27.7, from the image saved at q75 34.0, while q75 applied to the aligned crop itself
moves the age by 0.5 (`benchmarks/jpeg_source.py`). Head and tail re-fits cannot buy this (the directions that re-saving moves
carry the age there), so this re-trains the other end, where block edges and ringing are first read: the stem and
the first `FRONT_STAGES` stages (to 1/8 of the input).

Self-distillation, no labels: the shipped model stays frozen as the reference. Every cached training face gives
- `r`: the face at a small working resolution (`RESAVE_SCALE_TRAIN` of the crop), brought back up, no JPEG;
- `a`, `b`: the same small face saved as JPEG at a good quality, then that file saved again worse, both brought back;
- `x`: the face as it is (half of them with an occluder of the student's mix drawn on it), for identity.
The trainable front must give `a` and `b` the reference's age of `r` (L1), and `x` the reference's age, last feature
map (what the guard heads read, their halves pooled) and embedding (identity terms, so every guard and threshold
fitted on the trunk stays valid). Everything after the front stays frozen, batch norm in eval mode.

    python -m agelens.train.front_refit fit --out runs/front               # background: logs, resumable
    python -m agelens.train.front_refit score --fit runs/front --n 600      # cached val faces: MAE and the re-save change
    python -m agelens.train.front_refit apply --fit runs/front --out DIR    # DIR/teacher.safetensors + teacher.json

Measured 2026-12-05 and not shipped (`docs/results.md`, "A re-saved photo's age change"): at lr 2e-4 the loss stayed
flat for 220 steps and the re-save change on cached validation faces did not move (All-Age-Faces 1.257 -> 1.300);
`--stages 3 --pair 1` neither (1.257 -> 1.255).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..utils import atomic_write_json

FRONT_STAGES = 2  # the stem and stages[:FRONT_STAGES] train (EfficientNet-Lite0: to 40 channels at 1/8, 55 k weights)
RESAVE_SCALE_TRAIN = (0.25, 0.9)  # the face's working resolution in training, as a share of the crop
Q_FIRST, Q_SECOND = (80, 99), (45, 90)  # the first file's JPEG quality, then the re-save's
DATASETS = ("utkface", "aaf")


def front_modules(model, stages: int = FRONT_STAGES):
    """The modules the front re-fit trains (the stem and the first `stages` stages) as one nn.ModuleList."""
    from torch import nn

    b = model.backbone
    if b.adapters is not None:
        raise ValueError("front_refit is for models without feature adapters (the teacher)")
    return nn.ModuleList([b.stem, *b.stages[:stages]])


def forward(model, x):
    """(age, guard features, embedding) of a normalised NCHW batch, gradients kept."""
    from ..models.model import guard_features

    stages, final = model.backbone(x)
    emb = final.mean((2, 3))
    age, _ = model.head.decode(model.head(model.dropout(emb)))
    return age.float(), guard_features(stages, final), emb


def views(imgs: np.ndarray, rng: np.random.Generator, mix: dict | None = None, landmarks: np.ndarray | None = None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, r, a, b) for a stack of cached crops (see the module docstring)."""
    import cv2

    from ..data.augment import shrink
    from .head_refit import jpeg_pair, occluded

    h, w = imgs.shape[1:3]
    xs, rs, as_, bs = [], [], [], []
    occ = None
    if mix is not None and landmarks is not None:
        occ = occluded(imgs, landmarks, mix, int(rng.integers(1 << 30)))
    for i, im in enumerate(imgs):
        im = np.ascontiguousarray(im[:, ::-1] if rng.random() < 0.5 else im)
        scale = rng.uniform(*RESAVE_SCALE_TRAIN)
        q = (int(rng.integers(*Q_FIRST)), int(rng.integers(*Q_SECOND)))
        a, b = jpeg_pair(im, rng, q, scale)  # the stability benchmark's re-save, at this draw's qualities
        x = occ[i] if occ is not None and rng.random() < 0.5 else imgs[i]
        xs.append(np.ascontiguousarray(x))
        rs.append(cv2.resize(shrink(im, scale), (w, h), interpolation=cv2.INTER_LINEAR))
        as_.append(a)
        bs.append(b)
    return tuple(np.stack(v) for v in (xs, rs, as_, bs))


def _load(name: str = "teacher"):
    from ..inference.backends.torch import TorchModel

    t = TorchModel.load(name, tta_flip=False)
    return t, t.model.float().eval()


def _to_input(t, m, imgs: np.ndarray):
    import torch

    from ..data.views import centre_views
    from ..models.inputs import to_input

    v = centre_views(imgs, t.crop_size, t.input_size)
    return to_input(torch.from_numpy(np.ascontiguousarray(v)), *m.mean_std, "cpu", False)


def fit(cache: Path, out: Path, epochs: float = 1.0, batch: int = 32, lr: float = 1e-4, seed: int = 0,
        w_feat: float = 1.0, save_every: int = 50, stages: int = FRONT_STAGES, pair: float = 0.0) -> None:
    """Train the stem and the first `stages` stages (see the module docstring); pair > 0 adds pair x |age(a) -
    age(b)| (the two files of a face read alike). OUT/front.pt every save_every steps (atomic, resumable), a log line
    per 10 steps."""
    import copy

    import torch

    from ..data.cache import FaceCache
    from ..utils import weights_dir

    torch.manual_seed(seed)
    t, ref = _load()
    for p in ref.parameters():
        p.requires_grad_(False)
    model = copy.deepcopy(ref)
    front = front_modules(model, stages)
    for p in front.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(front.parameters(), lr=lr)
    mix = json.loads((weights_dir() / "student.json").read_text())["config"]["occlusion"]["mix"]
    caches = [FaceCache(cache / ds / "train", verify=False) for ds in DATASETS]
    index = [(k, i) for k, c in enumerate(caches) for i in range(len(c.records))]
    steps = int(epochs * len(index) / batch)
    out.mkdir(parents=True, exist_ok=True)
    ck = out / "front.pt"
    step = 0
    if ck.is_file():
        state = front_state(out)
        if state["front_stages"] != stages:
            raise SystemExit(f"{ck} trains {state['front_stages']} stages, not {stages}: another --out")
        front.load_state_dict(state["front"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    order = np.random.default_rng(seed).permutation(len(index))
    t0, log = time.time(), []
    while step < steps:
        rng = np.random.default_rng((seed, step))
        sel = [index[j] for j in order[(np.arange(batch) + step * batch) % len(index)]]
        imgs = np.stack([np.asarray(caches[k].images[i]) for k, i in sel])
        lms = np.stack([np.asarray(caches[k].landmarks[i]) for k, i in sel])
        x, r, a, b = (_to_input(t, model, v) for v in views(imgs, rng, mix, lms))
        with torch.no_grad():
            age_x, g_x, e_x = forward(ref, x)
            age_r, _, _ = forward(ref, r)
        fx = forward(model, x)
        fa, fb = forward(model, a)[0], forward(model, b)[0]
        l_age = (fa - age_r).abs().mean() + (fb - age_r).abs().mean()
        l_id = (fx[0] - age_x).abs().mean()
        l_feat = ((fx[1] - g_x) ** 2).mean() / g_x.var() + ((fx[2] - e_x) ** 2).mean() / e_x.var()
        loss = l_age + l_id + w_feat * l_feat + pair * (fa - fb).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        log.append([float(v.detach()) for v in (l_age / 2, l_id, l_feat)])
        if step % 10 == 0:
            m = np.mean(log[-10:], 0)
            print(f"step {step}/{steps} resave |d age| {m[0]:.3f} identity |d age| {m[1]:.3f} feat {m[2]:.4f} "
                  f"{(time.time() - t0) / len(log):.2f} s/step", flush=True)
        if step % save_every == 0 or step == steps:
            tmp = ck.with_suffix(".tmp")
            torch.save({"front": front.state_dict(), "opt": opt.state_dict(), "step": step,
                        "front_stages": stages, "pair": pair, "lr": lr}, tmp)
            tmp.replace(ck)


def front_state(fit_dir: Path) -> dict:
    """FIT/front.pt: the front's weights, how many stages it spans (`front_stages`) and the step it reached."""
    import torch

    path = Path(fit_dir) / "front.pt"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `python -m agelens.train.front_refit fit --out {fit_dir}` first")
    state = torch.load(path, weights_only=True)  # tensors and plain data: a .pt naming objects would run code
    if not isinstance(state, dict) or not isinstance(state.get("front_stages"), int) or "front" not in state:
        raise SystemExit(f"{path} is not a front re-fit (no front weights or stage count)")
    return state


def _with_front(fit_dir: Path | None):
    t, m = _load()
    if fit_dir is not None:
        state = front_state(fit_dir)
        front_modules(m, state["front_stages"]).load_state_dict(state["front"])
    return t, m


def score(cache: Path, fit_dir: Path, n: int = 600, seed: int = 0, batch: int = 64) -> dict:
    """Cached validation faces, shipped front against the re-fitted one: single-view MAE clean, and the stability
    pair (`head_refit.jpeg_pair`: the face at 30-60 % of the crop saved q95, re-saved q75): MAE of each file and the
    mean and p99 age change between them; paired bootstrap 95 % of the MAE differences."""
    import torch

    from ..data.cache import FaceCache
    from .head_refit import jpeg_pair

    models = {"shipped": _with_front(None), "refit": _with_front(fit_dir)}
    res = {}
    for ds in DATASETS:
        c = FaceCache(cache / ds / "val", verify=False)
        idx = np.sort(np.random.default_rng(seed).permutation(len(c.records))[:n])
        imgs = np.stack([np.asarray(c.images[i]) for i in idx])
        ages = np.array([c.records[i].age for i in idx], np.float32)
        rng = np.random.default_rng(seed + 1)
        pairs = [jpeg_pair(im, rng) for im in imgs]
        sets = {"clean": imgs, "q95": np.stack([p[0] for p in pairs]), "q75": np.stack([p[1] for p in pairs])}
        got = {}
        for name, (t, m) in models.items():
            out = {}
            for k, v in sets.items():
                pred = []
                for i in range(0, len(v), batch):
                    with torch.no_grad():
                        pred.append(forward(m, _to_input(t, m, v[i:i + batch]))[0].numpy())
                out[k] = np.concatenate(pred)
            got[name] = out
        row = {}
        for name, out in got.items():
            ch = np.abs(out["q75"] - out["q95"])
            row[name] = {"mae_clean": round(float(np.abs(out["clean"] - ages).mean()), 3),
                         "mae_q95": round(float(np.abs(out["q95"] - ages).mean()), 3),
                         "mae_q75": round(float(np.abs(out["q75"] - ages).mean()), 3),
                         "change": round(float(ch.mean()), 3), "change_p99": round(float(np.percentile(ch, 99)), 2)}
        b = np.random.default_rng(seed + 2).integers(0, len(ages), (1000, len(ages)))
        for k in ("clean", "q75"):
            d = np.abs(got["refit"][k] - ages) - np.abs(got["shipped"][k] - ages)
            row[f"paired_{k}"] = [round(float(d.mean()), 3), [round(float(q), 3) for q in
                                                              np.percentile(d[b].mean(1), [2.5, 97.5])]]
        res[ds] = row
        print(ds, json.dumps(row), flush=True)
    return res


def apply(fit_dir: Path, out: Path) -> Path:
    """The shipped teacher with the re-fitted front, exported to OUT (fp16 + card with the recipe); the card drops
    what was measured on the old weights' outputs (head_refit.STALE), measured again before it ships."""
    from ..models.weights import export_weights, load_weights, weights_dir
    from .head_refit import STALE

    state = front_state(fit_dir)
    model, cfg, card = load_weights(weights_dir() / "teacher.safetensors")
    front_modules(model, state["front_stages"]).load_state_dict(state["front"])
    card = {k: v for k, v in card.items() if k not in STALE and k != "name"}
    card["front_refit"] = {"fit": str(fit_dir), "front_stages": state["front_stages"], "pair": state.get("pair", 0.0),
                           "steps": state["step"],
                           "resave_scale": RESAVE_SCALE_TRAIN, "q_first": Q_FIRST, "q_second": Q_SECOND}
    return export_weights(model, cfg, out, "teacher", card)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m agelens.train.front_refit", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--cache", type=Path, default=Path("cache"))
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--epochs", type=float, default=1.0)
    f.add_argument("--batch", type=int, default=32)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--stages", type=int, default=FRONT_STAGES, help="train the stem and this many stages")
    f.add_argument("--pair", type=float, default=0.0, help="weight of |age(file 1) - age(file 2)|")
    s = sub.add_parser("score")
    s.add_argument("--cache", type=Path, default=Path("cache"))
    s.add_argument("--fit", type=Path, required=True)
    s.add_argument("--n", type=int, default=600)
    p = sub.add_parser("apply")
    p.add_argument("--fit", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "fit":
        fit(a.cache, a.out, a.epochs, a.batch, a.lr, a.seed, stages=a.stages, pair=a.pair)
    elif a.cmd == "score":
        atomic_write_json(a.fit / "scores.json", score(a.cache, a.fit, a.n))
    else:
        print(apply(a.fit, a.out))


if __name__ == "__main__":
    from ..utils import run_tool

    run_tool(main)
