"""How far can the bias score (max − min per-age-bin MAE) fall on UTKFace? Three measurements from files already there.

usage: python benchmarks/fairness_bounds.py [--predictions CSV ...] [--metrics-glob GLOB] [--out docs/fairness_bounds]

1. Label disagreement: every pair of images in one group of the duplicate-groups CSV shows the same face (exact or
   near copies) with two age labels. For any prediction p, |p − a| + |p − b| >= |a − b|, so on those images no
   model can have an MAE below half the mean disagreement; reported per age bin (bin of the pair's mean age).
2. Oracle shift: for each predictions.csv (test part), the bias score after subtracting, in every age bin, that
   bin's median signed error, using the true bin (which no deployed model knows): an upper bound on what any
   post-hoc calibration of the outputs can remove. What is left is spread, not shift.
3. Bias vs accuracy: MAE and bias score of every clean test evaluation of the same test faces found under runs/
   (metrics.json with the same n), the least-squares ratio bias ≈ r·MAE through the origin, and the MAE that ratio
   implies for a 30 % lower bias score than the baseline's.
Writes OUT.json, OUT.md and OUT.png (scatter of part 3).
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from agelens.data.adapters import load_duplicate_groups
from agelens.evaluate.metrics import AGE_BINS, age_bin, per_bin_mae
from agelens.utils import atomic_write_json, atomic_write_text

BINS = [b for b, _, _ in AGE_BINS]
BASELINE = "runs/fairness_gpu/baseline/test/predictions.csv"
DEFAULT_PREDICTIONS = [BASELINE, "runs/utkface_cpu_effnet_dldl_176/test/predictions.csv"]


def label_disagreement(groups_csv: str | Path) -> dict[str, dict]:
    """Per age bin: pairs of same-group images, mean |age difference|, share of pairs that differ, MAE lower bound."""
    members: dict[str, list[float]] = {}
    for file, group in load_duplicate_groups(groups_csv).items():  # UTKFace names start with AGE_
        members.setdefault(group, []).append(float(file.split("_")[0]))
    rows = [(age_bin((a + b) / 2), abs(a - b)) for ages in members.values() for a, b in itertools.combinations(ages, 2)]
    pairs = pd.DataFrame(rows, columns=["bin", "diff"])
    out = {}
    for b in BINS:
        x = pairs.loc[pairs["bin"] == b, "diff"]
        if len(x):
            out[b] = {"pairs": int(len(x)), "mean_abs_diff": round(float(x.mean()), 3),
                      "share_differ": round(float((x > 0).mean()), 3), "mae_floor": round(float(x.mean()) / 2, 3)}
    return out


def oracle_shift(csv: str | Path) -> dict:
    """Bias score of a predictions.csv before and after removing every true age bin's median signed error."""
    d = pd.read_csv(csv)
    true, pred = d["age"].to_numpy(float), d["pred"].to_numpy(float)
    bins = np.array([age_bin(a) for a in true])
    shifted = pred.copy()
    for b in set(bins):
        m = bins == b
        shifted[m] -= np.median(pred[m] - true[m])
    before, after = per_bin_mae(pred, true), per_bin_mae(shifted, true)
    gap = lambda x: max(x.values()) - min(x.values())  # noqa: E731
    return {"n": int(len(d)), "mae": round(float(np.abs(pred - true).mean()), 3),
            "bias": round(gap(before), 3), "bias_oracle_shift": round(gap(after), 3),
            "change": round(gap(after) / gap(before) - 1, 4),
            "per_bin": {k: round(v, 2) for k, v in before.items()},
            "per_bin_oracle_shift": {k: round(v, 2) for k, v in after.items()}}


def accuracy_vs_bias(pattern: str, n: int) -> list[dict]:
    """(run, MAE, bias) of every clean (not occluded) test metrics.json with n faces."""
    out = []
    for p in sorted(glob.glob(pattern, recursive=True)):
        m = json.loads(Path(p).read_text())
        if m.get("n") == n and "occlusion" not in m and "bias_score" in m:
            out.append({"metrics": p, "mae": m["mae"], "bias": m["bias_score"]})
    return out


def plot(points: list[dict], ratio: float, base: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    x = np.array([p["mae"] for p in points])
    ax.scatter(x, [p["bias"] for p in points], s=18, label="trained models (test part)")
    xs = np.linspace(0, x.max() * 1.05, 50)
    ax.plot(xs, ratio * xs, "k--", lw=1, label=f"bias = {ratio:.2f} × MAE")
    target = 0.7 * base["bias"]
    ax.axhline(target, color="tab:red", lw=1, label=f"target: 0.7 × baseline bias = {target:.2f}")
    ax.scatter([base["mae"]], [base["bias"]], color="tab:red", marker="*", s=120, label="baseline")
    ax.set_xlim(3, x.max() * 1.05)
    ax.set_ylim(3, max(p["bias"] for p in points) * 1.05)
    ax.set_xlabel("MAE (years)")
    ax.set_ylabel("bias score = max − min bin MAE (years)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def markdown(res: dict, command: str) -> str:
    dis, orc, acc = res["label_disagreement"], res["oracle_shift"], res["accuracy_vs_bias"]
    lines = ["# How far can the bias score fall here?", "", f"`{command}` (see the script's docstring for the method)",
             "", "## 1. Label disagreement between copies of the same face (duplicate-groups CSV)", "",
             "| age bin | pairs | mean abs age difference | pairs that differ | MAE floor on these images |",
             "|---|---|---|---|---|"]
    lines += [f"| {b} | {v['pairs']} | {v['mean_abs_diff']:.2f} | {v['share_differ']:.0%} | {v['mae_floor']:.2f} |"
              for b, v in dis.items()]
    lines += ["", "## 2. Bias score after an oracle per-bin shift (true bin's median signed error removed)", "",
              "| predictions | MAE | bias score | after oracle shift | change |", "|---|---|---|---|---|"]
    lines += [f"| `{k}` | {v['mae']:.3f} | {v['bias']:.3f} | {v['bias_oracle_shift']:.3f} | {v['change']:+.1%} |"
              for k, v in orc.items()]
    lines += ["", "## 3. Bias score against MAE over every trained model evaluated on the same test faces", "",
              f"{len(acc['points'])} evaluations; least-squares bias ≈ {acc['ratio']:.3f} × MAE (through the origin, "
              f"residual std {acc['residual_std']:.3f}). Baseline `{acc['baseline']}`: MAE {acc['baseline_mae']:.3f}, "
              f"bias {acc['baseline_bias']:.3f}; a 30 % lower bias score ({acc['target_bias']:.3f}) at this ratio "
              f"needs MAE ≈ {acc['mae_needed']:.2f} ({acc['mae_needed'] / acc['baseline_mae'] - 1:+.0%}).", "",
              "![bias vs MAE](fairness_bounds.png)", "", "| metrics.json | MAE | bias score |", "|---|---|---|"]
    lines += [f"| `{p['metrics']}` | {p['mae']:.3f} | {p['bias']:.3f} |" for p in acc["points"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictions", nargs="+", default=DEFAULT_PREDICTIONS, help="test predictions.csv files")
    ap.add_argument("--groups-csv", default="../shared/data/utkface_duplicate_groups.csv")
    ap.add_argument("--metrics-glob", default="runs/**/test*/metrics.json")
    ap.add_argument("--out", default="docs/fairness_bounds")
    a = ap.parse_args()
    for p in [*a.predictions, a.groups_csv]:
        if not Path(p).is_file():
            sys.exit(f"error: {p} not found")
    orc = {p: oracle_shift(p) for p in a.predictions}
    base = orc[a.predictions[0]]
    points = accuracy_vs_bias(a.metrics_glob, base["n"])
    if len(points) < 2:
        sys.exit(f"error: fewer than 2 clean test metrics with n={base['n']} match {a.metrics_glob}")
    x, y = np.array([p["mae"] for p in points]), np.array([p["bias"] for p in points])
    ratio = float(x @ y / (x @ x))
    target = 0.7 * base["bias"]
    acc = {"points": points, "ratio": round(ratio, 4), "residual_std": round(float(np.std(y - ratio * x)), 4),
           "baseline": a.predictions[0], "baseline_mae": base["mae"], "baseline_bias": base["bias"],
           "target_bias": round(target, 3), "mae_needed": round(target / ratio, 3)}
    res = {"label_disagreement": label_disagreement(a.groups_csv), "oracle_shift": orc, "accuracy_vs_bias": acc}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), res)
    plot(points, ratio, base, out.with_suffix(".png"))
    md = markdown(res, " ".join(["python benchmarks/fairness_bounds.py", *sys.argv[1:]]))
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
