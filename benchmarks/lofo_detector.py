"""Leave-one-family-out for the occlusion detector, retrained (issue 20): a detector trained without occluder
family F, tested on F, against the same recipe trained with every family.

`benchmarks/lofo.py` reads the question off linear probes on the teacher's frozen features; here the detector
itself is trained once per family, from ImageNet weights, with the same recipe, steps and seed each time
(`python -m agelens.train.guards fit occlusion --kinds all --no-real --without F`): synthetic occluders of every
family but F (and no double kind holding one of F's kinds, `occlusion.kinds.kinds_without`) as positives, no real
occluded faces (realocc's masks and sunglasses would show the paper's and the fabric masks' families), clean
faces as negatives. One more run, `--without` left out, is the "seen" column.

Test crops are found end to end: each seeded UTKFace test photo with one kind of F drawn on the photo from the
clean face's FaceMesh (a seeded pick among F's kinds), saved as JPEG q95, found and aligned as `predict` finds it
(`AgeEstimator.faces_of`, the face nearest the clean face's box). Flag recall per family at 99 % specificity on
the same photos clean (each run's own 99th percentile of its clean scores), unseen against seen, paired by photo
with a bootstrap 95 % interval of the difference. The shipped detector (trained on every family and on real
occluders, then fine-tuned in later stages) is scored beside them at its card's threshold.

    python benchmarks/lofo_detector.py crops --n 300 --out runs/lofo_det/crops.npz           # about 2 min
    python benchmarks/lofo_detector.py fit --runs runs/lofo_det --steps 300 [--families paper hand ...]
    python benchmarks/lofo_detector.py score --runs runs/lofo_det --crops runs/lofo_det/crops.npz --out docs/lofo_detector

`fit --random-shapes P` gives every run (the "seen" one too) this share of its synthetic positives under
`random_shape` (`occlusion.families`: shapes, colours and patterns of no family, domain randomisation).

`fit` trains the runs that are missing (RUNS/seen, RUNS/without_F; each about 10 min on one core, its log in
RUNS/NAME.log), so two `fit` processes over different --families share a machine and an interrupted one resumes
(a run restarts from its first step).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from agelens.occlusion.kinds import FAMILIES  # noqa: E402
from agelens.train.guards import GuardRecipe  # noqa: E402
from agelens.utils import atomic_write, atomic_write_json, atomic_write_text  # noqa: E402

SPECIFICITY = 0.99


def make_crops(n: int, seed: int, out: Path) -> None:
    """The clean and per-family occluded crops of n seeded UTKFace test photos, as `predict` finds them."""
    from agelens import AgeEstimator
    from agelens.data.splits import sample_names, split_part
    from agelens.faces.detect import FaceAnalyzer
    from agelens.imageio import load_image
    from agelens.occlusion.synth import OcclusionError, occlude
    from occlusion_e2e import found_nearest, placed_face

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface"
    names = sample_names(split_part("splits/utkface_seed0.json", "test"), n, seed)
    est, placer = AgeEstimator.from_pretrained(), FaceAnalyzer()
    crops: dict[str, list] = {"clean": [], **{f: [] for f in FAMILIES}}
    kinds: dict[str, list] = {f: [] for f in FAMILIES}
    photos: dict[str, list] = {"clean": [], **{f: [] for f in FAMILIES}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.jpg"

        def found(rgb: np.ndarray, box) -> np.ndarray | None:  # the crop of `found_nearest`'s face
            face = found_nearest(est, rgb, box, path)
            return None if face is None else face[2]

        for i, name in enumerate(names):
            rgb = load_image(root / name)
            face = placed_face(placer, rgb)
            if face is None:
                continue
            c = found(rgb, face.box)
            if c is not None:
                crops["clean"].append(c)
                photos["clean"].append(i)
            for k, fam in enumerate(FAMILIES):
                rng = np.random.default_rng((seed, i, k))
                kind = str(rng.choice(FAMILIES[fam]))
                try:
                    img = occlude(rgb, face.landmarks, kind, rng).image
                except OcclusionError:
                    continue
                c = found(img, face.box)
                if c is not None:
                    crops[fam].append(c)
                    kinds[fam].append(kind)
                    photos[fam].append(i)
            if (i + 1) % 50 == 0:
                print(f"{i + 1}/{len(names)} photos", flush=True)
    arrays = {f"crops_{k}": np.stack(v) for k, v in crops.items() if v}
    arrays["names"] = np.array(names)  # photo_* index into these (UTKFace names: the age leads)
    arrays.update({f"photo_{k}": np.array(v, np.int32) for k, v in photos.items()})
    arrays.update({f"kind_{k}": np.array(v) for k, v in kinds.items()})
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to the temporary name
            np.savez(fh, **arrays)

    atomic_write(out, write)
    print({k: len(v) for k, v in crops.items()})


def fit_runs(runs: Path, families: list[str], steps: int, data: str, threads: int, random_shapes: float = 0.0,
             seed: int = 0) -> None:
    """Train each missing run: "seen" (every family) and "without_F" for each F asked for; random_shapes: the share
    of synthetic positives under a random shape, in every run (`guards fit --random-shapes`); seed: every run's
    (`guards fit --seed`)."""
    for fam in families:
        run = runs / ("seen" if fam == "seen" else f"without_{fam}")
        if (run / "best.pt").is_file():
            print(f"{run}: done before", flush=True)
            continue
        recipe = GuardRecipe("occlusion", kinds="all", without=None if fam == "seen" else fam, real=False,
                             random_shapes=random_shapes, seed=seed)
        cmd = [sys.executable, "-m", "agelens.train.guards", "fit", "occlusion", "--data", data, "--steps", str(steps),
               "--batch", "32", "--threads", str(threads), "--out", str(run), *recipe.flags()]
        t = time.perf_counter()
        run.parent.mkdir(parents=True, exist_ok=True)
        with open(run.with_suffix(".log"), "w") as log:  # the fit's progress, one line per 25 steps
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        print(f"{run}: {time.perf_counter() - t:.0f} s", flush=True)


def threshold_at(clean: np.ndarray) -> float:
    """The score that SPECIFICITY of the clean scores fall under (their quantile)."""
    return float(np.quantile(clean, SPECIFICITY))


def paired_interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n: int = 2000) -> list[float]:
    """Bootstrap 95 % interval of mean(a) - mean(b) over the same items (0/1 flags)."""
    idx = rng.integers(0, len(a), (n, len(a)))
    d = a[idx].mean(1) - b[idx].mean(1)
    return [round(float(np.quantile(d, 0.025)), 3), round(float(np.quantile(d, 0.975)), 3)]


def score(runs: Path, crops_path: Path, out: Path) -> None:
    from agelens.occlusion.detector import OcclusionDetector

    z = np.load(crops_path)
    fams = [f for f in FAMILIES if f"crops_{f}" in z.files]
    seen = OcclusionDetector.from_pretrained(str(runs / "seen"))
    shipped = OcclusionDetector.from_pretrained("occlusion")
    clean = z["crops_clean"]
    thr_s = threshold_at(seen.scores(clean))
    seen_flags = {f: seen.scores(z[f"crops_{f}"]) >= thr_s for f in fams}  # every family, trained without or not
    ship_clean = shipped.scores(clean)
    rng = np.random.default_rng(0)
    rows = []
    for fam in fams:
        run = runs / f"without_{fam}"
        if not (run / "best.pt").is_file():
            print(f"{run}: missing, left out", flush=True)
            continue
        unseen = OcclusionDetector.from_pretrained(str(run))
        occ = z[f"crops_{fam}"]
        thr_u = threshold_at(unseen.scores(clean))
        fu = unseen.scores(occ) >= thr_u
        fs = seen_flags[fam]
        fship = shipped.scores(occ) >= shipped.threshold
        rows.append({"family": fam, "crops": int(len(occ)), "kinds": sorted(set(z[f"kind_{fam}"].tolist())),
                     "recall_unseen": round(float(fu.mean()), 4), "recall_seen": round(float(fs.mean()), 4),
                     "unseen_minus_seen": round(float(fu.mean() - fs.mean()), 4),
                     "interval": paired_interval(fu.astype(float), fs.astype(float), rng),
                     "recall_shipped": round(float(fship.mean()), 4),
                     "threshold_unseen": round(thr_u, 4), "threshold_seen": round(thr_s, 4)})
        print(json.dumps(rows[-1]), flush=True)
    res = {"command": "python benchmarks/lofo_detector.py score " + " ".join(sys.argv[2:]),
           "recipes": {r.name: json.loads((r / "metrics.json").read_text()).get("steps") for r in sorted(runs.iterdir())
                       if (r / "metrics.json").is_file()},
           "clean_crops": int(len(clean)), "specificity": SPECIFICITY,
           "shipped_clean_flagged": round(float((ship_clean >= shipped.threshold).mean()), 4),
           "rows": rows,
           "recall_seen_every_family": {f: round(float(v.mean()), 4) for f, v in seen_flags.items()}}
    if rows:
        res["mean_recall_unseen"] = round(float(np.mean([r["recall_unseen"] for r in rows])), 4)
        res["mean_recall_seen"] = round(float(np.mean([r["recall_seen"] for r in rows])), 4)
    atomic_write_json(out.with_suffix(".json"), res)
    atomic_write_text(out.with_suffix(".md"), markdown(res))


def markdown(res: dict) -> str:
    lines = ["# Leave-one-family-out, the occlusion detector retrained", "",
             f"Command: `{res['command']}` (the runs: `benchmarks/lofo_detector.py fit`, "
             f"{'/'.join(str(v) for v in sorted(set(res['recipes'].values())))} batches each). What the columns mean: "
             "the script's docstring.", "",
             f"{res['clean_crops']} clean UTKFace test photos end to end; threshold per run at "
             f"{res['specificity']:.0%} specificity on them. The shipped detector flags "
             f"{res['shipped_clean_flagged']:.1%} of them at its card's threshold.", "",
             "| family | crops | recall, trained without it | recall, trained with it | unseen − seen [95 %] | shipped |",
             "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['family']} | {r['crops']} | {r['recall_unseen']:.1%} | {r['recall_seen']:.1%} | "
                     f"{r['unseen_minus_seen']:+.3f} [{r['interval'][0]:+.3f}, {r['interval'][1]:+.3f}] | "
                     f"{r['recall_shipped']:.1%} |")
    if res["rows"]:
        lines += ["", f"Mean over families: unseen {res['mean_recall_unseen']:.1%}, seen {res['mean_recall_seen']:.1%}."]
    if "recall_seen_every_family" in res:
        lines += ["", "The seen run on every family: " + ", ".join(f"{f} {v:.1%}" for f, v in
                                                               res["recall_seen_every_family"].items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("crops")
    c.add_argument("--n", type=int, default=300)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=Path, default=Path("runs/lofo_det/crops.npz"))
    f = sub.add_parser("fit")
    f.add_argument("--runs", type=Path, default=Path("runs/lofo_det"))
    f.add_argument("--families", nargs="+", default=["seen", *FAMILIES], choices=["seen", *FAMILIES])
    f.add_argument("--steps", type=int, default=300)
    f.add_argument("--data", default="cache/guards_random")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--random-shapes", type=float, default=0.0, metavar="P",
                   help="this share of every run's synthetic positives under a random shape (no family's look)")
    f.add_argument("--seed", type=int, default=0, help="every run's training seed (a second run of a recipe)")
    s = sub.add_parser("score")
    s.add_argument("--runs", type=Path, default=Path("runs/lofo_det"))
    s.add_argument("--crops", type=Path, default=Path("runs/lofo_det/crops.npz"))
    s.add_argument("--out", type=Path, default=Path("docs/lofo_detector"))
    a = ap.parse_args()
    if a.cmd == "crops":
        make_crops(a.n, a.seed, a.out)
    elif a.cmd == "fit":
        fit_runs(a.runs, a.families, a.steps, a.data, a.threads, a.random_shapes, a.seed)
    else:
        score(a.runs, a.crops, a.out)


if __name__ == "__main__":
    main()
