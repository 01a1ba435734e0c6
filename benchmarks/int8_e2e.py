"""int8 against fp32 end to end: `agelens predict` on test photos with --backend onnx and onnx-int8, one export.

usage: python benchmarks/int8_e2e.py [--onnx-dir DIR] [--utk 400] [--aaf 300] [--rounds 2] [--out docs/int8_e2e.json]
DIR: an export with int8 graphs; default: the shipped models' export (quantised from the shipped ranges, made on
first use). Also `agelens export onnx --output DIR --calibration cache/utkface/val --n-calib 320`.
Whole processes (start to exit), the two backends in turns, best of --rounds; MAE of each photo's largest face,
the paired difference with a 95 % bootstrap interval (overall and per age bin), mean and p99 age change, and
occluded-flag agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import numpy as np

from agelens.utils import atomic_write_json, cpu_flags, cpu_model
from generalise import test_files
from inference import largest_age

BINS = ((0, 10), (11, 20), (21, 40), (41, 60), (61, 120))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx-dir", help="export to run (default: the shipped models' export)")
    ap.add_argument("--utk", type=int, default=400)
    ap.add_argument("--aaf", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/int8_e2e.json")
    a = ap.parse_args()
    files = {"utkface": test_files("utkface", a.utk, a.seed), "aaf": test_files("aaf", a.aaf, a.seed)}
    truth = {str(p): age for rows in files.values() for p, age in rows}
    if a.onnx_dir is None:
        from agelens.export.shipped import ensure_export

        a.onnx_dir = str(ensure_export(int8=True))
    env = {**os.environ, "AGELENS_ONNX_DIR": a.onnx_dir}
    secs: dict[str, list[float]] = {"onnx": [], "onnx-int8": []}
    recs: dict[str, dict] = {}
    for _ in range(a.rounds):
        for be in secs:
            t = time.perf_counter()
            out = subprocess.run(["agelens", "predict", *truth, "-f", "jsonl", "--backend", be], env=env,
                                 capture_output=True, text=True, check=True).stdout
            secs[be].append(time.perf_counter() - t)
            recs[be] = {r["file"]: r for r in map(json.loads, out.splitlines())}
            print(f"{be}: {secs[be][-1]:.1f} s", flush=True)
    result = {"cpu": cpu_model(), "vnni": bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags()),
              "photos": len(truth), "rounds": a.rounds, "datasets": {}}
    for be, s in secs.items():
        result[be] = {"seconds": [round(x, 2) for x in s], "img_s": round(len(truth) / min(s), 1)}
    result["speedup"] = round(min(secs["onnx"]) / min(secs["onnx-int8"]), 3)
    rng = np.random.default_rng(0)
    for name, rows in files.items():
        ages = {be: {str(p): largest_age(recs[be][str(p)]) for p, _ in rows} for be in secs}
        both = [str(p) for p, _ in rows if all(ages[be][str(p)] is not None for be in secs)]
        e32 = np.array([abs(ages["onnx"][k] - truth[k]) for k in both])
        e8 = np.array([abs(ages["onnx-int8"][k] - truth[k]) for k in both])
        d = e8 - e32
        boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
        change = np.array([abs(ages["onnx-int8"][k] - ages["onnx"][k]) for k in both])
        flags = np.mean([recs["onnx"][k]["faces"][0]["occluded"] == recs["onnx-int8"][k]["faces"][0]["occluded"]
                         for k in both])
        bins = {}
        t = np.array([truth[k] for k in both])
        for lo, hi in BINS:
            m = (t >= lo) & (t <= hi)
            if m.sum():
                bb = [d[m][rng.integers(0, m.sum(), m.sum())].mean() for _ in range(1000)]
                bins[f"{lo}-{hi}"] = {"n": int(m.sum()), "paired": [round(float(x), 3) for x in
                                                                   (d[m].mean(), *np.percentile(bb, [2.5, 97.5]))]}
        result["datasets"][name] = {"paired_per_age_bin": bins,
            "answered": {be: sum(v is not None for v in ages[be].values()) for be in secs}, "n": len(both),
            "mae_fp32": round(float(e32.mean()), 3), "mae_int8": round(float(e8.mean()), 3),
            "paired": [round(float(x), 3) for x in (d.mean(), *np.percentile(boot, [2.5, 97.5]))],
            "change_mean": round(float(change.mean()), 3), "change_p99": round(float(np.quantile(change, 0.99)), 2),
            "occluded_flag_agreement": round(float(flags), 4)}
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
