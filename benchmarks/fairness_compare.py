"""Fairness recipe vs unbalanced baseline, with one leave-one-out ablation per component, same split and budget.

usage: python benchmarks/fairness_compare.py [--runs runs] [--out docs/fairness_compare] [--rows ...] [overrides ...]
       python benchmarks/fairness_compare.py --trained-elsewhere --runs runs/fairness_gpu --out docs/fairness_gpu

--trained-elsewhere: each trained row's RUNS/<row>/best.pt already exists (benchmarks/gpu_train.py fair trains them from
ImageNet on a GPU machine); it is evaluated on the test cache instead of trained, and the KNN rows index it here.

Budget protocol (CPU): every trained row fine-tunes the 3-epoch 112 px DLDL model runs/heads_dldl for ONE more
epoch with its recipe (same optimiser settings, seed, split splits/utkface_seed0.json and caches cache/utkface);
the baseline is the same extra epoch with the default recipe. KNN rows reuse a trained row's model and only add an
index (`agelens index`, k and w tuned on validation) and an evaluation of the test cache with it.
Rows whose metrics exist are skipped (resumable); every command is printed before it runs. Writes OUT.json + OUT.md.
Overrides after the options go to every training run (e.g. data.max_train=256 data.max_eval=128 for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BASE_CONFIG = "runs/heads_dldl/config.yaml"
RECIPE = "configs/fair_recipe.yaml"
# identical for every trained row: one epoch from runs/heads_dldl at 112 px, same optimiser and schedule
COMMON = ["model.init_from=runs/heads_dldl", "model.pretrained=false", "data.input_size=112", "train.epochs=1",
          "train.lr=0.0002", "train.head_lr=0.0006", "train.warmup_epochs=0.1", "train.scheduler=cosine",
          "train.freeze_backbone_epochs=0", "train.seed=0", "train.batch_size=64",
          "train.numerics=fp32", "train.channels_last=on"]  # as runs/heads_dldl; no per-run probe under varying load


@dataclass
class Row:
    name: str
    label: str
    config: str | None = None  # trained rows: the config; KNN-only rows: None
    overrides: list[str] = field(default_factory=list)
    knn: bool = False
    model_of: str | None = None  # rows without training reuse this row's run

    @property
    def run(self) -> str:
        return self.model_of or self.name


ROWS = [
    Row("reference", "runs/heads_dldl as is (3 epochs, no extra epoch)", model_of="reference"),
    Row("baseline", "baseline: +1 epoch, default recipe", BASE_CONFIG),
    Row("fair", "fair recipe: sampler + CB + KNN loss + attention, + KNN refinement", RECIPE, knn=True),
    Row("fair_no_attention", "fair − region attention", RECIPE, ["model.region_attention=false"], knn=True),
    Row("fair_no_cb", "fair − class-balanced loss", RECIPE, ["fairness.cb_beta=0"], knn=True),
    Row("fair_no_sampler", "fair − balanced sampler (and tail augmentation)", RECIPE,
        ["train.sampler=default", "train.tail_augment=0"], knn=True),
    Row("fair_no_knn", "fair − KNN refinement (the fair model alone)", model_of="fair"),
]
OPTIONAL = [Row("fair_no_knn_loss", "fair − KNN-adjustment loss (γ=0)", RECIPE, ["fairness.gamma_knn=0"], knn=True),
            # group DRO over the age bins on the default recipe (minimises the worst bin's loss, Sagawa et al. 2020)
            Row("baseline_dro", "baseline + group DRO by age bin (η=0.001)", BASE_CONFIG, ["fairness.group_dro=true"]),
            Row("baseline_dro_eta003", "baseline + group DRO by age bin (η=0.003)", BASE_CONFIG,
                ["fairness.group_dro=true", "fairness.dro_eta=0.003"]),
            Row("baseline_dro_eta002", "baseline + group DRO by age bin (η=0.002)", BASE_CONFIG,
                ["fairness.group_dro=true", "fairness.dro_eta=0.002"]),
            Row("baseline_dro_knn", "baseline + group DRO (η=0.001) + KNN refinement", model_of="baseline_dro", knn=True),
            Row("baseline_dro_eta002_knn", "baseline + group DRO (η=0.002) + KNN refinement", model_of="baseline_dro_eta002",
                knn=True),
            Row("baseline_dro_eta003_knn", "baseline + group DRO (η=0.003) + KNN refinement", model_of="baseline_dro_eta003",
                knn=True),
            Row("baseline_group_mean", "baseline + group-balanced mean by age bin (DRO with η=0)", BASE_CONFIG,
                ["fairness.group_dro=true", "fairness.dro_eta=0"]),
            # the shipped teacher's recipe with and without the fairness term (configs/teacher_general.yaml,
            # configs/teacher_fair.yaml; trained with `agelens train`, evaluated here from RUNS/<row>/test)
            Row("teacher_old", "previous shipped teacher (UTKFace only)", model_of="teacher_old"),
            Row("teacher_general_ep1", "teacher recipe after its 1st epoch (UTKFace + AAF, realistic augmentation)",
                model_of="teacher_general_ep1"),
            Row("teacher_fair", "same + group DRO over race × gender within age bins (η=0.003), 1st epoch",
                model_of="teacher_fair"),
            Row("teacher_general", "teacher recipe, both epochs (the shipped teacher)", model_of="teacher_general")]


def sh(cmd: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agelens.cli", *args]


def metrics_path(runs: Path, row: Row) -> Path:
    if row.name == "reference":
        return Path("runs/heads_dldl/test/metrics.json")
    return runs / row.run / ("test_knn" if row.knn else "test") / "metrics.json"


def run_row(row: Row, runs: Path, extra: list[str], elsewhere: bool = False) -> None:
    run = runs / row.run
    if elsewhere and not (run / "test" / "metrics.json").is_file():
        if not (run / "best.pt").is_file():
            raise SystemExit(f"--trained-elsewhere: {run / 'best.pt'} is missing")
        sh(cli("evaluate", "--from-cache", "--model", str(run), "--part", "test", "--output", str(run / "test"),
               "--quiet"))
    elif row.config is not None and not (run / "test" / "metrics.json").is_file():
        resume = ["--resume"] if (run / "last.pt").is_file() else []
        sh(cli("train", "-c", row.config, *resume, f"name={row.name}", f"out_dir={runs}", *COMMON,
               *row.overrides, *extra))
    if row.knn and not (run / "test_knn" / "metrics.json").is_file():
        if not (run / "knn.npz").is_file():
            sh(cli("index", str(run), "--output", str(run / "knn.npz"), "--quiet"))
        sh(cli("evaluate", "--from-cache", "--model", str(run), "--part", "test", "--knn", str(run / "knn.npz"),
               "--output", str(run / "test_knn"), "--quiet"))


def summarise(row: Row, m: dict, runs: Path, elsewhere: dict) -> dict:
    """The table row of one metrics.json; `elsewhere`: RUNS/summary.json of benchmarks/gpu_train.py ({} if none)."""
    ci = m.get("ci95", {})
    def gap(attr: str):  # between groups of 10+ faces (metrics' groups.ATTR.difference); older files: raw max − min
        g = m.get("groups", {}).get(attr)
        if g is not None and "left_out_of_difference" in g:
            return g["difference"]["mae"]
        d = m.get(f"per_{attr}", {})
        return round(max(d.values()) - min(d.values()), 4) if d else None

    out = {"row": row.name, "label": row.label, "n": m["n"], "mae": m["mae"], "mae_ci95": ci.get("mae"),
           "cmae": m["cmae"], "cmae_ci95": ci.get("cmae"), "bias_score": m["bias_score"],
           "bias_ci95": ci.get("bias_score"), "acc5": m["acc5"], "per_bin": m["per_bin"],
           "gender_gap": gap("gender"), "race_gap": gap("race"),
           "knn": m.get("knn"), "metrics": str(metrics_path(runs, row))}
    std = m.get("standardised", {})  # age-standardised group MAE (equal error at equal age), with CIs
    for key, attr in (("std_gender_gap", "gender"), ("std_race_spread", "race")):
        out[key] = std.get(attr, {}).get("spread")
        out[key + "_ci95"] = std.get(attr, {}).get("spread_ci95")
    hist = Path(out["metrics"]).parent.parent / "metrics.jsonl"
    if row.run in elsewhere:
        out["train_s"], out["val_mae"] = elsewhere[row.run].get("seconds"), elsewhere[row.run].get("best_val_mae")
    elif row.config is not None and hist.is_file():
        rows = [json.loads(x) for x in hist.read_text().splitlines() if '"train_s"' in x]
        out["train_s"] = sum(r["train_s"] for r in rows)
        out["val_mae"] = rows[-1].get("val_mae") if rows else None
    return out


PROTOCOL_CPU = ("Every trained row = runs/heads_dldl (3 epochs, 112 px) + ONE epoch with the row's recipe; KNN rows "
                "add an index of the row's training embeddings (k, w tuned on validation).")
PROTOCOL_GPU = ("Every trained row: 20 epochs from ImageNet EfficientNet-Lite0 with the row's recipe, identical schedule "
                "(batch 128, AdamW, cosine, best validation-MAE epoch), trained side by side on one H200 by "
                "`benchmarks/gpu_train.py fair` (128 px WebP copies of the train/val crops, crop 112 = the 256/224/112 "
                "geometry); the baseline is the recipe with sampler, tail augmentation, CB loss, KNN loss and "
                "attention off. Evaluated here on the 256 px test cache; KNN rows add an index of the row's "
                "training embeddings (k, w tuned on validation).")


PROTOCOL_TEACHER = ("Teacher rows: configs/teacher_general.yaml (UTKFace + All-Age-Faces, realistic augmentation, 2 epochs "
                    "at 176 px from the previous teacher) and configs/teacher_fair.yaml (the same + group DRO over "
                    "race × gender within age bins), trained side by side with `agelens train`; the DRO run was "
                    "stopped after its first epoch, so it is compared with the plain recipe's first-epoch checkpoint. "
                    "Each row is its model on the UTKFace test cache (`agelens evaluate --from-cache`).")


def markdown(rows: list[dict], command: str, protocol: str = PROTOCOL_CPU, data: str | None = None) -> str:
    ci = lambda v: f" [{v[0]:.2f}, {v[1]:.2f}]" if v else ""  # noqa: E731
    bins = list(rows[0]["per_bin"]) if rows else []
    lines = [f"# Fairness rows ({data or 'UTKFace, splits/utkface_seed0.json test part'})", "",
             f"Generated by `{command}`. " + protocol + " Intervals: seeded bootstrap 95 %.",
             "Gender/race gap: max − min of the per-group MAE over groups of 10+ faces; std: the same on the "
             "age-standardised MAE (each "
             "group's per-bin MAE weighted by the test's bin shares: equal error at equal age); the last columns are "
             "the per-age-bin MAE.",
             "", "| row | MAE | CMAE | bias score | Acc@5 | gender gap | race gap | std gender gap | std race spread | "
             + " | ".join(bins) + " |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(bins)]
    for r in rows:
        knn = f" (k={r['knn']['k']}, w={r['knn']['w']})" if r.get("knn") else ""
        num = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {r['label']}{knn} | {r['mae']:.3f}{ci(r['mae_ci95'])} | {r['cmae']:.3f} | "
                     f"{num(r['bias_score'])}{ci(r['bias_ci95'])} | {r['acc5']:.3f} | {num(r['gender_gap'])} | "
                     f"{num(r['race_gap'])} | {num(r.get('std_gender_gap'))}{ci(r.get('std_gender_gap_ci95'))} | "
                     f"{num(r.get('std_race_spread'))}{ci(r.get('std_race_spread_ci95'))} | "
                     + " | ".join(num(r["per_bin"].get(b)) for b in bins) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/fairness_compare", help="folder for the rows' runs")
    ap.add_argument("--out", default="docs/fairness_compare", help="writes OUT.json and OUT.md")
    ap.add_argument("--rows", nargs="+", help=f"subset/extra rows: {', '.join(r.name for r in ROWS + OPTIONAL)}")
    ap.add_argument("--trained-elsewhere", action="store_true",
                    help="rows' RUNS/<row>/best.pt exist (benchmarks/gpu_train.py fair): evaluate instead of training")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every training run")
    a = ap.parse_args()
    if a.rows:  # key=value after --rows is an override, not a row name
        a.overrides += [r for r in a.rows if "=" in r]
        a.rows = [r for r in a.rows if "=" not in r] or None
    runs = Path(a.runs)
    known = {r.name: r for r in ROWS + OPTIONAL}
    unknown = [n for n in (a.rows or []) if n not in known]
    if unknown:
        ap.error(f"unknown rows {unknown}")
    chosen = [known[n] for n in a.rows] if a.rows else [r for r in ROWS if not (a.trained_elsewhere and
                                                                                  r.name == "reference")]
    summary = runs / "summary.json"  # benchmarks/gpu_train.py's, for rows trained elsewhere
    elsewhere = json.loads(summary.read_text()) if summary.is_file() else {}
    for need in {r.model_of for r in chosen if r.model_of and r.model_of != "reference"}:
        if need not in [r.name for r in chosen]:
            chosen.insert(0, known[need])
    t0 = time.time()
    results = []
    epochs = next((o.split("=", 1)[1] for o in reversed(a.overrides) if o.startswith("train.epochs=")), "1")
    for row in chosen:
        print(f"== {row.name}: {row.label}", flush=True)
        mp = metrics_path(runs, row)
        if mp.is_file():
            print(f"   metrics exist: {mp} (skipped)", flush=True)
        else:
            run_row(row, runs, a.overrides, a.trained_elsewhere)
        results.append(summarise(row, json.loads(mp.read_text()), runs, elsewhere))
        if epochs != "1":  # the rows' labels describe the one-epoch protocol
            results[-1]["label"] = results[-1]["label"].replace("+1 epoch", f"+{epochs} epochs")
        if a.trained_elsewhere and row.name == "baseline":
            results[-1]["label"] = "baseline: default recipe (no sampler, CB loss, KNN loss, attention)"
    from agelens.utils import atomic_write_json, atomic_write_text

    teacher_rows = all(r.name.startswith("teacher_") for r in chosen)
    atomic_write_json(f"{a.out}.json", {"protocol": PROTOCOL_TEACHER if teacher_rows else
                                        PROTOCOL_GPU if a.trained_elsewhere else __doc__,
                                        "common_overrides": [] if a.trained_elsewhere or teacher_rows else COMMON,
                                        "extra_overrides": a.overrides,
                                        "rows": results, "wall_s": round(time.time() - t0, 1)})
    protocol = PROTOCOL_GPU if a.trained_elsewhere else PROTOCOL_CPU
    if teacher_rows:
        protocol = PROTOCOL_TEACHER
    elif not a.trained_elsewhere and epochs != "1":
        protocol = protocol.replace("ONE epoch", f"{epochs} epochs (train.epochs override)")
    data = [o for o in a.overrides if o.startswith("data.")]  # the title names the data the rows were run on
    md = markdown(results, " ".join(["python benchmarks/fairness_compare.py", *sys.argv[1:]]), protocol,
                  f"data as overridden: {', '.join(data)}" if data else None)
    atomic_write_text(f"{a.out}.md", md)
    print(md)


if __name__ == "__main__":
    main()
