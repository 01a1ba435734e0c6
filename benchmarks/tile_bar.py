"""The tile step's bar for the teacher's face head (card `guard_cascade.face.tile_head`), end to end.

The tile step (`FaceAnalyzer.find_faces`, last but one) passes a face only when both face networks say so: the
separate `faceness` at its threshold and the teacher's own face head (`TrunkGuard.both_scores`). Without a card
value the head is held to `faceness`'s threshold, a bar that depends on how sure of faces a given trunk's head
happens to be. Pass 1 runs `AgeEstimator.predict`'s face finding (shipped models, default settings) on every input
and notes those that reach the tile step; pass 2 runs those again for each candidate bar. Inputs:
- face photos: UTKFace photos of a split part with each foreign occluder kind of `foreign_occluders.py` drawn on the
  original photo (JPEG q95), and realocc's real masks and sunglasses (--realocc-half);
- images without a human face: scikit-image's sample images whole and in seeded crops (as `no_face.py`).
Reports, per bar, the share answered per set (and which non-face images got a face).

    python benchmarks/tile_bar.py --part val --n 150 --bars 0.906 0.85 0.8 0.75 0.687 --out docs/tile_bar.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from agelens.data.splits import sample_names, split_part  # noqa: E402
from agelens.errors import NoFaceError  # noqa: E402
from agelens.faces.detect import FaceAnalyzer  # noqa: E402
from agelens.imageio import load_image  # noqa: E402
from agelens.inference.predictor import AgeEstimator  # noqa: E402
from agelens.train.guards import realocc_half  # noqa: E402
from agelens.utils import atomic_write_json  # noqa: E402
from foreign_occluders import KINDS, draw  # noqa: E402
from occlusion_e2e import placed_photos, sample_images, save_jpeg, seeded_crops  # noqa: E402


def inputs(a, tmp: Path) -> list[tuple[str, str, Path]]:
    """(set, name, file) for every input, written to tmp where drawn or cropped."""
    out = []
    files = [a.root / f for f in sample_names(sorted(split_part(a.split, a.part)), a.n, a.seed)]
    for i, f, rgb, face, _ in placed_photos(FaceAnalyzer(), files, every=50):
        for k, kind in enumerate(KINDS):
            p = tmp / f"{kind}_{f.name}.jpg"
            save_jpeg(p, draw(rgb, face.landmarks, kind, np.random.default_rng((a.seed, i, k))))
            out.append((f"foreign {kind}", p.name, p))
    d = pd.read_csv(a.shared / "realocc.csv")
    d = d[d.file.map(realocc_half) == a.realocc_half]
    for f, kind, src in zip(d.file, d.occluder, d.source, strict=True):
        out.append((f"realocc {src.split('@')[0].split('/')[-1]} ({kind})", f, a.shared / f))
    for seed in a.seeds:
        rng = np.random.default_rng(seed)
        for name, img in sample_images():
            views = [("whole", img)] if seed == a.seeds[0] else []
            views += [(f"s{seed}crop{k}", c) for k, c in enumerate(seeded_crops(img, rng, a.crops))]
            for tag, v in views:
                p = tmp / f"nonface_{name}_{tag}.png"
                cv2.imwrite(str(p), cv2.cvtColor(np.ascontiguousarray(v), cv2.COLOR_RGB2BGR))
                out.append(("no human face", f"{name}/{tag}", p))
    return out


def add_input_args(ap: argparse.ArgumentParser) -> None:
    """The options `inputs` reads, and the backend (this script's and `detector_gate.py`'s)."""
    ap.add_argument("--split", default="splits/utkface_seed0.json")
    ap.add_argument("--root", type=Path, default=Path("../shared/data/utkface"))
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--part", default="val")
    ap.add_argument("--n", type=int, default=150, help="UTKFace photos of the part (seeded sample)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--realocc-half", default="measure", choices=("fit", "measure"))
    ap.add_argument("--crops", type=int, default=12, help="seeded crops per sample image and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--backend", default="auto")


def found(est: AgeEstimator, path: Path) -> bool:
    try:
        return bool(est.faces_of(load_image(path)))
    except NoFaceError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_input_args(ap)
    ap.add_argument("--bars", type=float, nargs="+", required=True, help="the head's tile-step bars to compare")
    ap.add_argument("--out", default="docs/tile_bar.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    est = AgeEstimator.from_pretrained(backend=a.backend)
    v = est.verifier
    shipped_bar = v.tile_head
    tiled = [False]
    both = v.both_scores

    def noted(crops):
        tiled[0] = True
        return both(crops)

    v.both_scores = noted
    with tempfile.TemporaryDirectory() as tmp:
        items = inputs(a, Path(tmp))
        print(f"{len(items)} inputs", flush=True)
        base, reach = [], []
        for _, _, p in items:
            tiled[0] = False
            base.append(found(est, p))
            reach.append(tiled[0])
        print(f"pass 1: {sum(reach)} reach the tile step ({time.perf_counter() - t0:.0f} s)", flush=True)
        runs = {}
        for bar in a.bars:
            v.tile_head = bar
            ans = list(base)
            for k in np.flatnonzero(reach):
                ans[k] = found(est, items[k][2])
            runs[bar] = ans
            print(f"bar {bar}: {sum(ans)} answered ({time.perf_counter() - t0:.0f} s)", flush=True)
    sets = sorted({s for s, _, _ in items})
    table = {}
    for s in sets:
        idx = [k for k, it in enumerate(items) if it[0] == s]
        table[s] = {"n": len(idx), "reach_tile_step": int(sum(reach[k] for k in idx)),
                    "answered": {str(b): round(float(np.mean([runs[b][k] for k in idx])), 4) for b in a.bars}}
    nonface = [k for k, it in enumerate(items) if it[0] == "no human face"]
    out = {"command": "python benchmarks/tile_bar.py " + " ".join(sys.argv[1:]), "backend": est.backend,
           "shipped_bar": shipped_bar, "faceness_threshold": v.threshold, "table": table,
           "nonface_answered": {str(b): [items[k][1] for k in nonface if runs[b][k]] for b in a.bars},
           "seconds": round(time.perf_counter() - t0)}
    atomic_write_json(a.out, out)
    for s, r in table.items():
        print(f"{s:45s} n={r['n']:4d} tile={r['reach_tile_step']:3d} " +
              " ".join(f"{b}:{x:.4f}" for b, x in r["answered"].items()))
    print(out["nonface_answered"])


if __name__ == "__main__":
    main()
