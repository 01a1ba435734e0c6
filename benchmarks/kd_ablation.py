"""KD ablations at a small CPU budget (paper 1's ablations, scaled down): which stages are distilled, feature
alignment none / residual (teacher-free) / concat (paper form, F_s in place of F_t at test), the occlusion mix
(Table 7), the head (CORAL / DLDL / MWR), each against direct fine-tuning on occluded faces without KD.

Protocol: teachers are the 112 px, 3-epoch head runs of `benchmarks/compare_heads.py` (runs/heads_<head>); every
variant sees the first --train training faces, 1 epoch per distilled stage, --ft epochs of global fine-tuning; test
= the first --n test faces, clean and 100 % occluded (Table 7 mix, seed 0).

    python benchmarks/kd_ablation.py --rows kd_residual,kd_none,kd_concat,kd_stages34,direct --out docs/kd_ablation
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from agelens.data.cache import FaceCache
from agelens.evaluate.runner import evaluate_estimator
from agelens.inference.backends.torch import TorchModel
from agelens.inference.predictor import AgeEstimator
from agelens.occlusion.synth import PAPER_MIX, OcclusionMix
from agelens.utils import atomic_write_json, atomic_write_text

# name: (command, head, overrides)
ROWS = {
    "kd_residual": ("distill", "dldl", ["model.align=residual"]),
    "kd_none": ("distill", "dldl", ["model.align=none"]),
    "kd_concat": ("distill", "dldl", ["model.align=concat"]),
    "kd_stages34": ("distill", "dldl", ["model.align=residual", "distill.stages=[3,4]"]),
    "kd_no_finetune": ("distill", "dldl", ["model.align=residual", "distill.finetune=false"]),
    "direct": ("train", "dldl", []),
    "kd_mix_glasses_only": ("distill", "dldl", ["model.align=residual", "occlusion.mix={sunglasses: 1.0}"]),
    "kd_mix_blocks_only": ("distill", "dldl", ["model.align=residual",
                                               "occlusion.mix={eye_block: 0.35, mouth_block: 0.35, eye+mouth_block: 0.3}"]),
    "kd_residual_coral": ("distill", "coral", ["model.align=residual"]),
    "direct_coral": ("train", "coral", []),
    "kd_residual_mwr": ("distill", "mwr", ["model.align=residual"]),
    "direct_mwr": ("train", "mwr", []),
    "kd_residual_resnet34": ("distill", "dldl", ["model.align=residual", "model.backbone=resnet34"]),
    "direct_resnet34": ("train", "dldl", ["model.backbone=resnet34"]),
}


TRAIN_FACES, FT_EPOCHS = 3000, 1  # the protocol's defaults (--train, --ft)
CONDITIONS = {"clean": 0.0, "half": 0.5, "occluded": 1.0}  # share of occluded test faces (paper Table 1 columns)
GPU_SUFFIX = "@gpu"  # rows trained by benchmarks/gpu_train.py are stored under name@gpu


def teacher_run(name: str) -> str:
    """The teacher of a row: runs/heads_<head>, or runs/heads_resnet34_dldl for the ResNet-34 rows."""
    name = name.removesuffix(GPU_SUFFIX)
    return "runs/heads_resnet34_dldl" if name.endswith("resnet34") else f"runs/heads_{ROWS[name][1]}"


def resnet34_section(path: Path) -> list[str]:
    """The ResNet-34 rows, trained and evaluated on the GPU machine (`benchmarks/gpu_train.py resnet34`; their fp16
    weights, 43 MB each, could not come back), from OUT_resnet34.json when present."""
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    t, rows = d["teacher"], d["rows"]
    lines = ["", "## Backbone: ResNet-34 (from scratch)", "",
             f"Teacher: ResNet-34 from scratch, DLDL, 112 px, 3 epochs on all training faces (validation MAE "
             f"{t['best_val_mae']:.2f}, {t['seconds']:.0f} s on an H200), then `kd_residual_resnet34` and "
             "`direct_resnet34` with the arguments above. Trained and evaluated there by `benchmarks/gpu_train.py "
             f"resnet34` ({path.name}); test: the {d['test']['faces']} — the same faces as the table above, but its "
             "EfficientNet rows were evaluated on the 256 px crops, so compare within this table.", "",
             "| variant | clean MAE | occluded MAE | occluded CS5 | val MAE (occluded) after each stage |",
             "|---|---|---|---|---|"]
    for name, m in d["test"]["mae"].items():
        hist = rows.get(name, {}).get("distill_history") or []
        stages = ", ".join(f"{h['val_mae_occluded']:.2f}" for h in hist if "val_mae_occluded" in h)
        lines.append(f"| {name} | {m['clean']['mae']:.3f} | {m['occluded']['mae']:.3f} | {m['occluded']['cs5']:.3f} | "
                     f"{stages} |")
    return lines


def evaluate_conditions(est, cache, n: int, done: dict, as_row: bool = True, conditions=tuple(CONDITIONS)) -> dict:
    """MAE (and CS5) of `est` on the first n test faces under each of `conditions` missing from `done` (no
    bootstrap intervals or group report: only these numbers are kept)."""
    out = dict(done)
    for cond in conditions:
        if cond in out:
            continue
        share = CONDITIONS[cond]
        occ = OcclusionMix(dict(PAPER_MIX), 1 - share) if share else None
        m = evaluate_estimator(est, cache, None, occlusion=occ, seed=0, progress=False, max_eval=n, bootstrap=0,
                               groups=False)
        out[cond] = {"n": m["n"], "mae": round(m["mae"], 3), "cs5": round(m["cs5"], 3)} if as_row else round(m["mae"], 3)
    return out


def student_estimator(name: str, model: str | Path) -> AgeEstimator:
    """Row `name`'s student (weights at `model`) answering every face, behind its teacher."""
    return AgeEstimator(TorchModel.load(teacher_run(name)), TorchModel.load(str(model)), route="student")


def row_args(name: str, train: int, ft: int, runs: str) -> tuple[list[str], Path]:
    """The `agelens` arguments that train row `name`, and the checkpoint they leave (stages.pt without global
    fine-tuning, else best.pt)."""
    cmd, head, extra = ROWS[name]
    teacher = teacher_run(name)
    run_name = f"{Path(runs).name}_{name}"
    common = [f"name={run_name}", f"out_dir={Path(runs).parent}", "data.input_size=112", f"data.max_train={train}",
              "data.max_eval=500", f"train.epochs={ft}", "train.log_every=1000", f"model.head={head}"]
    if cmd == "distill":
        args = ["distill", "-c", "configs/student_cpu.yaml", *common, f"distill.teacher={teacher}",
                "distill.stage_epochs=1", *extra]
    else:
        args = ["train", "-c", "configs/direct_occluded_cpu.yaml", *common, f"model.init_from={teacher}", *extra]
    return args, Path(runs).parent / run_name / ("stages.pt" if "distill.finetune=false" in extra else "best.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="kd_residual,kd_none,kd_concat,kd_stages34,direct")
    ap.add_argument("--train", type=int, default=TRAIN_FACES)
    ap.add_argument("--ft", type=int, default=FT_EPOCHS)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", default="docs/kd_ablation")
    ap.add_argument("--runs", default="runs/ablation")
    ap.add_argument("--trained-elsewhere", metavar="DIR",
                    help="rows come as DIR/<row>.pt + DIR/summary.json (benchmarks/gpu_train.py kd): evaluate only")
    a = ap.parse_args()
    out_json = Path(a.out).with_suffix(".json")
    result = json.loads(out_json.read_text()) if out_json.is_file() else {"rows": {}}
    cache = FaceCache("cache/utkface/test")
    elsewhere = Path(a.trained_elsewhere) if a.trained_elsewhere else None
    gpu = json.loads((elsewhere / "summary.json").read_text()) if elsewhere else {}
    for name in filter(None, a.rows.split(",")):  # --rows "": only re-evaluate the teachers and rewrite the tables
        args, model = row_args(name, a.train, a.ft, a.runs)
        t0 = time.perf_counter()
        if elsewhere:  # trained by benchmarks/gpu_train.py kd with these same arguments
            model = elsewhere / f"{name}.pt"
            if not model.is_file() or name not in gpu or gpu[name].get("incomplete"):
                raise SystemExit(f"--trained-elsewhere: no complete run of {name} in {elsewhere}")
        else:
            print("running:", " ".join(args), flush=True)
            subprocess.run([sys.executable, "-m", "agelens.cli", *args, "--quiet"], check=True)
        torch.set_grad_enabled(False)
        est = student_estimator(name, model)
        row = {"command": " ".join(["agelens", *args]), "train_s": round(time.perf_counter() - t0, 1)}
        if elsewhere:
            row.update(train_s=gpu[name]["seconds"], trained_on=f"{gpu[name]['device']}, benchmarks/gpu_train.py kd "
                       f"(128 px WebP copies of the same faces)")
        row["model"] = str(model)
        row.update(evaluate_conditions(est, cache, a.n, {}))
        if name.startswith("kd"):
            hist = (gpu[name]["distill_history"] if elsewhere
                    else json.loads((model.parent / "distill_history.json").read_text()))
            row["val_mae_occluded_after_stages"] = [h.get("val_mae_occluded") for h in hist if "val_mae_occluded" in h]
        result["rows"][name + (GPU_SUFFIX if elsewhere else "")] = row
        print(json.dumps({name: row}), flush=True)
        atomic_write_json(out_json, result)
    torch.set_grad_enabled(False)
    for name, row in result["rows"].items():  # conditions added since a row was evaluated (e.g. 50 %)
        if not all(c in row for c in CONDITIONS):
            result["rows"][name] = evaluate_conditions(student_estimator(name, row["model"]), cache, a.n, row)
            print(json.dumps({name: {c: result["rows"][name][c] for c in CONDITIONS}}), flush=True)
            atomic_write_json(out_json, result)
    # teachers alone, same faces
    teachers = result.setdefault("teachers", {})
    for teacher in sorted({teacher_run(r) for r in result["rows"]}):
        est = AgeEstimator(TorchModel.load(teacher), route="teacher")
        teachers[teacher] = evaluate_conditions(est, cache, a.n, teachers.get(teacher, {}), as_row=False)
    result["protocol"] = {"train_faces": a.train, "finetune_epochs": a.ft, "test_faces": a.n, "input_px": 112}
    atomic_write_json(out_json, result)
    lines = ["# KD ablations (small CPU budget)", "",
             "Teachers: runs/heads_<head> (EfficientNet-Lite0 from ImageNet, 112 px, 3 epochs)"
             + (" and runs/heads_resnet34_dldl (ResNet-34 from scratch, 112 px, 3 epochs)"
                if any(r.endswith("resnet34") for r in result["rows"]) else "")
             + f". Each variant: first {a.train} "
             f"training faces, 1 epoch per distilled stage, {a.ft} fine-tuning epoch(s); test: first {a.n} test "
             "faces (in file-name order), clean, 50 % and 100 % occluded (Table 7 mix, seed 0). Generated by "
             "`benchmarks/kd_ablation.py`."
             + (f" Rows named `…{GPU_SUFFIX}` were trained with the same arguments by `benchmarks/gpu_train.py kd` on a "
                "lent H200, from 128 px WebP copies of the same faces (crop 112 = the 256/224 geometry), and evaluated "
                "here like the others (`--trained-elsewhere`); `kd_residual@gpu` repeats `kd_residual` as a control "
                "for that change." if any(r.endswith(GPU_SUFFIX) for r in result["rows"]) else ""), "",
             "| variant | teacher | clean MAE | 50 % occluded MAE | occluded MAE | occluded CS5 | "
             "val MAE (occluded) after each stage |",
             "|---|---|---|---|---|---|---|"]
    for teacher, d in result["teachers"].items():
        lines.append(f"| teacher alone | {teacher} | {d['clean']:.3f} | {d['half']:.3f} | {d['occluded']:.3f} | | |")
    for name, r in result["rows"].items():
        stages = ", ".join(f"{v:.2f}" for v in r.get("val_mae_occluded_after_stages", []))
        lines.append(f"| {name} | {teacher_run(name)} | {r['clean']['mae']:.3f} | {r['half']['mae']:.3f} | "
                     f"{r['occluded']['mae']:.3f} | {r['occluded']['cs5']:.3f} | {stages} |")
    lines += resnet34_section(Path(a.out).with_name(Path(a.out).name + "_resnet34.json"))
    lines += ["", f"![MAE by condition]({Path(a.out).name}.png)", ""]
    plot(result, Path(f"{a.out}.png"))
    atomic_write_text(Path(a.out).with_suffix(".md"), "\n".join(lines) + "\n")
    from occlusion_report import markdown_to_html

    atomic_write_text(Path(a.out).with_suffix(".html"), markdown_to_html(lines, "agelens KD ablations"))
    print(f"wrote {a.out}.json/.md/.html/.png")


def plot(result: dict, path: Path) -> None:
    """Grouped bars: clean / 50 % / 100 % occluded MAE of every teacher and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [f"teacher {Path(t).name.removeprefix('heads_')}" for t in result["teachers"]] + list(result["rows"])
    vals = [[d[c] for c in CONDITIONS] for d in result["teachers"].values()] + [
        [r[c]["mae"] for c in CONDITIONS] for r in result["rows"].values()]
    fig, ax = plt.subplots(figsize=(12, 5.5))
    w = 0.8 / len(CONDITIONS)
    for j, c in enumerate(CONDITIONS):
        ax.bar(np.arange(len(names)) + j * w, [v[j] for v in vals], w, label=f"{c} ({CONDITIONS[c]:.0%} occluded)")
    ax.set_xticks(np.arange(len(names)) + w, names, fontsize=8, rotation=35, ha="right")
    ax.set_ylabel("MAE (years), first 1000 test faces")
    ax.legend(fontsize=8)
    ax.set_title("KD ablations: teachers alone and students, by share of occluded faces")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
