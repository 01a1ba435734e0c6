"""Scale-out benchmark: the local engine and the Ray engine with 1 and 2 model actors on the same images, one run.

    python benchmarks/scale.py --images ../shared/data/utkface --n 200 --repeat 3 --json docs/scale_benchmark.json

Rows: `local` (predict_many engine="local", --workers 1: one detection process + the models in this process),
`ray-1` / `ray-2` (engine="ray" on a fresh local Ray: 1 or 2 actors, each the whole pipeline; the local Ray gets
max(cores, actors) CPUs, as `agelens predict --engine ray` starts it). For each: wall time including
start-up (Ray start, actor model loading), time to the first record and img/s after it, mean detect ms per
image and model ms per face (the records' own timings), and per file the largest age difference to the local
engine. Also the driver's sink rates (records/s into JSONL, fsync per line, and Parquet), which bound a cluster run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def pick_images(folder: str, n: int, seed: int) -> list[str]:
    from agelens.inference.inputs import expand_inputs

    files = expand_inputs([folder])
    if len(files) < n:
        raise SystemExit(f"{folder} has {len(files)} images, fewer than --n {n}")
    rng = np.random.default_rng(seed)
    return sorted(files[i] for i in rng.choice(len(files), n, replace=False))


def run(files: list[str], engine: str, workers: int, est, backend: str, batch_size: int) -> tuple[dict, list[dict]]:
    from agelens import predict_many

    t0 = time.perf_counter()
    stamps, recs = [], []
    for r in predict_many(files, engine, workers=workers, estimator=est, backend=backend, batch_size=batch_size):
        stamps.append(time.perf_counter())
        recs.append(r)
    wall = time.perf_counter() - t0
    faces = [f for r in recs for f in r["faces"]]
    # after the first record: the models are loaded and the pipeline is full. (Ray detects files while its actors
    # start and buffers records, so rates over shorter windows at the driver come in bursts and overstate it.)
    after = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None
    det = [f["timing"]["detect_ms"] for r in recs for f in r["faces"][:1]]
    model = [f["timing"]["model_ms"] / len(r["faces"]) for r in recs for f in r["faces"][:1]]
    return {"engine": engine, "workers": workers, "files": len(recs), "faces": len(faces),
            "errors": sum(r["error"] is not None for r in recs), "wall_s": round(wall, 2),
            "img_s_wall": round(len(recs) / wall, 2), "img_s_after_first": round(after, 2) if after else None,
            "first_record_s": round(stamps[0] - t0, 2) if stamps else None,
            "detect_ms_per_img": round(float(np.mean(det)), 1) if det else None,
            "model_ms_per_face": round(float(np.mean(model)), 1) if model else None}, recs


def max_age_diff(a: list[dict], b: list[dict]) -> tuple[float, bool]:
    """Largest |age difference| over matching faces, and whether files, keys, face counts and errors agree."""
    ka, kb = {r["file"]: r for r in a}, {r["file"]: r for r in b}
    same = sorted(ka) == sorted(kb)
    worst = 0.0
    for f in ka.keys() & kb.keys():
        fa, fb = ka[f]["faces"], kb[f]["faces"]
        same &= set(ka[f]) == set(kb[f]) and len(fa) == len(fb) and ka[f]["error"] == kb[f]["error"]
        for x, y in zip(fa, fb):
            same &= set(x) == set(y)
            worst = max(worst, abs(x["age"] - y["age"]))
    return worst, same


def sink_rate(records: list[dict], fmt: str, repeat: int = 10) -> float:
    """Records/s the driver's sink takes (JSONL: fsync per line; Parquet: a part per 1000 records)."""
    from agelens.inference.stream import open_sink

    with tempfile.TemporaryDirectory() as d:
        sink = open_sink(Path(d) / f"s.{fmt}", fmt)
        t0 = time.perf_counter()
        for _ in range(repeat):
            for r in records:
                sink.write(r)
        sink.close()
        return len(records) * repeat / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="../shared/data/utkface")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="auto", help="auto | torch | onnx ...")
    ap.add_argument("--batch-size", type=int, default=16, help="files per model batch (small: records stream)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved tries per row; the best is reported")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import ray

    from agelens import AgeEstimator

    files = pick_images(args.images, args.n, args.seed)
    est = AgeEstimator.from_pretrained(backend=args.backend, log=lambda m: print(m, file=sys.stderr))
    configs = (("local", 1), ("ray", 1), ("ray", 2))
    tries: dict = {c: [] for c in configs}
    recs: dict = {}
    for _ in range(args.repeat):  # interleaved, so load from other work on the machine hits every row alike
        for engine, workers in configs:
            row, recs[(engine, workers)] = run(files, engine, workers, est, args.backend, args.batch_size)
            assert not ray.is_initialized()  # every Ray row starts (and pays for) its own local Ray
            tries[(engine, workers)].append(row)
            print(json.dumps(row), file=sys.stderr)
    rows = []
    for c in configs:  # the best try of each row (least disturbed), with every try's rates kept
        best = max(tries[c], key=lambda r: r["img_s_wall"])
        rows.append({**best, "tries_img_s_wall": [r["img_s_wall"] for r in tries[c]],
                     "tries_img_s_after_first": [r["img_s_after_first"] for r in tries[c]]})
    local = recs[("local", 1)]
    for row in rows:
        diff, same = max_age_diff(recs[(row["engine"], row["workers"])], local)
        row["max_age_diff_vs_local"], row["same_records_as_local"] = round(diff, 4), same
        row["ratio_after_first_vs_local"] = round(row["img_s_after_first"] / rows[0]["img_s_after_first"], 2)
        row["ratio_wall_vs_local"] = round(row["img_s_wall"] / rows[0]["img_s_wall"], 2)
    out = {"command": " ".join(sys.argv), "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "repeat": args.repeat, "images": args.images, "n": len(files), "seed": args.seed, "backend": est.backend,
           "batch_size": args.batch_size, "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
           "ray": ray.__version__, "rows": rows,
           "sink_records_per_s": {fmt: round(sink_rate(local, fmt), 1) for fmt in ("jsonl", "parquet")}}
    print("| engine | workers | files | faces | errors | wall s | img/s (wall) | × local (wall) | first record s | "
          "img/s after it | detect ms/img | model ms/face | max abs age diff vs local | same records |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['workers']} | {r['files']} | {r['faces']} | {r['errors']} | {r['wall_s']} | "
              f"{r['img_s_wall']} | {r['ratio_wall_vs_local']} | {r['first_record_s']} | {r['img_s_after_first']} | "
              f"{r['detect_ms_per_img']} | {r['model_ms_per_face']} | {r['max_age_diff_vs_local']} | "
              f"{r['same_records_as_local']} |")
    print(f"driver sink records/s: {out['sink_records_per_s']} (JSONL: fsync per line; Parquet: a part per 1000)")
    if args.json:
        from agelens.utils import atomic_write_json

        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
