"""Compare backbones (EfficientNet-Lite0/1/2, ...) with the same data, recipe, input size and step budget, side by side.

usage: python benchmarks/compare_backbones.py [--config configs/teacher_160.yaml] [--steps 300]
           [--backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2] [--out docs/backbones] [overrides ...]

Each backbone trains from its ImageNet weights as run `backbones_<backbone>` (skipped when its test metrics exist):
one cosine epoch capped at --steps shuffled batches, so every arm sees the same faces in the same order. Then each
best checkpoint is exported to ONNX (single view, no guard heads) and timed with onnxruntime, interleaved round by
round in one process, at batch 1 and batch 32. Writes OUT.json and OUT.md: parameters, ms per face, train time,
validation and test MAE per dataset.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RECIPE = ["model.pretrained=true", "model.init_from=null", "train.epochs=1", "train.lr=0.0006",
          "train.head_lr=0.002", "train.warmup_epochs=0.1"]


def train_arm(cfg: str, backbone: str, steps: int, out_dir: str, overrides: list[str]) -> Path:
    run = Path(out_dir) / f"backbones_{backbone}"
    if not (run / "test" / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "agelens.cli", "train", "-c", cfg, f"name=backbones_{backbone}",
               f"out_dir={out_dir}", f"model.backbone={backbone}", f"train.max_steps_per_epoch={steps}", *RECIPE,
               *overrides]
        print("running:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return run


def time_onnx(runs: dict[str, Path], rounds: int, threads: int) -> dict[str, dict]:
    """ms per face at batch 1 and batch 32, median over interleaved rounds (each round times every model once)."""
    from agelens.export.onnx import export_model
    from agelens.inference.backends.onnx import OnnxModel

    rng = np.random.default_rng(0)
    models, out = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for bb, run in runs.items():
            path = Path(tmp) / f"{bb}.onnx"
            export_model(str(run / "best.pt"), path, tta=False, guards=False)
            models[bb] = OnnxModel(path, threads=threads)
        size = {m.input_size for m in models.values()}
        if len(size) != 1:
            raise SystemExit(f"the arms read different input sizes {sorted(size)}: compare at one size")
        s = size.pop()
        one, batch = (rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8) for n in (1, 32))
        times = {bb: {"b1": [], "b32": []} for bb in models}
        for m in models.values():  # warm-up: session creation and first runs
            for _ in range(3):
                m.run(one)
            m.run(batch)
        for _ in range(rounds):
            for bb, m in models.items():
                t = time.perf_counter()
                for _ in range(20):
                    m.run(one)
                times[bb]["b1"].append((time.perf_counter() - t) / 20 * 1000)
                t = time.perf_counter()
                m.run(batch)
                times[bb]["b32"].append((time.perf_counter() - t) / 32 * 1000)
        for bb in models:
            out[bb] = {"input_size": s, "ms_per_face_b1": round(statistics.median(times[bb]["b1"]), 2),
                       "ms_per_face_b32": round(statistics.median(times[bb]["b32"]), 2)}
    return out


def summarise(bb: str, run: Path) -> dict:
    from agelens.models.checkpoint import model_from_checkpoint

    test = json.loads((run / "test" / "metrics.json").read_text())
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    ep = [h for h in hist if "train_s" in h][-1]
    model, _ = model_from_checkpoint(run / "best.pt")
    row = {"backbone": bb, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "train_s": ep["train_s"], "train_img_s": ep["train_img_s"], "val_mae": ep.get("val_mae"),
           "test_mae": test["mae"], "test_mae_ci95": test.get("ci95", {}).get("mae"), "test_cs5": test["cs5"],
           "test_cmae": test["cmae"]}
    for other in sorted(run.glob("test_*/metrics.json")):
        row[f"{other.parent.name}_mae"] = json.loads(other.read_text())["mae"]
    return row


def paired(first: Path, run: Path, part: str, n_boot: int = 2000) -> list[float]:
    """Mean paired change in absolute error (run - first) on the same test faces, with a 95 % bootstrap interval."""
    import pandas as pd

    a, b = (pd.read_csv(r / part / "predictions.csv") for r in (first, run))
    m = a.merge(b, on="path", suffixes=("_a", "_b"))
    d = (m["abs_error_b"] - m["abs_error_a"]).to_numpy()
    rng = np.random.default_rng(0)
    boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)]
    return [round(float(d.mean()), 3), *(round(float(x), 3) for x in np.percentile(boot, [2.5, 97.5]))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/teacher_160.yaml")
    ap.add_argument("--backbones", nargs="+",
                    default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    ap.add_argument("--steps", type=int, default=300, help="training batches per arm (one cosine epoch capped here)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--out", default="docs/backbones")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    runs = {bb: train_arm(a.config, bb, a.steps, a.out_dir, a.overrides) for bb in a.backbones}
    rows = [summarise(bb, run) for bb, run in runs.items()]
    speed = time_onnx(runs, a.rounds, a.threads)
    base = rows[0]["backbone"]
    first = runs[base]
    for r in rows:
        r.update(speed[r["backbone"]])
        r["paired_vs_first"] = {p.name: paired(first, runs[r["backbone"]], p.name)
                                for p in sorted(first.glob("test*")) if (p / "predictions.csv").is_file()}
        r["speed_vs_first_b1"] = round(speed[base]["ms_per_face_b1"] / r["ms_per_face_b1"], 3)
    result = {"config": a.config, "steps": a.steps, "recipe": RECIPE + a.overrides, "threads": a.threads,
              "rounds": a.rounds, "rows": rows}
    from agelens.utils import atomic_write_json, atomic_write_text

    atomic_write_json(Path(a.out + ".json"), result)
    other = sorted({k for r in rows for k in r if k.startswith("test_") and k.endswith("_mae") and k != "test_mae"})
    head = ["backbone", "params (M)", "ms/face b1", "ms/face b32", "train s", "val MAE", "test MAE [95 % CI]", "CS5",
            "CMAE", *[k.removeprefix("test_").removesuffix("_mae") + " test MAE" for k in other]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ci = r["test_mae_ci95"]
        ci = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        cells = [r["backbone"], f"{r['params_m']:.2f}", f"{r['ms_per_face_b1']:.2f}", f"{r['ms_per_face_b32']:.2f}",
                 f"{r['train_s']:.0f}", f"{r['val_mae']:.3f}", f"{r['test_mae']:.3f}{ci}", f"{r['test_cs5']:.3f}",
                 f"{r['test_cmae']:.3f}", *[f"{r[k]:.3f}" for k in other]]
        lines.append("| " + " | ".join(cells) + " |")
    parts = sorted({k for r in rows for k in r["paired_vs_first"]})
    lines += ["", f"Paired change in absolute error against {base} on the same test faces (mean [95 % bootstrap CI]):",
              "", "| backbone | " + " | ".join(parts) + " |", "|" + "---|" * (len(parts) + 1)]
    for r in rows[1:]:
        lines.append(f"| {r['backbone']} | " + " | ".join(
            "{:+.3f} [{:+.3f}, {:+.3f}]".format(*r["paired_vs_first"][p]) for p in parts) + " |")
    md = (f"# Backbones side by side\n\n`python benchmarks/compare_backbones.py --config {a.config} --steps {a.steps}`"
          f"\n\nSame data, order, input size ({rows[0]['input_size']} px) and recipe ({' '.join(RECIPE + a.overrides)},"
          f" {a.steps} batches); ONNX single view, {a.threads} threads, median of {a.rounds} interleaved rounds.\n\n"
          + "\n".join(lines) + "\n")
    atomic_write_text(Path(a.out + ".md"), md)
    print(md)


if __name__ == "__main__":
    main()
