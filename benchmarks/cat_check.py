"""The ImageNet check's two sides (`faces/animal.py`): its cat probability and people mass on the faces `predict`
answers, and which faces each veto turns away (the people veto only where the check is asked: the detector unsure).

Human side: every face `AgeEstimator.faces_of` answers on the UTKFace and All-Age-Faces val and test photos, on
UTKFace val photos with one occluder (of every family in turn) drawn on the photo, and on all realocc photos (its fit
half, which the people table was fitted on, and its measure half reported apart). Non-face
side: scikit-image's sample images (as `occlusion_e2e.py` takes them) whole and in seeded crops, and, with
--animals DIR, photos of animals (for instance those inside pip wheels, docs/occlusion_report.md) whole and in
seeded crops. Each face is scored on its context square (`animal.context_crop`) by the shipped check whether or not
the gate of `finding.without_non_faces` would ask it, with that check switched off so every candidate is seen.

    python benchmarks/cat_check.py --out docs/cat_check.json [--animals DIR]     # about 6 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from agelens import AgeEstimator  # noqa: E402
from agelens.data.splits import split_part  # noqa: E402
from agelens.errors import NoFaceError  # noqa: E402
from agelens.faces import animal  # noqa: E402
from agelens.faces.detect import FaceAnalyzer  # noqa: E402
from agelens.imageio import load_image  # noqa: E402
from agelens.inference import finding  # noqa: E402
from agelens.occlusion.synth import ALL_TYPES  # noqa: E402
from agelens.train.guards import realocc_half  # noqa: E402
from agelens.utils import atomic_write_json  # noqa: E402
from occlusion_e2e import occluded_on_photo, sample_images  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
UTK_RACES = ("white", "black", "asian", "indian", "other")
TRADE_OFF = (0.70, 0.72, 0.74, 0.76, 0.78, 0.80)  # people-mass thresholds whose vetoes are counted per group too


def vetoed_at(asked: np.ndarray) -> dict[str, int]:
    """How many of the asked faces' people masses fall under each TRADE_OFF threshold."""
    return {f"{t:.2f}": int((asked < t).sum()) for t in TRADE_OFF}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/cat_check.json")
    ap.add_argument("--animals", default=None, help="folder of animal photos (optional)")
    ap.add_argument("--crops", type=int, default=6, help="seeded crops per non-face image")
    ap.add_argument("--occluded", type=int, default=600, help="UTKFace val photos with a drawn occluder")
    a = ap.parse_args()
    t0 = time.time()
    est = AgeEstimator.from_pretrained()
    check = animal.shipped()
    if check is None:
        raise SystemExit("the cat check cannot be exported here (torch is needed once)")
    finding.without_non_faces = lambda rgb, faces, verifier=None, mirrored=None: faces  # score every candidate
    rows: list[tuple[str, str, float]] = []
    people: list[tuple[str, str, float, bool]] = []  # (group, face, people mass, asked)

    def add(group: str, name: str, rgb: np.ndarray) -> None:
        try:
            faces = est.faces_of(rgb)
        except NoFaceError:
            return
        cat, mass = check.scores(rgb, [f[0] for f in faces])
        for k, (f, v, m) in enumerate(zip(faces, cat, mass, strict=True)):
            rows.append((group, f"{name}#{k}:{f[4]}", float(v)))
            people.append((group, f"{name}#{k}:{f[4]}", float(m), animal.people_asked(f[1], f[4])))

    rng = np.random.default_rng(0)
    images = [(f"{n}", img) for n, img in sample_images()]
    if a.animals:
        images += [(f"animal:{p.stem}", load_image(p)) for p in sorted(Path(a.animals).iterdir()) if p.is_file()]
    for name, img in images:
        group = "animal" if name.startswith("animal:") else "nonface"
        h, w = img.shape[:2]
        add(group, f"{name}/whole", img)
        for k in range(a.crops):
            s = rng.uniform(0.3, 0.8)
            ch, cw = int(h * s), int(w * s)
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            add(group, f"{name}/crop{k}", np.ascontiguousarray(img[y:y + ch, x:x + cw]))
    placer = FaceAnalyzer()  # FaceMesh landmarks to place occluders from, as occlusion_e2e.py does
    for part in ("val", "test"):
        for i, f in enumerate(sorted(split_part("splits/utkface_seed0.json", part))):
            rgb = load_image(SHARED / "utkface" / f)
            add(f"utkface_{part}", f, rgb)
            if part == "val" and i < a.occluded:
                kind = ALL_TYPES[i % len(ALL_TYPES)]
                o = occluded_on_photo(placer, rgb, (kind,), (7, i))
                if o and o[1]:
                    add("utkface_val_occluded", f"{f}:{kind}", next(iter(o[1].values())))
        for f in sorted(split_part("splits/aaf_seed0.json", part)):
            add(f"aaf_{part}", f, load_image(SHARED / "aaf" / f))
    import pandas as pd

    for f in pd.read_csv(SHARED / "realocc.csv").file:
        add(f"realocc_{realocc_half(f)}", f, load_image(SHARED / f))

    groups = sorted({g for g, _, _ in rows})
    human = np.array([v for g, _, v in rows if g not in ("nonface", "animal")])
    out = {"command": "python benchmarks/cat_check.py " + " ".join(sys.argv[1:]), "veto": animal.VETO,
           "human": {"n": len(human), "max": round(float(human.max()), 4),
                     "p99_9": round(float(np.percentile(human, 99.9)), 4), "at_veto": int((human >= animal.VETO).sum())},
           "groups": {}, "seconds": round(time.time() - t0)}
    for g in groups:
        v = np.array([x for gg, _, x in rows if gg == g])
        out["groups"][g] = {"n": len(v), "max": round(float(v.max()), 4), "at_veto": int((v >= animal.VETO).sum())}
    by_race: dict[str, list[float]] = {r: [] for r in UTK_RACES}
    for g, name, v in rows:
        parts = name.split("_")
        if g.startswith("utkface") and len(parts) >= 4 and parts[2] in "01234":
            by_race[UTK_RACES[int(parts[2])]].append(v)
    out["utkface_by_race"] = {r: {"n": len(v), "mean": round(float(np.mean(v)), 4),
                                  "p99": round(float(np.percentile(v, 99)), 4), "max": round(float(np.max(v)), 4)}
                              for r, v in by_race.items() if v}
    out["non_human_faces"] = [{"image": n, "group": g, "cat": round(v, 3)} for g, n, v in rows
                              if g in ("nonface", "animal")]
    table = check.people
    if table is not None:  # the people veto: faces asked whose mass is under the table's threshold
        out["people"] = {"threshold": table.threshold, "classes": len(table.classes), "groups": {}}
        for g in sorted({x[0] for x in people}):
            sel = [x for x in people if x[0] == g]
            gone = [x for x in sel if x[3] and x[2] < table.threshold]
            asked = np.array([x[2] for x in sel if x[3]])
            out["people"]["groups"][g] = {"faces": len(sel), "asked": len(asked), "vetoed": len(gone),
                                          "vetoed_faces": [x[1] for x in gone][:40],
                                          "vetoed_at": vetoed_at(asked)}
        human = [x for x in people if x[0] not in ("nonface", "animal", "realocc_fit")]  # not in the table's fit
        asked = np.array([x[2] for x in human if x[3]])
        out["people"]["human_not_fitted_on"] = {"faces": len(human), "asked": len(asked),
                                                "vetoed": int((asked < table.threshold).sum()),
                                                "vetoed_at": vetoed_at(asked)}
    atomic_write_json(a.out, out)
    print({k: out[k] for k in ("human", "groups", "utkface_by_race", "people") if k in out})


if __name__ == "__main__":
    main()
