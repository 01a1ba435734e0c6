"""Compare age heads (CORAL, DLDL, MWR, ...) with the same backbone, split, recipe and budget, side by side.

usage: python benchmarks/compare_heads.py [--config configs/utkface_cpu.yaml] [--heads coral dldl mwr]
                                          [overrides ...]   e.g. data.input_size=112 train.epochs=3
Each head trains as run `heads_<head>` (skipped when its test metrics already exist), then one table is printed
from the runs' test/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/utkface_cpu.yaml")
    ap.add_argument("--heads", nargs="+", default=["coral", "dldl", "mwr"])
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    rows = []
    for h in a.heads:
        run = Path(a.out_dir) / f"heads_{h}"
        metrics = run / "test" / "metrics.json"
        if not metrics.is_file():
            cmd = [sys.executable, "-m", "agelens.cli", "train", "-c", a.config, f"model.head={h}", f"name=heads_{h}",
                   f"out_dir={a.out_dir}", *a.overrides]
            print("running:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        m = json.loads(metrics.read_text())
        rows.append((h, m))
    print(f"\n{'head':10s} {'val MAE':>8s} {'test MAE':>9s} {'CS5':>6s} {'CMAE':>7s} {'bias':>6s}")
    for h, m in rows:
        print(f"{h:10s} {m['best_val_mae']:8.3f} {m['mae']:9.3f} {m['cs5']:6.3f} {m['cmae']:7.3f} {'n/a' if m['bias_score'] is None else format(m['bias_score'], '.2f'):>6s}")


if __name__ == "__main__":
    main()
