"""An occlusion-robust copy of mediapipe's short-range face detector, distilled from the original on clean faces.

The detector is the first stage of the pipeline, and the one occluders defeat: a face behind a block, a hand or a
half cover gets no box, and in a wider photo no later step finds it (`docs/occlusion_report.md`, "An occluded face
in a wider photo"). This is the paper's teacher-student idea applied to detection: the original BlazeFace (frozen,
`tflite_torch.TFLiteNet` over mediapipe's own file) reads a clean photo, and a copy of it (same weights to start)
learns to give the same raw outputs (anchor scores and box/keypoint regressions) on the same photo with an
occluder drawn on the face. No box is labelled by hand: what the teacher finds on the clean photo is the target,
including "no face" where it finds none.

Training photos: UTKFace and All-Age-Faces train-part photos (FaceMesh landmarks from the clean photo), each either
as it is (a face crop) or pasted at a random size and place into a face-free background (a wider photo), then drawn
under an occluder of the synthesizer's families (`occlusion.synth.ALL_TYPES`; never the shapes of
`benchmarks/foreign_occluders.py`, which stay unseen) or left clean; some backgrounds alone. Both views of a pair get
the same JPEG quality and grey conversion, and are letterboxed to 128 px as `faces.blazeface` does.

    # the shipped copy (2026-12-07): two draws of 12,000 pairs (13 min, both at once on 2 cores), 1,500 steps (15 min)
    python -m agelens.train.face_detector data --seed 0 --pairs 12000 --n-utk 2500 --n-aaf 1500 --out cache/face_detector_s0
    python -m agelens.train.face_detector data --seed 1 --pairs 12000 --n-utk 2500 --n-aaf 1500 --out cache/face_detector_s1
    python -m agelens.train.face_detector fit --data cache/face_detector_s0 cache/face_detector_s1 --steps 1500 \
        --out runs/face_detector
    python -m agelens.train.face_detector ship runs/face_detector       # weights/face_detector_occluded.{onnx,json}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..data.augment import _jpeg_q
from ..data.splits import sample_names, split_part
from ..faces.blazeface import MODELS, letterbox, model_path
from ..faces.detect import FaceAnalyzer
from ..faces.prepare import largest_face
from ..imageio import load_image
from ..occlusion.synth import ALL_TYPES, OCCLUSION_TYPES, OcclusionError, occlude
from ..utils import atomic_write, atomic_write_json, weights_dir
from .guards import PROCEDURAL, library_images
from .tflite_torch import TFLiteNet

SIZE = MODELS[0].size  # 128: the short-range model's input
CLEAN_P = 0.2  # pairs left clean: the copy keeps the original's answers on clean photos
EMPTY_P = 0.08  # background alone
CROP_P = 0.35  # the photo as it is (a face crop), else pasted into a background
SHIPPED = "face_detector_occluded"


# ---- data --------------------------------------------------------------------------------------------------------


def collect_photos(paths: list[Path], analyzer: FaceAnalyzer) -> list[tuple[np.ndarray, np.ndarray]]:
    """(photo, FaceMesh landmarks of its largest face in pixels) for each readable file with a meshed face."""
    out = []
    for p in paths:
        try:
            rgb = load_image(p)
            faces = [f for f in analyzer.find_faces(rgb) if f.landmarks is not None]
        except Exception:  # noqa: S112 - an unreadable file is skipped, as prepare does
            continue
        if faces:
            out.append((rgb, largest_face(faces).landmarks[:, :2].astype(np.float32)))
    return out


def _background(sources: list[np.ndarray], h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    src = sources[rng.integers(len(sources))]
    sh, sw = src.shape[:2]
    s = rng.uniform(0.3, 1.0)
    ch, cw = max(8, int(sh * s)), max(8, int(sw * s))
    y, x = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    out = cv2.resize(src[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out[:, ::-1] if rng.random() < 0.5 else out)


def scene(photo: np.ndarray, lm: np.ndarray, backgrounds: list[np.ndarray], rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """The photo as it is (CROP_P) or pasted at a random size and place into a face-free background 1.3-4 times
    its height; the landmarks moved with it."""
    if rng.random() < CROP_P:
        return photo, lm
    ph, pw = photo.shape[:2]
    h = int(ph * rng.uniform(1.3, 4.0))
    w = int(h * rng.uniform(0.75, 1.5))
    k = min(1.0, 0.95 * w / pw)
    if k < 1.0:
        photo = cv2.resize(photo, (max(1, int(pw * k)), max(1, int(ph * k))), interpolation=cv2.INTER_AREA)
        lm, (ph, pw) = lm * k, photo.shape[:2]
    out = _background(backgrounds, h, w, rng)
    y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    out[y:y + ph, x:x + pw] = photo
    return out, lm + np.float32([x, y])


def _to_u8(img: np.ndarray) -> np.ndarray:
    """`blazeface.letterbox` as uint8 (its float input is u8 / 127.5 - 1 exactly; the border is 0)."""
    x, _ = letterbox(img, SIZE)
    return np.round((x + 1.0) * 127.5).astype(np.uint8)


def make_pair(photos: list, backgrounds: list[np.ndarray], rng: np.random.Generator,
              kinds: tuple[str, ...] = ALL_TYPES) -> tuple[np.ndarray, np.ndarray, str]:
    """(clean view, occluded view, kind), both letterboxed to 128 px uint8; kind "clean" or "empty" too."""
    if rng.random() < EMPTY_P:
        h = int(rng.integers(128, 640))
        img = _background(backgrounds, h, int(h * rng.uniform(0.6, 1.6)), rng)
        clean, occluded, kind = img, img, "empty"
    else:
        photo, lm = photos[rng.integers(len(photos))]
        if rng.random() < 0.5:
            lm = lm * np.float32([-1, 1]) + np.float32([photo.shape[1] - 1, 0])  # mirrored, landmarks with it
            photo = np.ascontiguousarray(photo[:, ::-1])
        clean, lm = scene(photo, lm, backgrounds, rng)
        occluded, kind = clean, "clean"
        if rng.random() >= CLEAN_P:
            # the paper's six types as often as all the newer families together
            kind = (OCCLUSION_TYPES[rng.integers(len(OCCLUSION_TYPES))] if rng.random() < 0.5
                    else kinds[rng.integers(len(kinds))])
            try:
                occluded = occlude(clean, lm, kind, rng).image
            except OcclusionError:
                occluded, kind = clean, "clean"
    q = int(rng.integers(60, 97))
    grey = rng.random() < 0.15
    views = []
    for img in (clean, occluded):
        img = _jpeg_q(img, q)
        if grey:
            img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, 2)
        views.append(_to_u8(img))
    return views[0], views[1], kind


def build_data(out: Path, shared: Path, n_utk: int, n_aaf: int, pairs: int, seed: int = 0) -> None:
    """Photos of both train parts, their pairs and the original detector's outputs on the clean views, into
    OUT/pairs.npz (atomically)."""
    t0 = time.perf_counter()
    an = FaceAnalyzer()
    utk = [shared / "utkface" / f for f in sample_names(split_part("splits/utkface_seed0.json", "train"), n_utk, seed)]
    aaf = [shared / "aaf" / f for f in sample_names(split_part("splits/aaf_seed0.json", "train"), n_aaf, seed)]
    photos = collect_photos(utk + aaf, an)
    an.close()
    print(f"photos with a face: {len(photos)} of {len(utk) + len(aaf)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rng = np.random.default_rng(seed)
    backgrounds = library_images() + [f(rng) for f in PROCEDURAL for _ in range(6)]
    clean, occ, kinds = [], [], []
    for i in range(pairs):
        c, o, k = make_pair(photos, backgrounds, rng)
        clean.append(c)
        occ.append(o)
        kinds.append(k)
        if (i + 1) % 2000 == 0:
            print(f"{i + 1} pairs ({time.perf_counter() - t0:.0f} s)", flush=True)
    clean_a, occ_a = np.stack(clean), np.stack(occ)
    teacher = TFLiteNet(model_path(0)).eval()
    reg, logit = [], []
    with torch.no_grad():
        for j in range(0, len(clean_a), 256):
            r, s = teacher(_input(clean_a[j:j + 256]))
            reg.append(r.half().numpy())
            logit.append(s[..., 0].numpy())
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"clean": clean_a, "occluded": occ_a, "kind": np.array(kinds), "reg": np.concatenate(reg),
              "logit": np.concatenate(logit).astype(np.float32)}
    atomic_write(out / "pairs.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))  # noqa: SIM115
    print(f"{pairs} pairs in {out / 'pairs.npz'} ({time.perf_counter() - t0:.0f} s)", flush=True)


def _input(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---- training ------------------------------------------------------------------------------------------------------


def distill_loss(reg: torch.Tensor, logit: torch.Tensor, t_reg: torch.Tensor, t_logit: torch.Tensor,
                 reg_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Soft-target BCE on every anchor's score (anchors the teacher is sure of weighted 10x more), plus the
    L1 of the box and keypoint regressions (in model pixels / SIZE) on anchors the teacher scores over 0.3,
    weighted by its probability."""
    p = torch.sigmoid(t_logit.clamp(-80, 80))
    w = 1.0 + 10.0 * p
    cls = (F.binary_cross_entropy_with_logits(logit.clamp(-80, 80), p, reduction="none") * w).sum() / w.sum()
    m = (p > 0.3).float() * p
    l1 = ((reg - t_reg).abs().mean(-1) / SIZE * m).sum() / m.sum().clamp(min=1.0)
    return cls + reg_weight * l1, {"cls": float(cls.detach()), "reg": float(l1.detach())}


def detection_scores(net: torch.nn.Module, u8: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, 896) anchor probabilities of `net` on letterboxed uint8 views."""
    out = []
    with torch.no_grad():
        for j in range(0, len(u8), batch):
            out.append(torch.sigmoid(net(_input(u8[j:j + batch]))[1][..., 0].clamp(-80, 80)).numpy())
    return np.concatenate(out)


def recall_report(student_p: np.ndarray, teacher_p: np.ndarray, kinds: np.ndarray, bar: float = 0.5) -> dict:
    """Per kind: among views whose clean twin the teacher finds a face on (best anchor ≥ bar), the share where
    the copy's best anchor reaches bar too ("found"); among views whose clean twin it finds none on, the share
    where the copy fires ("false_alarm")."""
    out = {}
    has = teacher_p.max(1) >= bar
    fires = student_p.max(1) >= bar
    for k in sorted(set(kinds.tolist())):
        sel = kinds == k
        out[k] = {"n": int(sel.sum()), "found": round(float(fires[sel & has].mean()), 4) if (sel & has).any() else None,
                  "false_alarm": round(float(fires[sel & ~has].mean()), 4) if (sel & ~has).any() else None}
    return out


def fit(data: list[Path], out: Path, steps: int, batch: int, lr: float, seed: int = 0, threads: int = 0,
        val_share: float = 0.1) -> dict:
    """Distil the original short-range detector (teacher, on the clean views) into a copy reading the occluded
    views of the pairs in the `data` folders; keeps the checkpoint with the best mean recall over the occluded
    validation kinds less its false-alarm rate on face-free validation views. Writes OUT/model.pt and
    OUT/metrics.json."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    parts = [np.load(p / "pairs.npz") for p in data]
    occ, kinds = (np.concatenate([d[k] for d in parts]) for k in ("occluded", "kind"))
    t_reg = np.concatenate([d["reg"] for d in parts]).astype(np.float32)
    t_logit = np.concatenate([d["logit"] for d in parts])
    n = len(occ)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = int(n * val_share)
    val, train = order[:n_val], order[n_val:]
    student = TFLiteNet(model_path(0))
    teacher_p_val = 1.0 / (1.0 + np.exp(-np.clip(t_logit[val], -80, 80)))
    base = recall_report(detection_scores(student.eval(), occ[val]), teacher_p_val, kinds[val])
    print("original on the occluded validation views:", json.dumps(base), flush=True)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    out.mkdir(parents=True, exist_ok=True)
    best, history, t0 = None, [], time.perf_counter()
    every = max(1, steps // 6)
    for step in range(1, steps + 1):
        student.train()
        idx = train[rng.integers(len(train), size=batch)]
        x = occ[idx]
        if rng.random() < 0.5:  # brightness/contrast jitter of the copy's view only: the answer must not follow it
            a, b = rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
            x = np.clip(x.astype(np.float32) * a + b, 0, 255).astype(np.uint8)
        reg, logit = student(_input(x))
        loss, parts = distill_loss(reg, logit[..., 0], torch.from_numpy(t_reg[idx]), torch.from_numpy(t_logit[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(f"step {step} loss {float(loss):.4f} cls {parts['cls']:.4f} reg {parts['reg']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if step % every == 0 or step == steps:
            rep = recall_report(detection_scores(student.eval(), occ[val]), teacher_p_val, kinds[val])
            occluded = [v["found"] for k, v in rep.items() if k not in ("clean", "empty") and v["found"] is not None]
            score = float(np.mean(occluded))
            fa = rep.get("empty", {}).get("false_alarm") or 0.0
            history.append({"step": step, "mean_found_occluded": round(score, 4), "report": rep})
            print(f"validation step {step}: mean found (occluded) {score:.4f}, clean {rep['clean']['found']}, "
                  f"empty false alarms {fa}", flush=True)
            # the step asks it only where the original found nothing, and verifies what it finds: a few false
            # alarms on face-free views cost less than faces missed, so the choice is found minus false alarms
            history[-1]["false_alarm_empty"] = fa
            if best is None or score - fa > best["mean_found_occluded"] - best["false_alarm_empty"]:
                best = history[-1]
                state = {k: v.detach().clone() for k, v in student.state_dict().items()}
                atomic_write(out / "model.pt", lambda tmp, s=state: torch.save(s, tmp))
    metrics = {"data": [str(p) for p in data], "steps": steps, "batch": batch, "lr": lr, "seed": seed, "pairs": int(n),
               "validation_pairs": int(n_val), "original": base, "best": best, "history": history,
               "seconds": round(time.perf_counter() - t0)}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def ship(run: Path, out_dir: Path | None = None) -> Path:
    """The run's copy exported as ONNX (fp32, dynamic batch: 400 KB) with a JSON card beside it."""
    out_dir = out_dir or weights_dir()
    net = TFLiteNet(model_path(0))
    net.load_state_dict(torch.load(run / "model.pt", map_location="cpu"))
    net.eval()
    path = out_dir / f"{SHIPPED}.onnx"

    def export(tmp: str) -> None:
        torch.onnx.export(net, torch.zeros(1, 3, SIZE, SIZE), tmp, input_names=["image"],
                          output_names=["regressors", "classificators"], dynamic_axes={"image": {0: "batch"}},
                          opset_version=17, dynamo=False)

    atomic_write(path, export)
    metrics = json.loads((run / "metrics.json").read_text())
    card = {"name": SHIPPED, "input": "NCHW float32 in [-1, 1], 128 x 128 letterboxed RGB (faces.blazeface.letterbox)",
            "outputs": "as mediapipe's face_detection_short_range.tflite: regressors (N, 896, 16), "
                       "classificators (N, 896, 1)",
            "licence": "non-commercial research only: distilled on UTKFace (non-commercial) and All-Age-Faces (research "
                       "use) train-part photos; initialised from mediapipe's face_detection_short_range.tflite "
                       "(Apache-2.0)",
            "data": "UTKFace and All-Age-Faces train parts (splits/*_seed0.json), as crops and pasted into "
                    "backgrounds from scikit-learn's and matplotlib's sample images and procedural images "
                    "(never scikit-image's: the no-face measurement set); occluders: occlusion.synth.ALL_TYPES",
            "recipe": "python -m agelens.train.face_detector data --seed 0 --pairs 12000 --n-utk 2500 --n-aaf 1500 "
                      "--out cache/face_detector_s0 (and --seed 1 ... _s1); fit --data cache/face_detector_s0 "
                      "cache/face_detector_s1 --steps 1500; ship RUN",
            "train": metrics}
    atomic_write_json(out_dir / f"{SHIPPED}.json", card)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="collect photos, draw the pairs, run the original on the clean views")
    d.add_argument("--out", type=Path, default=Path("cache/face_detector"))
    d.add_argument("--shared", type=Path, default=Path("../shared/data"))
    d.add_argument("--n-utk", type=int, default=3000)
    d.add_argument("--n-aaf", type=int, default=2000)
    d.add_argument("--pairs", type=int, default=24000)
    d.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("fit", help="distil the original into the copy")
    f.add_argument("--data", type=Path, nargs="+", default=[Path("cache/face_detector")],
                   help="folders written by `data` (e.g. two runs with different seeds)")
    f.add_argument("--out", type=Path, default=Path("runs/face_detector"))
    f.add_argument("--steps", type=int, default=3000)
    f.add_argument("--batch", type=int, default=64)
    f.add_argument("--lr", type=float, default=3e-4)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, default=0)
    s = sub.add_parser("ship", help="export a run's copy to the package's weights")
    s.add_argument("run", type=Path)
    s.add_argument("--out-dir", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.cmd == "data":
        build_data(a.out, a.shared, a.n_utk, a.n_aaf, a.pairs, a.seed)
    elif a.cmd == "fit":
        print(json.dumps(fit(a.data, a.out, a.steps, a.batch, a.lr, a.seed, a.threads)["best"]))
    else:
        print(ship(a.run, a.out_dir))


if __name__ == "__main__":
    main()
