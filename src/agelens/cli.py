"""`agelens` command line: prepare, split, train, evaluate, predict, export."""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import AgelensError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Occlusion-robust, fairness-aware facial age estimation.")
export_app = typer.Typer(no_args_is_help=True, help="Export models (shipped fp16 weights).")
app.add_typer(export_app, name="export")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see configs/)")]
Overrides = Annotated[list[str] | None, typer.Argument(help="config overrides: section.key=value", show_default=False)]


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _load(config: Path | None, overrides: list[str] | None):
    from .config import load_config

    return load_config(config, overrides or [])


@app.command()
def split(config: ConfigOpt = None, overrides: Overrides = None,
          folds: Annotated[int, typer.Option(help="also write K group-safe folds (0: none)")] = 0,
          force: Annotated[bool, typer.Option(help="re-make the split even if the file exists")] = False) -> None:
    """Make (or show) the group-safe, seeded train/val/test split; optionally k folds."""
    from .data.prepare import list_records, make_or_load_split
    from .data.splits import kfold_split, save_split

    cfg = _load(config, overrides)
    listing = list_records(cfg.data)
    parts = make_or_load_split(cfg.data, listing, force=force)
    typer.echo(f"split {cfg.data.split_file}: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items())
               + f"; {len(listing.bad)} bad rows skipped")
    for b in listing.bad[:10]:
        typer.echo(f"  skipped {b.path}: {b.reason}")
    if folds:
        recs = listing.records
        for i, fold in enumerate(kfold_split(recs, folds, cfg.data.split_seed)):
            test = set(fold)
            p = Path(cfg.data.split_file).with_suffix(f".fold{i}of{folds}.json")
            save_split(p, recs, {"train": [j for j in range(len(recs)) if j not in test], "val": [], "test": sorted(test)},
                       dataset=cfg.data.dataset, root=cfg.data.root, seed=cfg.data.split_seed, fold=i, folds=folds)
            typer.echo(f"fold {i}: {p} ({len(test)} test)")


@app.command()
def prepare(config: ConfigOpt = None, overrides: Overrides = None,
            workers: Annotated[int, typer.Option(help="processes for detection/landmarks")] = 2,
            force: Annotated[bool, typer.Option(help="rebuild caches even when up to date")] = False) -> None:
    """Detect, landmark and align every face once into memory-mapped caches (one per split part)."""
    from .data.prepare import prepare_caches

    cfg = _load(config, overrides)
    for part, cache in prepare_caches(cfg.data, workers=workers, force=force).items():
        typer.echo(f"{part}: {len(cache)} faces in {cache.path}; {len(cache.failed)} without a face, "
                   f"{len(cache.meta.get('no_landmarks', []))} without landmarks")
        for f in cache.failed[:10]:
            typer.echo(f"  no face: {f['path']}: {f['reason']}")


@app.command()
def train(config: ConfigOpt = None, overrides: Overrides = None,
          resume: Annotated[bool, typer.Option(help="continue from RUN_DIR/last.pt")] = False,
          quiet: Annotated[bool, typer.Option(help="no progress output")] = False) -> None:
    """Train a model (any recipe) and evaluate its best checkpoint on the test part."""
    from .train.run import train_and_test

    cfg = _load(config, overrides)
    res = train_and_test(cfg, resume=resume, progress=not quiet, log=typer.echo if not quiet else (lambda *_: None))
    if "test" in res:
        keys = ("threshold", "min_type_accuracy") if cfg.train.task == "occlusion" else ("n", "mae", "cs5", "cmae", "bias_score")
        typer.echo(json.dumps({k: res["test"][k] for k in keys}))


@app.command()
def distill(config: ConfigOpt = None, overrides: Overrides = None,
            resume: Annotated[bool, typer.Option(help="continue an interrupted run")] = False,
            quiet: Annotated[bool, typer.Option(help="no progress output")] = False) -> None:
    """Layer-wise distillation of an occlusion-robust student from a teacher, then global fine-tuning."""
    from .train.distill import distill_and_finetune

    cfg = _load(config, overrides)
    res = distill_and_finetune(cfg, resume=resume, progress=not quiet, log=typer.echo if not quiet else (lambda *_: None))
    out = {k: res[k]["mae"] for k in ("test", "test_occluded") if k in res}
    typer.echo(json.dumps({"mae": out, "stages": res.get("stages", [])}))


def parse_mix(text: str | None):
    """'sunglasses=0.5,mask=0.5' (or 'paper') → OcclusionMix probabilities; None → paper 1 Table 7."""
    from .occlusion.synth import PAPER_MIX

    if text is None or text.strip() in ("", "paper"):
        return dict(PAPER_MIX)
    mix = {}
    for part in text.split(","):
        name, _, p = part.partition("=")
        try:
            mix[name.strip()] = float(p) if p else 1.0
        except ValueError:
            raise AgelensError(f"--mix entry {part!r} is not TYPE=PROBABILITY") from None
    return mix


@app.command()
def occlude(src: Annotated[Path, typer.Argument(help="image file or folder (recursive)")],
            dst: Annotated[Path, typer.Argument(help="output folder (same relative paths + occlusions.csv)")],
            mix: Annotated[str | None, typer.Option(help="TYPE=P,... over sunglasses, mask, sunglasses+mask, "
                                                        "eye_block, mouth_block, eye+mouth_block (default: paper Table 7)")] = None,
            clean_fraction: Annotated[float, typer.Option(help="share of images copied without an occluder")] = 0.0,
            seed: Annotated[int, typer.Option(help="random seed (same seed → same occluders)")] = 0,
            workers: Annotated[int, typer.Option(help="processes")] = 2,
            limit: Annotated[int, typer.Option(help="only the first N images (0 = all)")] = 0,
            quiet: bool = False) -> None:
    """Write synthetically occluded copies of images (sunglasses, masks/veils, blocks) and a CSV of what was drawn."""
    from .occlusion.synth import OcclusionMix
    from .occlusion.tool import occlude_folder

    try:
        m = OcclusionMix(parse_mix(mix), clean_fraction)
    except ValueError as e:
        raise AgelensError(str(e)) from None
    summary = occlude_folder(src, dst, m, seed=seed, workers=workers, limit=limit, progress=not quiet)
    typer.echo(json.dumps(summary))
    if summary["status"].get("error"):
        _err(f"{summary['status']['error']} image(s) not occluded: see {dst}/occlusions.csv (reason column)")


@app.command()
def evaluate(output: Annotated[Path, typer.Option("--output", "-o", help="folder for metrics.json + predictions.csv")],
             dataset: Annotated[str, typer.Option(help="dataset adapter")] = "utkface",
             root: Annotated[Path | None, typer.Option(help="dataset folder (or CSV for --dataset csv)")] = None,
             model: Annotated[str | None, typer.Option(help="shipped model name, .safetensors, .pt or run folder")] = None,
             config: ConfigOpt = None,
             part: Annotated[str, typer.Option(help="with --config and no --root: split part to evaluate")] = "test",
             detect: Annotated[bool, typer.Option("--detect/--no-detect", help="detect+align faces, or treat images as aligned crops")] = True,
             tta: Annotated[bool, typer.Option("--tta/--no-tta", help="average with the mirrored face")] = True,
             groups_csv: Annotated[Path | None, typer.Option(help="duplicate-groups CSV (utkface)")] = None,
             workers: Annotated[int, typer.Option(help="processes for detection")] = 2,
             route: Annotated[str, typer.Option(help="auto (detector → teacher/student) | teacher | student")] = "auto",
             occlude: Annotated[float, typer.Option(help="share of faces given a synthetic occluder (0.5 = paper's 50 % protocol, 1 = all)")] = 0.0,
             occlusion_mix: Annotated[str | None, typer.Option(help="TYPE=P,... for --occlude (default: paper Table 7)")] = None,
             student: Annotated[str | None, typer.Option(help="student model (default: shipped)")] = None,
             detector: Annotated[str | None, typer.Option(help="occlusion detector (default: shipped)")] = None,
             seed: Annotated[int, typer.Option(help="seed of the occluders drawn with --occlude")] = 0,
             quiet: bool = False) -> None:
    """Evaluate a model on a labelled dataset: writes OUTPUT/metrics.json and OUTPUT/predictions.csv."""
    import shutil
    import tempfile

    import torch

    from .data.adapters import load_dataset
    from .data.cache import build_cache
    from .data.prepare import make_or_load_split
    from .evaluate.runner import evaluate_estimator
    from .occlusion.synth import OcclusionMix
    from .serve.predictor import AgeEstimator

    if not 0 <= occlude <= 1:
        raise AgelensError(f"--occlude must be a share in [0, 1], got {occlude}")
    try:
        occ = OcclusionMix(parse_mix(occlusion_mix), 1 - occlude) if occlude > 0 else None
    except ValueError as e:
        raise AgelensError(str(e)) from None
    est = AgeEstimator.from_pretrained(model, tta_flip=tta, route=route, student=student, detector=detector)
    if root is None and config is None:
        raise AgelensError("evaluate needs --root DIR (with --dataset) or --config with a split")
    if root is not None:
        listing = load_dataset(dataset, root, groups_csv=groups_csv)
        records, bad = listing.records, listing.bad
    else:
        cfg = _load(config, [])
        records, bad = make_or_load_split(cfg.data)[part], []
    tmp = Path(tempfile.mkdtemp(prefix="agelens-eval-"))
    try:
        cache = build_cache(records, tmp / "cache", est.cache_size, aligned=not detect, workers=workers,
                            progress=not quiet)
        torch.set_grad_enabled(False)
        m = evaluate_estimator(est, cache, output, occlusion=occ, seed=seed, progress=not quiet,
                               extra={"model": est.name, "student": est.student.name if est.student else None,
                                      "detector": est.detector.name if est.detector else None, "dataset": dataset,
                                      "root": str(root or config), "detect": detect, "bad_rows": len(bad),
                                      "occluded_share": occlude, "occlusion_mix": parse_mix(occlusion_mix)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    typer.echo(f"n {m['n']}  MAE {m['mae']:.3f}  CS5 {m['cs5']:.3f}  CMAE {m['cmae']:.3f}  bias {m['bias_score']:.3f}"
               f"  routed {m['routed_to']}  ({m['failed']} without a face, {len(bad)} bad rows) -> {output}/metrics.json")


def expand_inputs(paths: list[str]) -> list[str]:
    """Files as given, folders → their images (recursive, sorted), globs expanded; unknown paths kept (reported)."""
    from .data.adapters import IMAGE_EXTS

    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(str(q) for q in Path(p).rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file())
        elif not os.path.exists(p) and any(c in p for c in "*?["):
            hits = sorted(glob.glob(p, recursive=True))
            out += hits if hits else [p]
        else:
            out.append(p)
    return out


@app.command()
def predict(paths: Annotated[list[str] | None, typer.Argument(help="image files, folders or globs", show_default=False)] = None,
            model: Annotated[str | None, typer.Option(help="shipped model name, .safetensors, .pt or run folder")] = None,
            fmt: Annotated[str, typer.Option("--format", "-f", help="table | json | csv")] = "table",
            detect: Annotated[bool, typer.Option("--detect/--no-detect", help="--no-detect: inputs are face crops")] = True,
            save_annotated: Annotated[Path | None, typer.Option(help="write images with boxes and ages here")] = None,
            tta: Annotated[bool, typer.Option("--tta/--no-tta", help="average with the mirrored face")] = True,
            route: Annotated[str, typer.Option(help="auto (occlusion detector → teacher/student) | teacher | student")] = "auto",
            demo: Annotated[bool, typer.Option(help="run on the bundled astronaut photo")] = False) -> None:
    """Estimate the age of every face in images; exit code 1 when some files failed."""
    from .imageio import load_image
    from .serve.predictor import AgeEstimator

    if fmt not in ("table", "json", "csv"):
        raise AgelensError(f"--format must be table, json or csv, got {fmt!r}")
    files = expand_inputs(list(paths or []))
    if demo:
        from importlib import resources

        files.insert(0, str(resources.files("agelens") / "assets" / "astronaut.jpg"))
    if not files:
        raise AgelensError("no input: give image files, folders or globs (or --demo)")
    est = AgeEstimator.from_pretrained(model, tta_flip=tta, route=route)
    results = []
    for f in files:
        try:
            rgb = load_image(f)
            faces = [p.to_dict() for p in est.predict(rgb, detect=detect)]
            results.append({"file": f, "faces": faces, "error": None})
            if save_annotated is not None:
                _annotate(rgb, faces, save_annotated, f, len(results))
        except AgelensError as e:
            msg = str(e)
            results.append({"file": f, "faces": [], "error": msg if f in msg else f"{f}: {msg}"})
    _emit(results, fmt)
    failed = sum(r["error"] is not None for r in results)
    if failed:
        _err(f"{failed} of {len(results)} file(s) failed")
        raise typer.Exit(1)


def _emit(results: list[dict], fmt: str) -> None:
    if fmt == "json":
        typer.echo(json.dumps(results, indent=1))
        return
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(["file", "face", "x1", "y1", "x2", "y2", "age", "low", "high", "occluded", "occlusion_score",
                    "model", "error"])
        for r in results:
            for i, f in enumerate(r["faces"]):
                w.writerow([r["file"], i, *f["box"], f["age"], *f["interval"], f["occluded"], f["occlusion_score"],
                            f["model"], ""])
            if r["error"]:
                w.writerow([r["file"], "", "", "", "", "", "", "", "", "", "", "", r["error"]])
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="agelens predict")
    for c in ("file", "face", "box", "age", "90% interval", "occluded (score)", "model"):
        t.add_column(c)
    for r in results:
        if r["error"]:
            t.add_row(r["file"], "-", "-", "-", "-", "-", f"[red]{r['error']}[/red]")
        for i, f in enumerate(r["faces"]):
            occ = "-" if f["occluded"] is None else f"{'yes' if f['occluded'] else 'no'} ({f['occlusion_score']:.2f})"
            t.add_row(r["file"], str(i), ",".join(f"{v:.0f}" for v in f["box"]), f"{f['age']:.1f}",
                      f"{f['interval'][0]:.0f}-{f['interval'][1]:.0f}", occ, f["model"])
    Console(width=160).print(t)


def _annotate(rgb, faces: list[dict], out_dir: Path, src: str, k: int) -> None:
    import cv2

    from .utils import atomic_write

    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    scale = max(1.0, max(img.shape[:2]) / 600)
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        cv2.rectangle(img, (x1, y1), (x2, y2), (0, 200, 0), max(1, int(2 * scale)))
        label = f"{f['age']:.0f}"
        cv2.putText(img, label, (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (0, 200, 0), max(1, int(2 * scale)))
    name = f"{k:05d}_{Path(src).stem}.jpg"
    ok, buf = cv2.imencode(".jpg", img)
    if ok:
        atomic_write(Path(out_dir) / name, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))


@export_app.command("weights")
def export_weights_cmd(run: Annotated[Path, typer.Argument(help="run folder (best.pt) or checkpoint .pt")],
                       name: Annotated[str, typer.Option(help="name of the shipped model")] = "teacher",
                       output: Annotated[Path | None, typer.Option(help="folder (default: the package's weights/)")] = None) -> None:
    """Write a checkpoint as fp16 safetensors + JSON card (with its test metrics when the run has them)."""
    from .models.weights import export_weights, weights_dir
    from .train.engine import model_from_checkpoint

    ck = run / "best.pt" if run.is_dir() else run
    model, cfg = model_from_checkpoint(ck)
    test_p = ck.parent / "test" / "metrics.json"
    card = {"source_checkpoint": str(ck), "test_metrics": json.loads(test_p.read_text()) if test_p.is_file() else None,
            "licence": "weights trained on UTKFace: non-commercial research use only"}
    if cfg.model.head == "binary":  # the occlusion detector ships with its validation-chosen threshold
        card["threshold"] = float((card["test_metrics"] or {}).get("threshold", 0.5))
    p = export_weights(model, cfg, output or weights_dir(), name, card)
    typer.echo(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    """Console entry point: AgelensError and bad paths become one-line messages with exit code 2."""
    try:
        app()
    except AgelensError as e:
        _err(f"error: {e}")
        sys.exit(2)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        _err(f"error: {e.strerror}: {e.filename}")
        sys.exit(2)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
