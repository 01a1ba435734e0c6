"""A job's age mix end to end (`agelens.inference.prior`): the same photos answered as `agelens predict` answers a
folder, with and without adapting the ages to the folder's own age mix.

Every test photo of UTKFace and All-Age-Faces goes once through the whole pipeline (`inference.stream.
predict_stream`, the CLI's path: detection, alignment, guards, routing); so do `--occluded` seeded test photos of
each dataset with one of the paper's occluder types drawn on the photo (saved as JPEG q95), and with --degraded
every test photo under one realistic degradation; with --foreign, UTKFace test photos under the occluders of
`foreign_occluders.py`. A folder is then a
seeded sample of those records with a given age mix, and `AgeEstimator.adapt` does to it what `agelens predict`
does to a job (every face of the folder; the file's largest face is scored, as `check_contracts.sh` scores).

Folders: each dataset's whole test part; and from the pooled parts, --n photos (--seeds samples each) drawn with
the age-bin shares of: mostly children (0.37, 0.34, 0.14, 0.08, 0.05, 0.015, 0.008 from 0-10 to 61+, roughly the
mix of public scanned-photo sets such as family albums), even, mostly over 50, ages 31-60 only, children only
(0-10), young adults only (21-30).

    python benchmarks/prior_adapt.py --n 400 --seeds 5 --occluded 300 --degraded --foreign 250 --out docs/prior_adapt
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np

from agelens.data.augment import TEST_DEGRADATIONS
from agelens.data.splits import sample_names, split_part
from agelens.faces.detect import FaceAnalyzer
from agelens.faces.prepare import largest_face
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.inference.stream import predict_stream
from agelens.occlusion.synth import OCCLUSION_TYPES, OcclusionError, occlude
from agelens.utils import atomic_write_json, atomic_write_text
from foreign_occluders import KINDS, draw
from generalise import SPLITS, degraded, test_files
from occlusion_e2e import placed_face, placed_photos, save_jpeg

BINS = ((0, 10), (11, 20), (21, 30), (31, 40), (41, 50), (51, 60), (61, 200))
MIXES = {"mostly children": (0.37, 0.34, 0.14, 0.08, 0.05, 0.015, 0.008),
         "even": (1, 1, 1, 1, 1, 1, 1),
         "mostly over 50": (0.02, 0.03, 0.1, 0.15, 0.2, 0.25, 0.25),
         "ages 31-60 only": (0, 0, 0, 1, 1, 1, 0),
         "children only (0-10)": (1, 0, 0, 0, 0, 0, 0),
         "ages 21-30 only": (0, 0, 1, 0, 0, 0, 0)}


def answer_all(est: AgeEstimator, files: list[str]) -> dict[str, dict]:
    """file → predict's record, the CLI's path, one process."""
    return {r["file"]: r for r, _ in predict_stream(est, files, True, 0, 32)}


def answered(est: AgeEstimator, photos: dict[str, list[tuple[Path, float]]], make) -> dict:
    """Per dataset (predict's records, true ages) of the files `make(photos, tmp folder)` names or writes there."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ds, ph in photos.items():
            files = make(ph, Path(tmp))
            recs = answer_all(est, [f for f, _ in files])
            out[ds] = ([recs[f] for f, _ in files], [age for _, age in files])
            print(ds, "answered", flush=True)
    return out


def largest(r: dict) -> dict | None:
    """A record's largest face (`faces.prepare.largest_face` on its boxes), None without one."""
    faces = r.get("faces") or []
    return largest_face(faces, box=lambda f: f["box"]) if faces else None


def folder_mae(est: AgeEstimator, records: list[dict], ages: list[float]) -> dict:
    """MAE of the folder's largest faces as answered and after `AgeEstimator.adapt` over the whole folder."""
    before = [largest(r) for r in records]
    adapted = copy.deepcopy(records)
    info = est.adapt(adapted)
    after = [largest(r) for r in adapted]
    keep = [i for i, f in enumerate(before) if f is not None]
    t = np.array([ages[i] for i in keep])
    e0 = np.abs(np.array([before[i]["age"] for i in keep]) - t)
    e1 = np.abs(np.array([after[i]["age"] for i in keep]) - t)
    cov = [float(np.mean([f[i]["interval"][0] <= ages[i] <= f[i]["interval"][1] for i in keep])) for f in (before, after)]
    return {"photos": len(records), "answered": len(keep), "mae": round(float(e0.mean()), 3),
            "mae_adapted": round(float(e1.mean()), 3), "coverage": round(cov[0], 3), "coverage_adapted": round(cov[1], 3),
            "mix_mean_age": f"{info['mix_mean_age']} ({info['strength']:.2f})" if "mix_mean_age" in info else None, "true_mean_age": round(float(t.mean()), 2), "applied": info["applied"]}


def mix_sample(ages: np.ndarray, shares, n: int, seed: int) -> np.ndarray:
    rng, shares, idx = np.random.default_rng(seed), np.asarray(shares, float), []
    for (lo, hi), s in zip(BINS, shares / np.sum(shares), strict=True):
        cand = np.flatnonzero((ages >= lo) & (ages <= hi))
        idx += list(rng.choice(cand, min(len(cand), int(round(s * n))), replace=False))
    return np.array(sorted(idx))


def folders(est: AgeEstimator, pools: dict[str, tuple[list[dict], list[float]]], n: int, seeds: int) -> dict:
    out = {}
    for name, (recs, ages) in pools.items():
        out[f"{name}: whole"] = folder_mae(est, recs, ages)
    pooled_r = [r for recs, _ in pools.values() for r in recs]
    pooled_a = np.array([a for _, ages in pools.values() for a in ages])
    for mix, shares in MIXES.items():
        rows = []
        for s in range(seeds):
            idx = mix_sample(pooled_a, shares, n, s)
            rows.append(folder_mae(est, [pooled_r[i] for i in idx], [float(pooled_a[i]) for i in idx]))
        out[f"{' + '.join(pools)}: {mix}"] = {k: (round(float(np.mean([r[k] for r in rows])), 3)
                                                   if isinstance(rows[0][k], float | int) else rows[0][k])
                                               for k in rows[0]} | {"per_seed_change": [
                                                   round(r["mae_adapted"] - r["mae"], 3) for r in rows]}
    return out


def occluded_files(photos: list[tuple[Path, float]], n: int, tmp: Path, seed: int) -> list[tuple[str, float]]:
    """n seeded photos, each with one paper occluder type (in turn) drawn on the photo, saved as JPEG q95."""
    an, rng = FaceAnalyzer(), np.random.default_rng(seed)
    out = []
    for k, i in enumerate(rng.permutation(len(photos))[:n]):
        p, age = photos[i]
        rgb = load_image(p)
        face = placed_face(an, rgb)
        if face is None:
            continue
        kind = OCCLUSION_TYPES[k % len(OCCLUSION_TYPES)]
        try:
            img = occlude(rgb, face.landmarks, kind, np.random.default_rng((seed, int(i)))).image
        except OcclusionError:
            continue
        f = tmp / f"{p.parent.name}_{kind}_{p.name}"
        save_jpeg(f, img)
        out.append((str(f), age))
    return out


def degraded_files(photos: list[tuple[Path, float]], tmp: Path, seed: int) -> list[tuple[str, float]]:
    """Every photo under one of the realistic test degradations in turn (`generalise.degraded`, seeded as there),
    saved as JPEG q95: a folder of old, scanned, small or badly lit photos."""
    out = []
    for i, (p, age) in enumerate(photos):
        name = TEST_DEGRADATIONS[i % len(TEST_DEGRADATIONS)]
        f = tmp / f"{p.parent.name}_{name}_{p.name}"
        save_jpeg(f, degraded(load_image(p), name, i, seed))
        out.append((str(f), age))
    return out


def foreign_folders(est: AgeEstimator, n: int, seed: int) -> dict:
    """Folders of UTKFace test photos under the occluders of `foreign_occluders.py` (shapes no synthesizer of ours
    draws): one folder per kind, and one of every kind together."""
    split, root = SPLITS["utkface"]
    files = [Path(root) / f for f in sample_names(sorted(split_part(split, "test")), n, seed)]
    out, every = {}, ([], [])
    with tempfile.TemporaryDirectory() as tmp:
        per = {k: [] for k in KINDS}
        for i, _, rgb, face, age in placed_photos(FaceAnalyzer(), files, every=10 ** 9):
            for k, kind in enumerate(KINDS):
                f = f"{tmp}/{kind}_{i}.jpg"
                save_jpeg(Path(f), draw(rgb, face.landmarks, kind, np.random.default_rng((seed, i, k))))
                per[kind].append((f, age))
        for kind, fl in per.items():
            recs = answer_all(est, [f for f, _ in fl])
            rr, aa = [recs[f] for f, _ in fl], [age for _, age in fl]
            out[f"utkface: {kind}"] = folder_mae(est, rr, aa)
            every[0].extend(rr)
            every[1].extend(aa)
    out["utkface: every kind together"] = folder_mae(est, *every)
    return out


def markdown(res: dict) -> list[str]:
    lines = ["| folder | photos (answered) | MAE as answered | MAE adapted | change per seed | 90 % coverage: as "
             "answered / adapted | true mean age | estimated mean age (strength), first sample |", "|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        ch = ", ".join(f"{c:+.2f}" for c in r.get("per_seed_change", [r["mae_adapted"] - r["mae"]]))
        lines.append(f"| {name} | {r['photos']:g} ({r['answered']:g}) | {r['mae']:.3f} | **{r['mae_adapted']:.3f}** | "
                     f"{ch} | {r['coverage']:.3f} / {r['coverage_adapted']:.3f} | {r['true_mean_age']:.1f} | "
                     f"{r['mix_mean_age'] if r['mix_mean_age'] is not None else '—'} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="photos per mixed folder")
    ap.add_argument("--seeds", type=int, default=3, help="samples per mix")
    ap.add_argument("--occluded", type=int, default=300, help="occluded test photos per dataset (0: none)")
    ap.add_argument("--degraded", action="store_true",
                    help="also every test photo under one realistic degradation (grey, sepia, scan grain, ...)")
    ap.add_argument("--foreign", type=int, default=0,
                    help="UTKFace test photos under each of foreign_occluders.py's kinds (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default="runs/prior_adapt")
    a = ap.parse_args()
    t0 = time.time()
    est = AgeEstimator.from_pretrained(backend=a.backend)
    photos = {ds: test_files(ds, 100000, 0) for ds in SPLITS}  # whole test parts
    cmd = (f"python benchmarks/prior_adapt.py --n {a.n} --seeds {a.seeds} --occluded {a.occluded} "
           f"{'--degraded ' if a.degraded else ''}--foreign {a.foreign} --seed {a.seed} --backend {a.backend} --out {a.out}")
    res: dict = {"command": cmd, "backend": est.backend}
    res["clean"] = folders(est, answered(est, photos, lambda ph, tmp: [(str(p), age) for p, age in ph]), a.n, a.seeds)
    if a.degraded:
        res["degraded"] = folders(est, answered(est, photos, lambda ph, tmp: degraded_files(ph, tmp, a.seed)), a.n,
                                  a.seeds)
    if a.occluded:
        occ = answered(est, photos, lambda ph, tmp: occluded_files(ph, a.occluded, tmp, a.seed))
        res["occluded"] = folders(est, occ, min(a.n, a.occluded), a.seeds)
    if a.foreign:
        res["foreign"] = foreign_folders(est, a.foreign, a.seed)
    res["seconds"] = round(time.time() - t0)
    atomic_write_json(f"{a.out}.json", res)
    lines = ["# A job's age mix, end to end", "", __doc__.split("\n\n")[0].replace("\n", " "), "",
             f"Command: `{res['command']}` (backend {est.backend}, {res['seconds']} s)", "", "## Clean photos", "",
             *markdown(res["clean"])]
    if "degraded" in res:
        lines += ["", "## Photos under one realistic degradation each (grey, sepia, colour cast, gamma, blur, defocus, "
                  "JPEG, noise, low resolution, scan grain, vignette in turn)", "", *markdown(res["degraded"])]
    if "occluded" in res:
        lines += ["", "## Photos with one of the paper's occluder types drawn on the photo", "",
                  *markdown(res["occluded"])]
    if "foreign" in res:
        lines += ["", "## Occluders no synthesizer of ours draws (`foreign_occluders.py`), a folder per kind", "",
                  *markdown(res["foreign"])]
    atomic_write_text(f"{a.out}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
