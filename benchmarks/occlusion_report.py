"""Paper 1's tables on our split: clean / 50 % / 100 % occluded test faces for the teacher, direct fine-tuning on
occluded data, OpenCV inpainting + teacher, the distilled student and the routed predictor; MAE per occlusion type;
any extra runs (ablations) given with --extra NAME=RUN. Writes OUT.json, OUT.md, OUT.html and OUT_*.png.

    python benchmarks/occlusion_report.py --student runs/student_cpu --direct runs/direct_occluded_cpu \
        --detector occlusion --out docs/occlusion_report

Every model sees the same seeded occluded copies (Table 7 mix, seed 0). Run from the repo root (needs the cache
built by `agelens prepare -c configs/utkface_cpu.yaml`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agelens.data.cache import FaceCache
from agelens.evaluate.runner import evaluate_estimator
from agelens.inference.backends.torch import TorchModel
from agelens.inference.predictor import AgeEstimator
from agelens.occlusion.detector import OcclusionDetector
from agelens.occlusion.synth import OCCLUSION_TYPES, PAPER_MIX, OcclusionMix
from agelens.utils import atomic_write_json, atomic_write_text

CONDITIONS = {"clean": 0.0, "50% occluded": 0.5, "100% occluded": 1.0}


def estimator(teacher: str, student: str | None, detector: OcclusionDetector | None, route: str) -> AgeEstimator:
    t = TorchModel.load(teacher)
    s = TorchModel.load(student) if student else None
    return AgeEstimator.from_model(t.model, t.crop_size, t.input_size, name=t.name, student=s, detector=detector,
                                   route=route)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="teacher")
    ap.add_argument("--student", default="student")
    ap.add_argument("--direct", default=None, help="run trained directly on occluded faces (no distillation)")
    ap.add_argument("--detector", default="occlusion")
    ap.add_argument("--extra", action="append", default=[], help="NAME=RUN: more student-like models (ablations)")
    ap.add_argument("--cache", default="cache/utkface/test")
    ap.add_argument("--n", type=int, default=0, help="first N test faces (0 = all)")
    ap.add_argument("--n-per-type", type=int, default=1000, help="first N test faces for the per-type table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/occlusion_report")
    ap.add_argument("--skip-existing", action="store_true", help="reuse rows already in OUT.json (add a model later)")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    cache = FaceCache(a.cache)
    det = OcclusionDetector.from_pretrained(a.detector)
    rows: list[dict] = []
    old = json.loads(Path(a.out).with_suffix(".json").read_text()) if a.skip_existing and Path(a.out).with_suffix(
        ".json").is_file() else {"rows": []}
    done = {(r["model"], r["condition"]): r for r in old["rows"]}

    def run(name: str, est: AgeEstimator, cond: str, inpaint: bool = False, mix: dict | None = None,
            n: int = 0) -> dict:
        if (name, cond) in done:  # names of per-type rows carry the type, so they are unique too
            rows.append(done[(name, cond)])
            return done[(name, cond)]
        share = CONDITIONS[cond]
        occ = OcclusionMix(mix or dict(PAPER_MIX), 1 - share) if share > 0 else None
        t0 = time.perf_counter()
        m = evaluate_estimator(est, cache, None, occlusion=occ, seed=a.seed, progress=False,
                               inpaint=inpaint, max_eval=n or a.n, bootstrap=0, groups=False)  # none of that is kept
        row = {"model": name, "condition": cond, "n": m["n"], "mae": round(m["mae"], 3), "cs5": round(m["cs5"], 3),
               "cmae": round(m["cmae"], 3), "bias_score": None if m["bias_score"] is None else round(m["bias_score"], 3),
               "per_occlusion": {k: v["mae"] for k, v in m["per_occlusion"].items()}, "routed_to": m["routed_to"],
               "detector_accuracy": m.get("detector_accuracy"), "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    teacher = estimator(a.teacher, None, det, "teacher")
    models = [("teacher", teacher)]
    if a.direct:
        models.append(("direct fine-tuning on occluded (no KD)", estimator(a.direct, None, det, "teacher")))
    models.append(("KD student", estimator(a.teacher, a.student, det, "student")))
    for spec in a.extra:
        name, _, path = spec.partition("=")
        models.append((name, estimator(a.teacher, path, det, "student")))
    models.append(("routed: detector → teacher or KD student", estimator(a.teacher, a.student, det, "auto")))
    for name, est in models:
        for cond in CONDITIONS:
            run(name, est, cond)
    for cond in ("50% occluded", "100% occluded"):
        run("OpenCV inpainting (true mask) + teacher", teacher, cond, inpaint=True)
    # per-type table: every test face occluded with one type
    per_type: dict[str, dict[str, float]] = {}
    for name, est in models:
        if name.startswith("teacher") or name.startswith("routed") or name == "KD student":
            per_type[name] = {}
            for kind in OCCLUSION_TYPES:
                per_type[name][kind] = run(f"{name} [{kind}]", est, "100% occluded", mix={kind: 1.0},
                                           n=a.n_per_type)["mae"]
    result = {"split": "splits/utkface_seed0.json test part", "cache": a.cache, "seed": a.seed, "rows": rows,
              "per_type": per_type, "teacher": a.teacher, "student": a.student, "direct": a.direct,
              "detector": a.detector, "detector_threshold": det.threshold}
    out = Path(a.out)
    atomic_write_json(out.with_suffix(".json"), result)
    write_markdown(result, out)
    print(f"wrote {out}.json/.md/.html")


def write_markdown(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main_rows = [r for r in result["rows"] if "[" not in r["model"]]
    names = list(dict.fromkeys(r["model"] for r in main_rows))
    lines = ["# Occlusion report (paper 1 tables on our split)", "",
             f"Test part of `{result['split']}`, occluders drawn with seed {result['seed']} (Table 7 mix); "
             f"teacher `{result['teacher']}`, student `{result['student']}`, detector `{result['detector']}` "
             f"(threshold {result['detector_threshold']:.2f}). Generated by `benchmarks/occlusion_report.py`.", "",
             "## MAE by condition (Table 1 style)", "", "| model | " + " | ".join(CONDITIONS) + " |",
             "|---|" + "---|" * len(CONDITIONS)]
    table = {(r["model"], r["condition"]): r for r in main_rows}
    for n in names:
        cells = [f"{table[(n, c)]['mae']:.3f} (CS5 {table[(n, c)]['cs5']:.3f})" if (n, c) in table else "—"
                 for c in CONDITIONS]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    routed = [r for r in main_rows if r["model"].startswith("routed")]
    if routed:
        lines += ["", "Routing: " + "; ".join(f"{r['condition']}: {r['routed_to']} (detector accuracy "
                                                f"{r['detector_accuracy']})" for r in routed)]
    lines += ["", "## MAE per occlusion type (Table 3 style: the first N test faces, each occluded with that type; "
              "N in the JSON rows)", "",
              "| model | " + " | ".join(OCCLUSION_TYPES) + " |", "|---|" + "---|" * len(OCCLUSION_TYPES)]
    for n, d in result["per_type"].items():
        lines.append(f"| {n} | " + " | ".join(f"{d[k]:.3f}" for k in OCCLUSION_TYPES) + " |")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    w = 0.8 / len(CONDITIONS)
    for j, c in enumerate(CONDITIONS):
        vals = [table[(n, c)]["mae"] if (n, c) in table else np.nan for n in names]
        ax.bar(np.arange(len(names)) + j * w, vals, w, label=c)
    ax.set_xticks(np.arange(len(names)) + w, [n.replace(" (", "\n(").replace(": ", ":\n") for n in names], fontsize=7)
    ax.set_ylabel("MAE (years)")
    ax.legend()
    ax.set_title("Test MAE by condition")
    fig.tight_layout()
    fig.savefig(f"{out}_conditions.png", dpi=110)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    w = 0.8 / max(1, len(result["per_type"]))
    for j, (n, d) in enumerate(result["per_type"].items()):
        ax.bar(np.arange(len(OCCLUSION_TYPES)) + j * w, [d[k] for k in OCCLUSION_TYPES], w, label=n)
    ax.set_xticks(np.arange(len(OCCLUSION_TYPES)) + w, OCCLUSION_TYPES, fontsize=8)
    ax.set_ylabel("MAE (years)")
    ax.legend(fontsize=8)
    ax.set_title("Test MAE per occlusion type")
    fig.tight_layout()
    fig.savefig(f"{out}_per_type.png", dpi=110)
    lines += ["", f"![conditions]({out.name}_conditions.png)", "", f"![per type]({out.name}_per_type.png)", ""]
    md = "\n".join(lines)
    atomic_write_text(out.with_suffix(".md"), md)
    atomic_write_text(out.with_suffix(".html"), markdown_to_html(lines, "agelens occlusion report"))





def markdown_to_html(lines: list[str], title: str) -> str:
    """The few Markdown forms our reports use (# / ## headings, pipe tables, images, paragraphs) as one HTML page."""
    import html as h

    out = [f"<!doctype html><meta charset='utf-8'><title>{h.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 6px}</style>"]
    in_table = False
    for ln in lines:
        if ln.startswith("|"):
            if ln.startswith("|---"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{c.strip()}</{tag}>" for c in ln.strip("|").split("|")) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if ln.startswith("# "):
            out.append(f"<h1>{ln[2:]}</h1>")
        elif ln.startswith("## "):
            out.append(f"<h2>{ln[3:]}</h2>")
        elif ln.startswith("!["):
            out.append(f"<img src='{ln[ln.index('(') + 1:-1]}' style='max-width:100%'>")
        elif ln:
            out.append(f"<p>{ln}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
