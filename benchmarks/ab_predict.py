"""A speed lever's before/after: `AgeEstimator.predict` on the same decoded photos, this tree against another one
(a git worktree of the commit before), each run its own process, the two taking turns.

    git worktree add /tmp/before HEAD~1
    python benchmarks/ab_predict.py --other /tmp/before/src --set realocc --n 150 --rounds 6

Each run decodes the photos first, answers them once to warm up (first-use exports, sessions), then times one
pass in one process with the shipped models and the auto backend. Reports each side's seconds per run, their
medians, and whether every run gave the same ages for every face (a speed lever must not change answers). Where a
lever does change them on a labelled set, each side's MAE of the largest face and their paired difference (this −
other, 95 % bootstrap interval) say what it cost.
Sets: realocc (the measure half), aaf (All-Age-Faces test photos), utkface (UTKFace test crops), as in
`benchmarks/inference.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"


def photos(which: str, n: int) -> list[str]:
    return labelled(which, n)[0]


def labelled(which: str, n: int) -> tuple[list[str], np.ndarray | None]:
    """The set's files and true ages (None for realocc, which has none)."""
    sys.path.insert(0, str(HERE))
    from inference import aaf_sample, realocc_sample
    from reference_compare import sample_labelled

    if which == "realocc":
        return realocc_sample(SHARED, n, 0), None
    if which == "aaf":
        return aaf_sample(SHARED, n, 0)
    import tempfile

    from agelens.data.splits import split_part

    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:  # the test part's file names, as inference.py does
        json.dump(sorted(split_part(str(HERE.parent / "splits" / "utkface_seed0.json"), "test")), f)
        f.flush()
        return sample_labelled(str(SHARED / "utkface"), f.name, n, 0)


def one_run(which: str, n: int) -> dict:
    """This process's tree: seconds for one warm pass over the set, and the ages it gave."""
    import agelens
    from agelens import AgeEstimator
    from agelens.errors import NoFaceError
    from agelens.imageio import load_image

    images = [load_image(f) for f in photos(which, n)]
    est = AgeEstimator.from_pretrained()

    def answer() -> tuple[list, list]:
        out, largest = [], []
        for im in images:
            try:
                faces = est.predict(im)
            except NoFaceError:
                out.append(None)
                largest.append(None)
                continue
            out.append([round(f.age, 2) for f in faces])
            largest.append(float(max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).age))
        return out, largest

    answer()
    t = time.perf_counter()
    ages, largest = answer()
    return {"src": str(Path(agelens.__file__).parent), "seconds": round(time.perf_counter() - t, 3), "ages": ages,
            "largest": largest}


def cost(this: list, other: list, truth: np.ndarray, boots: int = 2000) -> dict:
    """MAE of each side's largest-face ages on the photos both answered, and the paired difference."""
    both = [i for i, (a, b) in enumerate(zip(this, other, strict=True)) if a is not None and b is not None]
    ea = np.abs(np.array([this[i] for i in both]) - truth[both])
    eb = np.abs(np.array([other[i] for i in both]) - truth[both])
    d = ea - eb
    rng = np.random.default_rng(0)
    bs = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(boots)]
    return {"photos": len(both), "mae_this": round(float(ea.mean()), 3), "mae_other": round(float(eb.mean()), 3),
            "paired": [round(float(d.mean()), 4), round(float(np.percentile(bs, 2.5)), 4),
                       round(float(np.percentile(bs, 97.5)), 4)],
            "faces_changed": int(np.sum(np.abs(np.array([this[i] for i in both]) - [other[i] for i in both]) > 1e-6))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--other", help="the other tree's src folder (its agelens package is imported from there)")
    ap.add_argument("--set", dest="which", choices=("realocc", "aaf", "utkface"), default="realocc")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default=None, help="JSON file for the result")
    ap.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)  # a child process: one timed run
    a = ap.parse_args()
    if a.one_run:
        print(json.dumps(one_run(a.which, a.n)))
        return
    if not a.other or not (Path(a.other) / "agelens").is_dir():
        raise SystemExit(f"--other must be a src folder holding an agelens package, got {a.other!r}")
    sides = {"this": str(HERE.parent / "src"), "other": str(Path(a.other).resolve())}
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for r in range(a.rounds):
        for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            env = {**os.environ, "PYTHONPATH": sides[side]}
            p = subprocess.run([sys.executable, __file__, "--one-run", "--set", a.which, "--n", str(a.n)], env=env,
                               capture_output=True, text=True, check=True)
            res = json.loads(p.stdout.strip().splitlines()[-1])
            if Path(res["src"]).resolve() != (Path(sides[side]) / "agelens").resolve():
                raise SystemExit(f"the {side} run imported {res['src']}, not {sides[side]}")
            runs[side].append(res)
            print(side, res["seconds"], flush=True)
    first = runs["this"][0]["ages"]
    out = {"command": "python benchmarks/ab_predict.py " + " ".join(sys.argv[1:]), "set": a.which, "n": a.n,
           **{f"{k}_seconds": [x["seconds"] for x in v] for k, v in runs.items()},
           **{f"{k}_median": round(float(np.median([x["seconds"] for x in v])), 3) for k, v in runs.items()},
           "same_answers": all(x["ages"] == first for v in runs.values() for x in v)}
    out["change"] = round(out["this_median"] / out["other_median"] - 1, 4)
    truth = labelled(a.which, a.n)[1]
    if not out["same_answers"] and truth is not None:
        out["mae"] = cost(runs["this"][0]["largest"], runs["other"][0]["largest"], truth)
    print(json.dumps(out))
    if a.out:
        from agelens.utils import atomic_write_json

        atomic_write_json(a.out, out)


if __name__ == "__main__":
    main()
