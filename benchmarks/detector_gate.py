"""Faces the detector proposes at low confidence, on face photos and on images without a face: the data for a
joint gate on (detector score, face verifier score) at `find_faces`' first step.

Runs `AgeEstimator.faces_of` (shipped models, default settings) on the inputs of `tile_bar.py` (UTKFace photos of
a split part under foreign occluders, realocc's real masks and sunglasses, scikit-image's sample images whole and in
seeded crops) and records, per input, every detector-step proposal's detector score and the face verifier's score
(`TrunkGuard.scores`: the teacher's face head, the separate networks where it is unsure), and the step that answered.
For each candidate gate (reject a detector-step face when detector < D and verifier < V) it reports per set the
share of inputs whose every answered face came from the detector step and would be rejected ("at risk": the later
steps may still find them, so for face photos this is the most that could be lost).

    python benchmarks/detector_gate.py --part val --n 150 --seeds 1 2 3 4 5 6 --out docs/detector_gate.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agelens.errors import NoFaceError  # noqa: E402
from agelens.imageio import load_image  # noqa: E402
from agelens.inference.predictor import AgeEstimator  # noqa: E402
from agelens.utils import atomic_write_json, atomic_write_text  # noqa: E402
from tile_bar import add_input_args, inputs  # noqa: E402

GATES = [(d, v) for d in (0.6, 0.7, 0.8) for v in (0.3, 0.4, 0.5, 0.6, 0.7)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_input_args(ap)
    ap.add_argument("--out", default="docs/detector_gate.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    est = AgeEstimator.from_pretrained(backend=a.backend)
    v, an = est.verifier, est.analyzer
    calls: list = []
    scores, propose = v.scores, an.propose

    def noted_scores(crops):
        p = scores(crops)
        calls.append(("verify", p.tolist()))
        return p

    def noted_propose(rgb):
        faces = propose(rgb)
        calls.append(("propose", [float(f.score) for f in faces]))
        return faces

    v.scores, an.propose = noted_scores, noted_propose
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        items = inputs(a, Path(tmp))
        print(f"{len(items)} inputs", flush=True)
        for s, name, p in items:
            calls.clear()
            try:
                faces = est.faces_of(load_image(p))
            except NoFaceError:
                faces = []
            det = next((c[1] for c in calls if c[0] == "propose"), [])
            ver = next((c[1] for c in calls if c[0] == "verify"), []) if det else []
            rows.append({"set": s, "name": name, "steps": sorted({f[4] for f in faces}),
                         "proposals": [[round(d, 4), round(q, 4)] for d, q in zip(det, ver, strict=False)]})
    table = {}
    for s in sorted({r["set"] for r in rows}):
        rs = [r for r in rows if r["set"] == s]
        answered = [r for r in rs if r["steps"]]
        t = {"n": len(rs), "answered": round(len(answered) / len(rs), 4)}
        for d, q in GATES:
            risk = 0
            for r in answered:
                if r["steps"] != ["detector"]:
                    continue
                kept = [x for x in r["proposals"] if x[1] >= 0.2 and not (x[0] < d and x[1] < q)]
                risk += not kept
            t[f"det<{d} & ver<{q}"] = round(risk / len(rs), 4)
        table[s] = t
    out = {"command": "python benchmarks/detector_gate.py " + " ".join(sys.argv[1:]), "backend": est.backend,
           "table": table, "seconds": round(time.perf_counter() - t0)}
    atomic_write_json(a.out, out)
    atomic_write_text(Path(a.out).with_suffix(".rows.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    keys = [k for k in next(iter(table.values())) if k.startswith("det")]
    print("set".ljust(45), "answered", " ".join(keys))
    for s, t in table.items():
        print(s.ljust(45), f"{t['answered']:.4f}", " ".join(f"{t[k]:.4f}" for k in keys))


if __name__ == "__main__":
    main()
