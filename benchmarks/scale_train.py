"""Sharded (streamed WebDataset) training vs the memory-mapped cache path: same faces, same seeds, same recipe.

    python benchmarks/scale_train.py --n 1600 --seeds 0 1 --epochs 2 --ddp --json docs/scale_train.json
    python benchmarks/scale_train.py --n 1600 --seeds 0 --epochs 2 --ddp --ddp-cache --ddp-only --shard-size 40 \
        --json docs/scale_train_ddp.json
    python benchmarks/scale_train.py --n 1600 --seeds 0 --epochs 2 --ddp --ddp-only --json docs/scale_train_ddp200.json

Takes a seeded subset of UTKFace (a CSV of absolute paths under --root; nothing is copied), runs
`agelens prepare --shards` once (memory-mapped caches + WebDataset shards of the same faces), then per seed
`agelens train` on the cache and `agelens train data.shards=...` on the shards, and with --ddp a 2-process torchrun
(gloo, CPU) run on the shards. Reports every run's validation MAE per epoch, test MAE and training img/s.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RECIPE = ["data.dataset=csv", "data.groups_csv=null", "data.cache_size=128", "data.crop_size=112",
          "data.input_size=96", "train.warmup_epochs=0.2", "train.early_stop_patience=0",
          "train.log_every=10", "train.numerics=fp32"]


def subset_csv(root: str, groups: str | None, n: int, seed: int, out: Path) -> Path:
    from agelens.data.adapters import load_dataset

    recs = load_dataset("utkface", root, groups_csv=groups).records
    pick = np.random.default_rng(seed).choice(len(recs), n, replace=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "age", "gender", "race", "group"])
        for i in sorted(pick):
            r = recs[i]
            w.writerow([str(Path(r.path).resolve()), r.age, r.gender or "", r.race or "", r.group])
    return out


def sh(cmd: list[str], env: dict | None = None) -> float:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - t0


def summary(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "train_loss" in r]
    test = json.loads((run_dir / "test" / "metrics.json").read_text())
    return {"val_mae": [r["val_mae"] for r in epochs], "best_val_mae": min(r["val_mae"] for r in epochs),
            "test_mae": round(test["mae"], 4), "train_img_s": [r["train_img_s"] for r in epochs],
            "steps": [r["steps"] for r in rows if "steps" in r][-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="../shared/data/utkface")
    ap.add_argument("--groups", default="../shared/data/utkface_duplicate_groups.csv")
    ap.add_argument("--n", type=int, default=1600)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", default="cache/scale", help="subset CSV, split, caches and shards (gitignored)")
    ap.add_argument("--runs", default="runs/scale")
    ap.add_argument("--ddp", action="store_true", help="also 2-process torchrun runs (first seed): the shards and, "
                    "with --ddp-cache, the cache path")
    ap.add_argument("--ddp-cache", action="store_true")
    ap.add_argument("--ddp-only", action="store_true", help="skip the single-process runs")
    ap.add_argument("--shard-size", type=int, default=200, help="data.shard_size (faces per shard)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    work = Path(args.work)
    table = subset_csv(args.root, args.groups, args.n, 0, work / f"utk{args.n}.csv")
    shards = work / ("shards" if args.shard_size == 200 else f"shards{args.shard_size}")
    base = ["-c", "configs/utkface_cpu.yaml", *RECIPE, f"data.shard_size={args.shard_size}", f"data.root={table}",
            f"data.split_file={work}/split.json",
            f"data.cache_dir={work}/cache", f"train.epochs={args.epochs}", f"out_dir={args.runs}"]
    cli = [sys.executable, "-m", "agelens.cli"]
    out: dict = {"command": " ".join(sys.argv), "recipe": base, "prepare_s": round(
        sh([*cli, "prepare", "--workers", "2", "--shards", str(shards), *base]), 1), "runs": []}
    for seed in [] if args.ddp_only else args.seeds:
        for kind, extra in (("cache", []), ("shards", [f"data.shards={shards}"])):
            name = f"{kind}_s{seed}"
            cmd = [*cli, "train", "--quiet", *base, *extra, f"train.seed={seed}", f"name={name}"]
            wall = sh(cmd)
            out["runs"].append({"path": kind, "seed": seed, "ranks": 1, "wall_s": round(wall, 1),
                                "command": " ".join(cmd[1:]), **summary(Path(args.runs) / name)})
            print(json.dumps(out["runs"][-1]), file=sys.stderr)
    if args.ddp:
        seed = args.seeds[0]
        for kind, extra in (("cache", []), ("shards", [f"data.shards={shards}"]))[0 if args.ddp_cache else 1:]:
            name = f"{kind}{args.shard_size if kind == 'shards' else ''}_ddp2_s{seed}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                   "agelens.cli", "train", "--quiet", *base, *extra, f"train.seed={seed}", "train.threads=1",
                   f"name={name}"]
            wall = sh(cmd, {"OMP_NUM_THREADS": "1"})
            out["runs"].append({"path": kind, "seed": seed, "ranks": 2, "shard_size": args.shard_size,
                                "wall_s": round(wall, 1),
                                "command": " ".join(cmd[1:]), **summary(Path(args.runs) / name)})
    print("| path | ranks | seed | val MAE per epoch | best val MAE | test MAE | steps/epoch | train img/s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in out["runs"]:
        print(f"| {r['path']} | {r['ranks']} | {r['seed']} | {', '.join(f'{v:.3f}' for v in r['val_mae'])} | "
              f"{r['best_val_mae']:.3f} | {r['test_mae']:.3f} | {r['steps']} | "
              f"{', '.join(str(v) for v in r['train_img_s'])} | {r['wall_s']} |")
    if args.json:
        from agelens.utils import atomic_write_json

        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
