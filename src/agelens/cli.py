"""`agelens` command line: predict and serve; split, prepare, curate, train, distill, occlude; evaluate, calibrate,
index, report, cv; export weights / onnx."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .errors import AgelensError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Occlusion-robust, fairness-aware facial age estimation.")
export_app = typer.Typer(no_args_is_help=True, help="Export models: fp16 weights with their card, or ONNX graphs.")
app.add_typer(export_app, name="export")

def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"agelens {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="print the version and exit")] = False) -> None:
    """Occlusion-robust, fairness-aware facial age estimation."""


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see configs/)")]
Overrides = Annotated[list[str] | None, typer.Argument(help="config overrides: section.key=value", show_default=False)]


ROUTE_HELP = ("auto (occlusion detector → teacher for clean faces, student for occluded ones) | teacher | student; "
              "default: auto with the shipped models, teacher with a --model of your own")


def _err(msg: str) -> None:
    from .inference.inputs import terminal_safe

    typer.echo(terminal_safe(msg, lines=True), err=True)  # a file name's escape sequences shown, not acted on


STUDENT_HELP = ("the model for occluded faces under --route auto (a .safetensors, .pt or run folder of `agelens "
                "distill`; default: shipped)")
DETECTOR_HELP = "occlusion detector that routes each face (a binary model of `agelens train`; default: shipped)"


def _route(route: str | None, model: str | None, student: str | None = None, say=None) -> str:
    """--route as given; by default auto for the shipped models, and teacher for a --model of one's own (without
    a --student), so that the model asked about answers every face: under auto the faces the occlusion detector
    flags would go to the shipped student, and its answers would be counted as the model's. (The Python API,
    `AgeEstimator.from_pretrained`, keeps route="auto": the benchmarks pass candidate teachers that way, routed as
    the shipped one is.)"""
    if route is not None:
        return route
    from .utils import shipped_models

    if model is None or student is not None or model in shipped_models():
        return "auto"
    (say or _err)(f"--model {model} answers every face (--route teacher); --route auto would send the faces the occlusion "
         "detector flags to the shipped student")
    return "teacher"


def _tta(tta: bool, full_tta: bool) -> bool | str:
    """The estimator's tta_flip from --tta/--no-tta and --full-tta."""
    if full_tta and not tta:
        raise AgelensError("--full-tta and --no-tta contradict each other: give one")
    return "full" if full_tta else tta


def _load(config: Path | None, overrides: list[str] | None):
    from .config import load_config
    from .models import check_config

    return check_config(load_config(config, overrides or []))


@app.command()
def split(config: ConfigOpt = None, overrides: Overrides = None,
          folds: Annotated[int, typer.Option(help="also write K group-safe folds (0: none)")] = 0,
          force: Annotated[bool, typer.Option(help="re-make the split even if the file exists")] = False) -> None:
    """Make (or show) the group-safe, seeded train/val/test split; optionally k folds."""
    from .data.prepare import list_records, make_or_load_split
    from .data.splits import kfold_parts, save_split

    cfg = _load(config, overrides)
    listing = list_records(cfg.data)
    recs = listing.records
    # too few groups: refused before anything is written
    fold_list = kfold_parts(recs, folds, cfg.data.val_frac, cfg.data.split_seed) if folds else []
    parts = make_or_load_split(cfg.data, listing, force=force)
    typer.echo(f"split {cfg.data.split_file}: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items())
               + f"; {len(listing.bad)} bad rows skipped")
    for b in listing.bad[:10]:
        typer.echo(f"  skipped {b.path}: {b.reason}")
    for i, fold in enumerate(fold_list):  # the parts `agelens cv` trains each fold on (val carved from the rest)
        p = Path(cfg.data.split_file).with_suffix(f".fold{i}of{folds}.json")
        save_split(p, recs, fold, dataset=cfg.data.dataset, root=cfg.data.root, seed=cfg.data.split_seed, fold=i,
                   folds=folds)
        typer.echo(f"fold {i}: {p} (" + ", ".join(f"{k} {len(v)}" for k, v in fold.items()) + ")")


@app.command()
def prepare(config: ConfigOpt = None, overrides: Overrides = None,
            workers: Annotated[int, typer.Option(help="processes for detection/landmarks")] = 2,
            force: Annotated[bool, typer.Option(help="rebuild caches even when up to date")] = False,
            shards: Annotated[Path | None, typer.Option(help="also write WebDataset shards of each part to "
                                                        "DIR/{train,val,test} (= data.shards; train streams them)")] = None) -> None:
    """Detect, landmark and align every face once into memory-mapped caches (one per split part), optionally
    also as WebDataset shards for streamed, multi-node training (an existing up-to-date cache is just converted)."""
    from .data.prepare import prepare_all

    cfg = _load(config, [*(overrides or []), *([f"data.shards={shards}"] if shards else [])])
    every = prepare_all(cfg.data, cfg.extra_data, workers=workers, force=force)
    sharded = {d.dataset: d.shards for d in [cfg.data, *cfg.extra_data] if d.shards}  # the datasets it sharded
    for name, part, cache in ((n, k, c) for n, parts in every.items() for k, c in parts.items()):
        typer.echo(f"{name} {part}: {len(cache)} faces in {cache.path}; {len(cache.failed)} without a face, "
                   f"{len(cache.meta.get('no_landmarks', []))} without landmarks"
                   + (f"; shards in {Path(sharded[name]) / part}" if name in sharded else ""))
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
        from .utils import finite_json

        typer.echo(json.dumps(finite_json({k: res["test"][k] for k in keys})))


@app.command()
def distill(config: ConfigOpt = None, overrides: Overrides = None,
            resume: Annotated[bool, typer.Option(help="continue an interrupted run")] = False,
            quiet: Annotated[bool, typer.Option(help="no progress output")] = False) -> None:
    """Layer-wise distillation of an occlusion-robust student from a teacher, then global fine-tuning."""
    from .train.distill import distill_and_finetune

    cfg = _load(config, overrides)
    res = distill_and_finetune(cfg, resume=resume, progress=not quiet, log=typer.echo if not quiet else (lambda *_: None))
    out = {k: res[k]["mae"] for k in ("test", "test_occluded") if k in res}
    from .utils import finite_json

    typer.echo(json.dumps(finite_json({"mae": out, "stages": res.get("stages", [])})))


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
            mix: Annotated[str | None, typer.Option(help="TYPE=P,... over the paper's sunglasses, mask, sunglasses+mask, "
                                                        "eye_block, mouth_block, eye+mouth_block and the families fabric_mask, scarf, "
                                                        "hand, cap, hair, object, eye_patch, face_shield, thick_glasses, "
                                                        "texture_patch, their combinations such as hand+sunglasses "
                                                        "and occluders of your own (docs/extending.md); default: "
                                                        "paper Table 7")] = None,
            clean_fraction: Annotated[float, typer.Option(help="share of images copied without an occluder")] = 0.0,
            seed: Annotated[int, typer.Option(help="random seed (same seed and file path → same occluder)")] = 0,
            workers: Annotated[int, typer.Option(help="processes")] = 2,
            limit: Annotated[int, typer.Option(help="only the first N images (0 = all)")] = 0,
            overwrite: Annotated[bool, typer.Option(help="DST holds an earlier run: delete its outputs first")] = False,
            quiet: Annotated[bool, typer.Option(help="no progress output")] = False) -> None:
    """Write synthetically occluded copies of images (sunglasses, masks/veils, blocks) and a CSV of what was drawn."""
    from .occlusion.synth import OcclusionMix
    from .occlusion.tool import occlude_folder

    try:
        m = OcclusionMix(parse_mix(mix), clean_fraction)
    except ValueError as e:
        raise AgelensError(str(e)) from None
    summary = occlude_folder(src, dst, m, seed=seed, workers=workers, limit=limit, progress=not quiet,
                             overwrite=overwrite)
    from .utils import finite_json

    typer.echo(json.dumps(finite_json(summary)))
    if summary["status"].get("error"):
        _err(f"{summary['status']['error']} image(s) not occluded: see {dst}/occlusions.csv (reason column)")
        raise typer.Exit(1)  # as predict: some files failed


def _headline(m: dict) -> str:
    """evaluate's summary line: n, MAE, CS5, CMAE and bias score, naming the age bins of too few faces in the last two."""
    from .evaluate.metrics import fmt

    small = m.get("small_bins") or {}
    return (f"n {m['n']}  MAE {m['mae']:.3f}  CS5 {m['cs5']:.3f}  CMAE {m['cmae']:.3f}  bias {fmt(m['bias_score'])}"
            + (" (age bins of few faces in CMAE and bias: " + ", ".join(f"{b} has {c}" for b, c in small.items()) + ")"
               if small else ""))


@app.command()
def evaluate(output: Annotated[Path, typer.Option("--output", "-o", help="folder for metrics.json + predictions.csv")],
             dataset: Annotated[str, typer.Option(help="dataset adapter")] = "utkface",
             root: Annotated[Path | None, typer.Option(help="dataset folder (or CSV for --dataset csv)")] = None,
             model: Annotated[str | None, typer.Option(help="shipped model name, .safetensors, .pt or run folder")] = None,
             config: ConfigOpt = None,
             part: Annotated[str, typer.Option(help="with --config and no --root: split part to evaluate")] = "test",
             detect: Annotated[bool, typer.Option("--detect/--no-detect", help="detect+align faces, or treat images as aligned crops")] = True,
             tta: Annotated[bool, typer.Option("--tta/--no-tta", help="average with the mirrored face (as predict: "
                                               "where the model's first view is unsure; --from-cache: every face)"
                                               )] = True,
             full_tta: Annotated[bool, typer.Option("--full-tta", help="average every face with its mirror")] = False,
             groups_csv: Annotated[Path | None, typer.Option(help="duplicate-groups CSV (utkface)")] = None,
             labels: Annotated[Path | None, typer.Option(help="the dataset's label file where ROOT does not hold it "
                                                         "(aaf / morph / imdbclean / csv: a CSV; imdbwiki: the .mat)"
                                                         )] = None,
             workers: Annotated[int, typer.Option(help="processes for detection")] = 2,
             route: Annotated[str | None, typer.Option(help=ROUTE_HELP, show_default=False)] = None,
             occlude: Annotated[float, typer.Option(help="share of faces given a synthetic occluder (0.5 = paper's 50 % "
                                                    "protocol, 1 = all), drawn on the aligned face crop as the paper "
                                                    "does (faces then found with mediapipe's graphs, the largest per "
                                                    "image; occluded photos end to end: `agelens occlude` the folder, then "
                                                    "evaluate its output)"
                                                    )] = 0.0,
             occlusion_mix: Annotated[str | None, typer.Option(help="TYPE=P,... for --occlude (default: paper Table 7)")] = None,
             student: Annotated[str | None, typer.Option(help="student model (default: shipped)")] = None,
             detector: Annotated[str | None, typer.Option(help="occlusion detector (default: shipped)")] = None,
             seed: Annotated[int, typer.Option(help="seed of the occluders drawn with --occlude")] = 0,
             knn: Annotated[Path | None, typer.Option(help="KNN refinement index from `agelens index` (built for --model)")] = None,
             save_embeddings: Annotated[bool, typer.Option(help="also write OUTPUT/embeddings.npz (t-SNE in `agelens report`)")] = False,
             from_cache: Annotated[bool, typer.Option(help="evaluate the prepared cache of --part (the config's, else the "
                                                            "model's cache_dir) with --model alone, as training does")] = False,
             bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the 95 % intervals (0: none)")] = 1000,
             adapt: Annotated[bool, typer.Option("--adapt/--no-adapt", help="adapt the ages to the dataset's own age "
                                                 "mix, as predict does for a job (not with --from-cache)")] = True,
             quiet: Annotated[bool, typer.Option(help="no progress output")] = False) -> None:
    """Evaluate a model on a labelled dataset: writes OUTPUT/metrics.json and OUTPUT/predictions.csv."""
    import shutil
    import tempfile

    import torch

    from .data.adapters import load_dataset
    from .data.cache import build_cache
    from .data.prepare import list_records, make_or_load_split
    from .evaluate.runner import evaluate_estimator
    from .inference.finding import predicted_face
    from .inference.predictor import AgeEstimator
    from .occlusion.synth import OcclusionMix

    if not 0 <= occlude <= 1:
        raise AgelensError(f"--occlude must be a share in [0, 1], got {occlude}")
    if occlusion_mix is not None and occlude == 0:
        raise AgelensError("--occlusion-mix sets the occluders of --occlude: give --occlude SHARE too (1 = every face)")
    occlusion_info = {"occluded_share": occlude, "occlusion_mix": parse_mix(occlusion_mix) if occlude > 0 else None,
                      "occlusion_seed": seed if occlude > 0 else None,
                      "occlusion_protocol": "aligned-crop" if occlude > 0 else None}
    try:
        occ = OcclusionMix(parse_mix(occlusion_mix), 1 - occlude) if occlude > 0 else None
    except ValueError as e:
        raise AgelensError(str(e)) from None
    from .fairness.knn import KnnIndex

    unused = [flag for flag, given in (("--root", root is not None), ("--dataset", dataset != "utkface"),
                                       ("--labels", labels is not None), ("--groups-csv", groups_csv is not None),
                                       ("--no-detect", not detect), ("--workers", workers != 2),
                                       ("--route", route is not None), ("--student", student is not None),
                                       ("--detector", detector is not None), ("--full-tta", full_tta)) if given]
    if from_cache and unused:  # before: silently not used
        raise AgelensError(f"--from-cache evaluates the prepared cache with --model alone: {', '.join(unused)} "
                           "cannot apply (evaluate photos end to end without --from-cache)")
    if root is not None and (config is not None or part != "test"):  # before: --config / --part silently not used
        raise AgelensError("give --root (a dataset folder, with --dataset) or --config (its dataset's split, with "
                           "--part), not both")
    knn_index = KnnIndex.load(knn) if knn is not None else None
    if from_cache:
        from .evaluate.prepared import evaluate_prepared_cache

        m = evaluate_prepared_cache(model, config, part, output, tta=tta, occlusion=occ, seed=seed, knn=knn_index,
                                    embeddings=save_embeddings, bootstrap=bootstrap, progress=not quiet,
                                    extra=occlusion_info)
        typer.echo(f"{_headline(m)}" + (f"  (KNN k={m['knn']['k']}, w={m['knn']['w']})" if knn_index else "")
                   + f" -> {output}/metrics.json")
        return
    route = _route(route, model, student)
    est = AgeEstimator.from_pretrained(model, tta_flip=_tta(tta, full_tta), route=route, student=student,
                                       detector=detector, backend="torch")
    if knn_index is not None:  # an index of another model is refused before any photo is searched for faces
        from .evaluate.runner import teacher_fingerprint

        knn_index.check(teacher_fingerprint(est), f"model {est.teacher.name}")
    if root is None and config is None:
        raise AgelensError("evaluate needs --root DIR (with --dataset) or --config with a split")
    if root is not None:
        listing = load_dataset(dataset, root, groups_csv=groups_csv, labels=labels)
        for note in listing.notes:
            typer.echo(note, err=True)
        source = {"dataset": dataset, "root": str(root)}
    else:  # the config's dataset and split (before: recorded as --dataset's default and the config's path as root)
        cfg = _load(config, [])
        listing = list_records(cfg.data)
        parts = make_or_load_split(cfg.data, listing)
        if part not in parts:
            raise AgelensError(f"--part must be one of {', '.join(parts)}, got {part!r}")
        source = {"dataset": cfg.data.dataset, "root": str(cfg.data.root), "config": str(config),
                  "split_file": str(cfg.data.split_file), "part": part}
    records, bad = (listing.records if root is not None else parts[part]), listing.bad
    tmp = Path(tempfile.mkdtemp(prefix="agelens-eval-"))
    try:
        # faces found and aligned as predict does; drawn occluders need FaceMesh's iris points, so --occlude
        # prepares the faces with mediapipe's graphs
        cache = build_cache(records, tmp / "cache", est.cache_size, aligned=not detect, workers=workers,
                            progress=not quiet, fast=None if occ is None else False,
                            prepare=predicted_face if occ is None else None)
        torch.set_grad_enabled(False)
        m = evaluate_estimator(est, cache, output, occlusion=occ, seed=seed, progress=not quiet, knn=knn_index,
                               embeddings=save_embeddings, bootstrap=bootstrap, adapt=adapt,
                               extra={"model": est.name,  # a student under route teacher answers nothing
                                      "student": est.student.name if est.student and est.route != "teacher" else None,
                                      "detector": est.detector.name if est.detector else None, **source,
                                      "detect": detect, "bad_rows": len(bad),
                                      **occlusion_info})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pa = m.get("prior_adaptation") or {}
    typer.echo(_headline(m)
               + (f"  (adapted to the dataset's age mix; unadapted{' with KNN' if m.get('knn') else ''} "
                  f"{pa['mae_unadapted']:.3f})" if pa.get("applied")
                  else "")
               + f"  routed {m['routed_to']}  ({m['failed']} without a face, {len(bad)} bad rows) -> {output}/metrics.json")


@app.command()
def predict(paths: Annotated[list[str] | None, typer.Argument(
                help="image files, folders or globs (`-`: one image on standard input)", show_default=False)] = None,
            model: Annotated[str | None, typer.Option(help="shipped model name, .safetensors, .pt or run folder")] = None,
            fmt: Annotated[str | None, typer.Option("--format", "-f", help="table | json | jsonl | csv | parquet "
                                                     "(default: table; with -o FILE, its extension's)",
                                                     show_default=False)] = None,
            output: Annotated[str | None, typer.Option("--output", "-o", help="write results here (`-`: standard output; jsonl/csv: "
                                                        "streamed, one file at a time, resumable; parquet: a "
                                                        "folder of part files)")] = None,
            resume: Annotated[bool, typer.Option(help="continue --output: skip files already in it (those that "
                                                 "failed too: their records keep the reason)")] = False,
            retry_failed: Annotated[bool, typer.Option(help="with --resume: answer again the files whose records in "
                                                       "--output have an error (unreadable then, no face found, a "
                                                       "worker lost); their old records are taken out")] = False,
            workers: Annotated[int | None, typer.Option(
                help="local: processes that each decode, detect and run the models (0: all in this process; "
                     "default for 64+ files: one per 32 files, up to one per core); ray: actors that each run the whole pipeline "
                     "(default: one per CPU of the Ray)",
                show_default=False)] = None,
            batch_size: Annotated[int, typer.Option(help="faces per model batch")] = 32,
            detect: Annotated[bool, typer.Option("--detect/--no-detect", help="--no-detect: inputs are face crops")] = True,
            save_annotated: Annotated[Path | None, typer.Option(help="write images with boxes and ages here")] = None,
            tta: Annotated[bool, typer.Option("--tta/--no-tta", help="average with the mirrored face where the "
                                              "model's first view is unsure (--no-tta: one view, the models do "
                                              "half the work)")] = True,
            full_tta: Annotated[bool, typer.Option("--full-tta", help="average every face with its mirror")] = False,
            route: Annotated[str | None, typer.Option(help=ROUTE_HELP, show_default=False)] = None,
            student: Annotated[str | None, typer.Option(help=STUDENT_HELP, show_default=False)] = None,
            detector: Annotated[str | None, typer.Option(help=DETECTOR_HELP, show_default=False)] = None,
            backend: Annotated[str, typer.Option(help="auto (fastest here) | torch | torch-bf16 | onnx | onnx-int8")] = "auto",
            onnx_dir: Annotated[Path | None, typer.Option(help=ONNX_DIR_HELP, show_default=False)] = None,
            adapt: Annotated[bool, typer.Option("--adapt/--no-adapt", help="adapt clean faces' ages to the job's own "
                                                "age mix where it is far from the training mix (20+ such faces; "
                                                "results are written at the end; --no-adapt: each face's own "
                                                "answer, streamed)")] = True,
            demo: Annotated[bool, typer.Option(help="run on the bundled astronaut photo")] = False,
            files_from: Annotated[str | None, typer.Option(
                "--files-from", help="also read image paths from this file, one per line (`-`: standard input; "
                "for lists too long for the command line)", show_default=False)] = None,
            quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no notes or progress on stderr (the backend "
                                                "chosen, the age mix, the summary); the count of failed files is still said")] = False,
            engine: Annotated[str, typer.Option(help="local (this machine) | ray (Ray Data: a local Ray, or the "
                                                "cluster at --address; pip install \"agelens\\[ray]\")")] = "local",
            address: Annotated[str | None, typer.Option(help="--engine ray: Ray cluster address (auto, HOST:6379, "
                                                        "ray://HOST:10001); default: start a local Ray")] = None,
            gpus_per_worker: Annotated[float, typer.Option(help="--engine ray: GPUs per model actor (0: CPU)")] = 0.0) -> None:
    """Estimate the age of every face in images; exit code 1 when some files failed."""
    from .inference.inputs import STREAM_FORMATS, expand_inputs, remaining, terminal_safe

    if fmt is None:  # -o ages.jsonl says its format as a user would expect; else the table
        ext = Path(output).suffix.lower().lstrip(".") if output not in (None, "-") else ""
        fmt = ext if ext in ("json", "jsonl", "csv", "parquet") else "table"
        if output not in (None, "-") and fmt == "table":
            raise AgelensError(f"--output {output}: give --format json, jsonl, csv or parquet (its name has no such "
                               "extension to tell)")
    if fmt not in ("table", "json", *STREAM_FORMATS):
        raise AgelensError(f"--format must be table, json, jsonl or csv (or parquet), got {fmt!r}")
    if output == "-":  # as Unix tools read `-o -`: standard output (the text as given: `-o ./-` is a file named -)
        if fmt == "parquet" or resume:
            raise AgelensError("-o -: standard output takes --format json, jsonl, csv or table, without --resume")
        output = None
    output = Path(output) if output is not None else None
    if (workers is not None and workers < 0) or batch_size < 1:
        raise AgelensError(f"--workers must be >= 0 and --batch-size >= 1, got {workers} and {batch_size}")
    from .inference import ENGINES

    if engine not in ENGINES:
        raise AgelensError(f"--engine must be {' or '.join(ENGINES)}, got {engine!r}")
    if engine == "local" and (address is not None or gpus_per_worker):
        raise AgelensError("--address and --gpus-per-worker need --engine ray")
    if engine == "ray" and save_annotated is not None:
        raise AgelensError("--save-annotated needs --engine local")
    if engine == "ray":  # said before the models load and before an -o file is opened
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise AgelensError('--engine ray needs Ray Data: pip install "agelens[ray]"')
    if output is not None and fmt == "table":
        raise AgelensError("--output needs --format json, jsonl or csv (or parquet)")
    if fmt == "parquet" and output is None:
        raise AgelensError("--format parquet needs --output FOLDER")
    if resume and (output is None or fmt not in STREAM_FORMATS):
        raise AgelensError("--resume continues a streamed --output file (--format jsonl or csv) or parquet folder")
    if retry_failed and not resume:
        raise AgelensError("--retry-failed goes with --resume (it answers again the files that failed in --output)")
    if output is not None:
        _check_output(output, folder=fmt == "parquet", flag="--output")
    else:
        _needs_stream("output", "the results are written there; give -o FILE")
    if save_annotated is not None:
        _check_output(save_annotated, folder=True, flag="--save-annotated")
    note = (lambda *_: None) if quiet else _err
    repeated: list[str] = []
    files = expand_inputs(list(paths or []) + _listed(files_from, paths or []), repeated)
    if repeated:
        note(f"{len(repeated)} input(s) named more than once (e.g. {repeated[0]}): each file is answered once")
    stdin_file = _stdin_image(files)
    if demo:
        from importlib import resources

        files.insert(0, str(resources.files("agelens") / "assets" / "astronaut.jpg"))
    if not files:
        raise AgelensError("no input: give image files, folders or globs (or --demo)")
    from .parallel import auto_workers, start_workers_early

    if engine == "local" and (auto_workers(len(files)) if workers is None else workers) > 0:
        start_workers_early()  # their forkserver imports the pipeline while this process loads the models
    from .inference.inputs import in_job
    from .inference.predictor import AgeEstimator
    from .inference.stream import CSV_COLUMNS, csv_rows, open_sink, predict_stream

    tta_flip = _tta(tta, full_tta)
    route = _route(route, model, student, note)
    est = AgeEstimator.from_pretrained(model, tta_flip=tta_flip, route=route, student=student, detector=detector,
                                       backend=_onnx_backend(backend, onnx_dir), onnx_dir=onnx_dir, log=note)
    if backend != "auto" or onnx_dir is not None:  # (auto without --onnx-dir: said as it was chosen)
        note(f"backend: {est.backend}" + (f" from {onnx_dir}" if onnx_dir is not None else ""))
    # the output file is opened only once the models load: a bad --model leaves an earlier file untouched
    if output is not None and not resume and _holds_results(output):
        note(f"{output} holds an earlier job's results: they are replaced (--resume continues that job instead)")
    of_job = in_job(files) if resume else None
    retry = of_job if retry_failed else None  # failed records of files outside this job are kept
    sink = open_sink(output, fmt, resume, retry) if output is not None and fmt in STREAM_FORMATS else None
    left = list(range(len(files))) if sink is None else remaining(files, sink.done)
    todo = [files[i] for i in left]
    number = [i + 1 for i in left]  # each file's place in the whole job: annotated images keep it when resumed
    failed_before = 0 if of_job is None or sink is None else sum(map(of_job, sink.failed_done))
    if sink is not None and (sink.done or sink.retried):
        note(f"resuming {output}: {len(files) - len(todo)} of {len(files)} file(s) already done"
             + (f", {failed_before} of them failed (their records keep the reason; --retry-failed answers them "
                "again)" if failed_before else "")
             + (f"; {len(sink.retried)} failed before and {'is' if len(sink.retried) == 1 else 'are'} tried again"
                if sink.retried else ""))
    results, failed, n_faces, started = [], 0, 0, time.monotonic()
    first_failed: list[str] = []  # named in the closing line, -q or not (before: a count alone)
    if engine == "ray":
        stream = _ray_stream(todo, est, detect, workers, batch_size, address, gpus_per_worker)
    else:
        # adapted ages are known only at the end: the annotated images are drawn then, from the files
        stream = predict_stream(est, todo, detect, workers, batch_size,
                                keep_rgb=save_annotated is not None and not adapt)
    if stdin_file is not None:
        stream = _named(stream, stdin_file, "-")
    # progress with -o, and on a terminal's stderr while the results go to a file or pipe (`> ages.jsonl`)
    if todo and not quiet and (output is not None or sys.stderr.isatty() and not sys.stdout.isatty()):
        from .progress import track

        stream = track(stream, total=len(todo), description="predicting")
    writer = None
    if sink is None and fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")  # as -o writes it
        writer.writerow(CSV_COLUMNS)
    hold = adapt or sink is None and fmt in ("json", "table")  # records kept for the job's age mix / the end
    try:
        for k, (r, rgb) in enumerate(stream):
            failed += r["error"] is not None
            if r["error"] is not None and len(first_failed) < SHOWN_FAILURES:
                first_failed.append(f"{r['file']}: {_reason(r)}")
            n_faces += len(r["faces"] or [])
            if sink is not None:
                sink.write(r)
            elif not adapt and fmt == "jsonl":
                typer.echo(json.dumps(r))
            elif not adapt and writer is not None:
                writer.writerows(csv_rows(r))
            if hold:
                results.append(r)
            if save_annotated is not None and not adapt and r["faces"]:
                _annotate_file(rgb, r, save_annotated, number[k], todo[k])
    finally:
        if sink is not None:
            sink.close()
    if adapt:
        _adapt_job(est, results, sink, output, fmt, note)
        if save_annotated is not None:
            for k, (path, r) in enumerate(zip(todo, results, strict=True)):  # the local engine keeps input order
                if r["faces"]:
                    _annotate_file(None, r, save_annotated, number[k], path)
        if sink is None and fmt == "jsonl":
            for r in results:
                typer.echo(json.dumps(r))
        elif writer is not None:
            for r in results:
                writer.writerows(csv_rows(r))
    if fmt == "json" and output is not None:
        from .utils import atomic_write_text

        atomic_write_text(output, json.dumps(results, indent=1), follow_links=True)
    elif fmt in ("json", "table"):
        _emit(results, fmt)
    if output is not None:  # a batch job's log (stderr to a file under nohup, cron, SLURM) ends with what it did
        note(f"{len(todo) - failed} of {len(todo)} file(s) answered, {n_faces} face(s), in "
             f"{time.monotonic() - started:.1f} s -> {output}")
    if failed or failed_before:  # a resumed job's earlier failures too: the same command, the same exit status
        msg = f"{failed + failed_before} of {len(files) if failed_before else len(todo)} file(s) failed"
        _err(msg + (f" ({failed_before} in an earlier run: --resume --retry-failed answers them again)"
                    if failed_before else "")
             + "".join(f"\n  {terminal_safe(f)}" for f in first_failed)  # one line each, whatever the name holds
             + (f"\n  ... and {failed - len(first_failed)} more (each record's error says why)"
                if failed > len(first_failed) else ""))
        raise typer.Exit(1)


SHOWN_FAILURES = 5  # failed files named on stderr at the end of a job


def _reason(record: dict) -> str:
    """A failed record's error without the file name it may begin with (where the file is said beside it)."""
    return record["error"].removeprefix(f"{record['file']}: ")


def _listed(files_from: str | None, paths: list[str]) -> list[str]:
    """The image paths a --files-from list names, one per line (blank lines skipped; `-`: standard input)."""
    if files_from is None:
        return []
    if files_from == "-":
        if "-" in paths:
            raise AgelensError("--files-from - and the input `-` both read standard input: give one of them")
        _needs_stream("input", "--files-from - reads the file names from it")
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(files_from).read_bytes()
        except OSError as e:
            raise AgelensError(f"--files-from {files_from}: {e.strerror or e}") from None
    # names as the command line takes them (bytes that are no UTF-8 kept, os.fsdecode); a leading byte-order mark
    # (Notepad, PowerShell) is no part of the first name
    names = [os.fsdecode(line.rstrip(b"\r")) for line in data.removeprefix(b"\xef\xbb\xbf").split(b"\n") if line.strip()]
    if files_from == "-" and "-" in names:
        raise AgelensError("--files-from - reads standard input, so the list cannot name `-` (an image on it) too")
    return names




def _stdin_image(files: list[str]) -> str | None:
    """`-` among the inputs (`curl URL | agelens predict -`): the image on standard input, kept in a temporary file
    for the job (removed at exit), whose path replaces `-` in `files`; None when there is none."""
    if "-" not in files:
        return None
    import atexit
    import shutil
    import tempfile

    from .data.adapters import IMAGE_EXTS

    _needs_stream("input", "`-` reads an image from it")
    if sys.stdin.isatty():
        raise AgelensError("`-` reads an image from standard input, but nothing is piped in")
    data = sys.stdin.buffer.read()
    first = data[:4096].split(b"\n", 1)[0].strip()
    named = first and b"\0" not in first and (Path(os.fsdecode(first)).is_file()
                                             or os.fsdecode(first).lower().endswith(tuple(IMAGE_EXTS)))
    if named:  # `ls *.jpg | agelens predict -`
        raise AgelensError("standard input holds file names, not an image: read them with --files-from -")
    folder = tempfile.mkdtemp(prefix="agelens-stdin-")
    atexit.register(shutil.rmtree, folder, True)
    path = str(Path(folder) / "stdin")
    Path(path).write_bytes(data)
    files[:] = [path if f == "-" else f for f in files]
    return path


def _named(stream, real: str, shown: str):
    """The records of `stream` with file `real` reported as `shown` (standard input's temporary file as `-`)."""
    for r, rgb in stream:
        if r["file"] == real:
            r = {**r, "file": shown, "error": r["error"].replace(real, shown) if r["error"] else r["error"]}
        yield r, rgb


def _check_output(path: Path, folder: bool, flag: str) -> None:
    """AgelensError naming the problem where `path` (a file, or with folder=True a folder) cannot be written,
    checked before the job runs, not after it, by writing a file in the nearest folder of the path that exists.
    Nothing is made: the writers make the missing folders, and the output sinks put right what a killed earlier
    job left (`inference.stream.finish_rewrite`) only where the output is missing."""
    import tempfile

    if folder:
        if path.exists() and not path.is_dir():
            raise AgelensError(f"{flag} {path} is a file; give a folder")
        where = Path(os.path.realpath(path))
    else:
        if path.is_dir():
            raise AgelensError(f"{flag} {path} is a folder; give a file name")
        if path.exists() and not path.is_file():  # a device or a pipe (/dev/stdout): written in place
            return
        where = Path(os.path.realpath(path)).parent
    while not where.exists():  # the folders the writers will make: their nearest existing parent is written in
        where = where.parent
    if not where.is_dir():
        raise AgelensError(f"{flag} {path}: a part of the path is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".agelens-write-check.", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise AgelensError(f"{flag} {path}: cannot write in {where} ({e.strerror or e})") from None


def _adapt_job(est, results: list[dict], sink, output: Path | None, fmt: str, note=None) -> None:
    """The job's faces adapted to its own age mix (`AgeEstimator.adapt`), in `results` and in a streamed --output
    (rewritten whole, atomically); a resumed output whose earlier files this run did not hold, or one that is not
    a file that can be swapped (a device or a pipe), is left as streamed. `note` says what was done (stderr)."""
    note = note or _err
    if not results:  # a resumed job with nothing left to answer
        return
    if sink is not None and sink.done:
        note(f"the ages this run added to {output} are each face's own answer, and its earlier lines are left as "
             "they were: a resumed job is not adapted to its age mix as a whole")
        return
    if sink is not None and not (output.is_dir() if fmt == "parquet" else output.is_file()):
        note(f"ages in {output} are each face's own answer: it is not a regular file, so it is not rewritten with "
             "the job's adapted ages (--no-adapt says so up front)")
        return
    info = est.adapt(results)
    if not info["applied"]:
        if "divergence" in info:
            note(f"ages left as answered: the age mix of this job's {info['faces']} clean faces is like the "
                 f"training mix (estimated mean age {info['mix_mean_age']}, training {info['training_mean_age']})")
        return
    if sink is not None:
        from .inference.stream import rewrite_output

        rewrite_output(output, fmt, results)
    from .inference.prior import KL_FROM, KL_FULL

    moved = "fully" if info["strength"] == 1 else f"{info['strength']:.0%} of the way"
    note(f"ages adapted to this job's age mix: {info['faces']} clean faces, estimated mean age "
         f"{info['mix_mean_age']} (training mix {info['training_mean_age']}); the two mixes' ages spread "
         f"differently (divergence {info['divergence']}: adapted from {KL_FROM}, fully from {KL_FULL}), so the "
         f"ages moved {moved}, mean change {info['mean_change']} years, at most {info['max_change']} "
         f"({info['left_as_answered']} occluded or unsure "
         "faces left as answered); --no-adapt keeps each face's own answer")


def _ray_stream(files: list[str], est, detect, workers, batch_size, address, gpus_per_worker):
    """The Ray engine's records (`predict_many(engine="ray")`) as (record, None), as predict_stream yields them."""
    from .inference import predict_many

    for r in predict_many(files, "ray", detect=detect, workers=workers, batch_size=batch_size, address=address,
                          gpus_per_worker=gpus_per_worker, estimator=est):
        yield r, None


def _emit(results: list[dict], fmt: str) -> None:
    if fmt == "json":
        typer.echo(json.dumps(results, indent=1))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    class PipeConsole(Console):  # a closed pipe as Click meets one (exit 141 in `main`), not rich's exit 1
        def on_broken_pipe(self) -> None:
            import errno

            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    from .inference.inputs import terminal_safe

    results = [{**r, "file": terminal_safe(r["file"]), "error": r["error"] and terminal_safe(r["error"])}
               for r in results]  # a file name's control characters shown as \xNN, not acted on by the terminal
    console = PipeConsole(width=None if sys.stdout.isatty() else 160)  # 160 where the table goes to a file or pipe
    if console.width < TABLE_MIN_WIDTH:  # a narrow terminal: a line per face, wrapped between words, not in a number
        for r in results:
            if r["error"]:
                console.print(Text(r["error"], style="red"))  # it names the file
            for i, f in enumerate(r["faces"]):
                console.print(Text(f"{r['file']} face {i}: age {f['age']:.1f} ({f['interval'][0]:.0f}-"
                                   f"{f['interval'][1]:.0f}), box {','.join(f'{v:.0f}' for v in f['box'])}, "
                                   f"{_occluded(f)}, {f['model']}"))
        return
    t = Table(title="agelens predict")
    # a long path or error folds, never cut to "…"; numbers stay whole on one line (a folded age read "88" over ".9")
    for c in ("file", "face", "box", "age", "90% interval", "occluded (score)", "model / error"):
        t.add_column(c, overflow="fold", no_wrap=c not in ("file", "model / error"))
    for r in results:  # file names and errors as Text: printed as they are, never read as markup ("[red]x.jpg")
        if r["error"]:  # the file is in its own column: not again before the reason
            t.add_row(Text(r["file"]), "-", "-", "-", "-", "-", Text(_reason(r), style="red"))
        for i, f in enumerate(r["faces"]):
            t.add_row(Text(r["file"]), str(i), ",".join(f"{v:.0f}" for v in f["box"]), f"{f['age']:.1f}",
                      f"{f['interval'][0]:.0f}-{f['interval'][1]:.0f}", _occluded(f), f["model"])
    console.print(t)


TABLE_MIN_WIDTH = 100  # narrower terminals get a line per face instead of the table


def _occluded(face: dict) -> str:
    return "-" if face["occluded"] is None else f"{'yes' if face['occluded'] else 'no'} ({face['occlusion_score']:.2f})"


def _holds_results(output: Path) -> bool:
    """Whether --output already holds something a new job would replace: a non-empty regular file, or a folder
    with files in it (parquet)."""
    try:
        if output.is_dir():
            return any(output.iterdir())
        return output.is_file() and output.stat().st_size > 0
    except OSError:
        return False


def _annotate_file(rgb, record: dict, out_dir: Path, k: int, path: str) -> None:
    """`_annotate` of one answered file, decoded again where its image did not come with the record; a file that
    cannot be read again or an image that cannot be written is said, and the job goes on."""
    try:
        if rgb is None:
            from .inference.stream import decode_file

            rgb = decode_file(path, reduce=False)[0]
        _annotate(rgb, record["faces"], out_dir, record["file"], k, path)
    except Exception as e:  # the file changed or went since it was answered, a full disk: no drawing, no stop
        _err(f"{record['file']}: not annotated: {e}")


def _annotate(rgb, faces: list[dict], out_dir: Path, src: str, k: int, path: str | None = None) -> None:
    """Writes the image with its faces drawn. path: the file, whose stored size tells whether `rgb` is a reduced
    decode of it (a JPEG too large to keep whole), so the boxes, in the file's pixels, are drawn scaled to it."""
    import contextlib

    import cv2

    from .inference.draw import draw
    from .utils import atomic_write

    if path is not None and faces:
        from .imageio import image_size

        with contextlib.suppress(Exception):  # an unreadable header: drawn as given
            scale = max(image_size(path)) / max(rgb.shape[:2])
            if scale > 1.0:
                faces = [{**f, "box": [v / scale for v in f["box"]]} for f in faces]
    name = f"{k:05d}_{Path(src).stem[:100]}.jpg"  # numbered by the file's place in the job; long names cut
    ok, buf = cv2.imencode(".jpg", draw(rgb, faces, channels="rgb")[..., ::-1])
    if ok:
        atomic_write(Path(out_dir) / name, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))


# what the cards of weights trained on a dataset say of its licence (`export weights`)
DATA_LICENCES = {"utkface": "UTKFace: non-commercial research use only",
                 "aaf": "All-Age-Faces: research use only"}


def _data_licence(cfg) -> str:
    """The card's licence line for weights trained on cfg's datasets (the dataset's own terms where not known)."""
    names = dict.fromkeys(d.dataset for d in [cfg.data, *cfg.extra_data])
    return "weights trained on " + "; ".join(DATA_LICENCES.get(n, f"dataset {n!r} (under its own licence)")
                                             for n in names)


@export_app.command("weights")
def export_weights_cmd(run: Annotated[Path, typer.Argument(help="run folder (best.pt) or checkpoint .pt")],
                       name: Annotated[str, typer.Option(help="name of the shipped model")] = "teacher",
                       output: Annotated[Path | None, typer.Option(help="folder (default: the package's weights/, "
                                                                   "where predict's shipped models are)")] = None,
                       licence: Annotated[str | None, typer.Option(help="the weights' licence, as the card states it "
                                                                   "(default: from the datasets the run trained on)",
                                                                   show_default=False)] = None,
                       force: Annotated[bool, typer.Option(help="replace a shipped model of that name in the "
                                                           "package's weights/")] = False) -> None:
    """Write a checkpoint as fp16 safetensors + JSON card (with its test metrics when the run has them)."""
    from .models.checkpoint import model_from_checkpoint
    from .models.weights import export_weights, weights_dir

    out_dir = output or weights_dir()
    shipped = out_dir.resolve() == weights_dir().resolve() and (out_dir / f"{name}.safetensors").is_file()
    if shipped and not force:  # before: `export weights RUN`, as calibrate advised, replaced the shipped teacher
        raise AgelensError(f"this would replace the shipped {name} ({out_dir / (name + '.safetensors')}) that predict "
                           "uses: give --output DIR (and --name) for your own model, or --force to replace it")
    ck = run / "best.pt" if run.is_dir() else run
    model, cfg = model_from_checkpoint(ck)
    test_p = ck.parent / "test" / "metrics.json"
    card = {"source_checkpoint": str(ck), "test_metrics": json.loads(test_p.read_text()) if test_p.is_file() else None,
            "licence": licence or _data_licence(cfg)}
    more = {d.name: json.loads((d / "metrics.json").read_text()) for d in sorted(ck.parent.glob("test_*"))
            if (d / "metrics.json").is_file()}  # the occluded test faces (a student), each extra dataset's test part
    if more:
        card["more_test_metrics"] = more
    if cfg.model.head == "binary":  # the occlusion detector ships with its validation-chosen threshold
        card["threshold"] = float((card["test_metrics"] or {}).get("threshold", 0.5))
    p = export_weights(model, cfg, out_dir, name, card)
    typer.echo(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")


ONNX_DIR_HELP = ("a folder made by `agelens export onnx` (your own models, runs without torch): its models answer, "
                 "through onnxruntime")


def _onnx_backend(backend: str, onnx_dir: Path | None) -> str:
    """--backend for an --onnx-dir job: auto means onnxruntime (int8 where this CPU pays for it); torch is refused."""
    if onnx_dir is None:
        return backend
    if backend.startswith("torch"):
        raise AgelensError(f"--onnx-dir runs an ONNX export: --backend {backend} cannot run it (use onnx or onnx-int8)")
    if backend != "auto":
        return backend
    from .inference.predictor import choose_backend

    chosen, _ = choose_backend()
    return chosen if chosen.startswith("onnx") else "onnx"


@app.command()
def serve(host: Annotated[str, typer.Option(help="address to bind (default: loopback only)")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="TCP port (0: any free port, said on stderr)")] = 8000,
          model: Annotated[str | None, typer.Option(help="shipped model name, .safetensors, .pt or run folder")] = None,
          route: Annotated[str | None, typer.Option(help=ROUTE_HELP, show_default=False)] = None,
          student: Annotated[str | None, typer.Option(help=STUDENT_HELP, show_default=False)] = None,
          detector: Annotated[str | None, typer.Option(help=DETECTOR_HELP, show_default=False)] = None,
          max_upload_mb: Annotated[float, typer.Option(help="largest request body in MB (413 above)")] = 10.0,
          max_pixels: Annotated[int, typer.Option(help="largest image in pixels decoded (a large JPEG at 1/2-1/8 of its size), checked before decoding (413 above)")] = 40_000_000,
          max_queue: Annotated[int, typer.Option(help="requests that may wait for the models (503 with Retry-After "
                                                 "beyond it)")] = 64,
          backend: Annotated[str, typer.Option(help="auto (fastest here) | torch | torch-bf16 | onnx | onnx-int8")] = "auto",
          onnx_dir: Annotated[Path | None, typer.Option(help=ONNX_DIR_HELP, show_default=False)] = None,
          allow_origin: Annotated[list[str] | None, typer.Option(
              help="a web page origin (https://app.example.com, or *) allowed to call the API from a browser (CORS); "
                   "repeat for several; none by default", show_default=False)] = None,
          log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info") -> None:
    """HTTP service: POST /v1/predict (multipart `file` or JSON base64), GET /healthz, demo page at GET /."""
    try:
        import uvicorn

        from .serve.app import CONNECTIONS, create_app
    except ImportError as e:
        raise AgelensError(f"serve needs fastapi, uvicorn and python-multipart (agelens dependencies; "
                           f"{e.name} is missing): reinstall agelens") from None
    from .inference.predictor import AgeEstimator

    if not 0 <= port < 65536:
        raise AgelensError(f"--port must be in 0..65535 (0: any free port), got {port}")
    if max_upload_mb <= 0 or max_pixels < 4 or max_queue < 0:
        raise AgelensError("--max-upload-mb and --max-pixels must be positive, --max-queue at least 0")
    for o in allow_origin or []:
        if o != "*" and not (o.startswith(("http://", "https://")) and "/" not in o.split("://", 1)[1]):
            raise AgelensError(f"--allow-origin {o!r}: give an origin as scheme://host[:port] (no path), or *")
    requested, sock = port, _listen(host, port)  # before the models load: a port in use is said at once, in one line
    route = _route(route, model, student)
    est = AgeEstimator.from_pretrained(model, route=route, student=student, detector=detector,
                                       backend=_onnx_backend(backend, onnx_dir), onnx_dir=onnx_dir, log=_err)
    web = create_app(est, max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels, max_queue=max_queue,
                     allow_origins=allow_origin)
    if host not in ("127.0.0.1", "localhost", "::1"):
        _err(f"warning: binding {host}: the service has no authentication; put it behind a proxy you control")
    port = sock.getsockname()[1]
    _err(f"listening on http://{f'[{host}]' if ':' in host else host}:{port}"
         + (" (--port 0: a free port)" if port != requested else ""))  # uvicorn says so only when it binds itself
    server = uvicorn.Server(uvicorn.Config(web, host=host, port=port, log_level=log_level, workers=1,
                                           limit_concurrency=max(CONNECTIONS, 2 * max_queue)))
    try:
        server.run(sockets=[sock])
    except SystemExit as e:
        # SIGTERM is how a service manager stops a server: uvicorn drains the requests in flight, then passes the
        # signal on, which would end the process with 143 and mark a systemd unit as failed
        if e.code != 143:
            raise
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has drained the requests in flight
        pass
    if not server.started:
        raise AgelensError(f"the service did not start on {host}:{port} (its log above says why)")


def _listen(host: str, port: int):
    """The service's listening socket, bound (with SO_REUSEADDR, as uvicorn binds it) before anything slow runs."""
    import errno
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except socket.gaierror as e:
        raise AgelensError(f"--host {host}: {e.strerror}") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise AgelensError(f"port {port} on {host} is in use (another service, or agelens serve already "
                               "running): pick another with --port, or --port 0 for any free one") from None
        raise AgelensError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


@app.command()
def curate(config: Annotated[Path | None, typer.Option("--config", "-c", help="curate YAML (sources:, output:, ...)")] = None,
           source: Annotated[list[str] | None, typer.Option(help="DATASET=ROOT[,groups_csv=F][,csv_path=F][,name=N]"
                                                                 "[,duplicate_groups=true] (repeatable)")] = None,
           output: Annotated[Path | None, typer.Option("--output", "-o", help="manifest CSV")] = None,
           conflicts: Annotated[str | None, typer.Option(help="duplicate groups with conflicting labels: drop | median | first (default: the config's, else "
                                                                    "drop)")] = None,
           near_dup: Annotated[int | None, typer.Option(help="max Hamming distance of 256-bit dHashes (-1: exact only; default: "
                                                             "the config's, else 12)")] = None,
           age_tolerance: Annotated[float | None, typer.Option(help="age spread within a duplicate group still consistent (default: the "
                                                                   "config's, else 0)")] = None,
           drop_outliers: Annotated[bool | None, typer.Option("--drop-outliers/--keep-outliers", help="remove flagged outliers (default: the "
                                                                                                "config's, else keep)")] = None,
           report: Annotated[Path | None, typer.Option(help="JSON report (default: OUTPUT.report.json)")] = None,
           workers: Annotated[int | None, typer.Option(help="processes for image hashing (default: the config's, else 2)")] = None) -> None:
    """Merge dataset adapters into one manifest CSV, resolve duplicate groups, flag outliers, count demographics."""
    from .fairness.curate import curate as run_curate
    from .fairness.curate import format_counts, load_curate_config, parse_source

    cfg = load_curate_config(config, sources=[parse_source(s) for s in source or []],
                             output=str(output) if output else None, conflicts=conflicts, near_dup=near_dup,
                             age_tolerance=age_tolerance, drop_outliers=drop_outliers,
                             report=str(report) if report else None, workers=workers)
    r = run_curate(cfg, log=typer.echo)
    typer.echo(format_counts(r["counts_before"], r["counts_after"]))
    typer.echo(f"{r['records_in']} → {r['records_out']} records; {r['duplicate_groups']} duplicate groups, "
               f"{r['conflicting_groups']} with conflicting labels ({cfg.conflicts}); {len(r['outliers'])} outliers flagged; "
               f"{len(r['filled_labels'])} record(s) given a duplicate's gender/race; {len(r['unreadable'])} unreadable -> {cfg.output}, {r['report']}")


@app.command()
def index(model: Annotated[str, typer.Argument(help="run folder, .pt checkpoint, .safetensors or shipped name")],
          output: Annotated[Path, typer.Option("--output", "-o", help="index file (.npz)")],
          config: ConfigOpt = None, overrides: Overrides = None,
          criterion: Annotated[str, typer.Option(help="tune k, w for validation mae | cmae")] = "mae",
          k: Annotated[int | None, typer.Option("--k", help="neighbours, fixed instead of tuned")] = None,
          w: Annotated[float | None, typer.Option("--w", help="weight of the neighbours' age in [0, 1], fixed instead "
                                                  "of tuned")] = None,
          quiet: Annotated[bool, typer.Option(help="no progress output")] = False) -> None:
    """Build the KNN-refinement index (faiss) of a model's training embeddings; k, w tuned on validation."""
    from .fairness.knn import K_GRID, W_GRID, build_index_file

    if (k is not None and k < 1) or (w is not None and not 0 <= w <= 1):
        raise AgelensError(f"--k must be >= 1 and --w in [0, 1], got --k {k} --w {w}")
    if criterion not in ("mae", "cmae"):  # before: a traceback after the caches were embedded
        raise AgelensError(f"--criterion must be mae or cmae, got {criterion!r}")
    idx = build_index_file(model, output, config, overrides, criterion, progress=not quiet, log=typer.echo,
                           ks=K_GRID if k is None else (k,), ws=W_GRID if w is None else (w,))
    typer.echo(f"wrote {output}: {idx.index.ntotal} faces, k={idx.k}, w={idx.w}, val MAE "
               f"{idx.meta['val_mae_before']:.3f} → {idx.meta['val_mae_after']:.3f}")


def _evaluated_part(predictions: Path) -> str | None:
    """The split part an `agelens evaluate` output beside `predictions` says it ran on (its metrics.json), or None."""
    try:
        part = json.loads((predictions.parent / "metrics.json").read_text()).get("part")
    except (OSError, ValueError, AttributeError):
        return None
    return str(part) if part else None


CALIBRATE_ADVISED = 500  # faces: fewer leave a 90 % conformal z uncertain by a few points of coverage


@app.command()
def calibrate(model: Annotated[str, typer.Argument(help="shipped name or .safetensors (the card is updated), or a "
                                                      "run folder / .pt (reported only)")],
              config: Annotated[Path | None, typer.Option("--config", "-c", help="config whose prepared caches to use "
                                                          "(its data and every extra_data)")] = None,
              predictions: Annotated[list[Path] | None, typer.Option(
                  "--predictions", help="instead of --config: `agelens evaluate` predictions.csv of a val part (end "
                  "to end), one per dataset; repeat the option")] = None,
              part: Annotated[str, typer.Option(help="split part to calibrate on (never the test part)")] = "val",
              occluded: Annotated[bool, typer.Option(help="every face with a synthetic occluder (the student)")] = False,
              level: Annotated[float, typer.Option(help="interval coverage to calibrate for")] = 0.9,
              write: Annotated[bool, typer.Option(help="store interval_z in the model card")] = True,
              force: Annotated[bool, typer.Option("--force", help="write into a shipped model's card (the installed "
                                                  "package's own)")] = False,
              quiet: Annotated[bool, typer.Option(help="no progress output")] = False) -> None:
    """Split-conformal interval calibration: finds z so that age ± z·spread covers LEVEL of held-out ages and
    stores it in the model card (`interval_z`), where predict, the service and the ONNX export read it."""
    from .evaluate.calibrate import calibrate_model, calibrate_predictions
    from .utils import atomic_write_json, json_indent, shipped_models, weights_dir

    if part == "test":
        raise AgelensError("calibrate on val (or train), never on the test part the metrics are reported on")
    if not 0 < level < 1:
        raise AgelensError(f"--level must be a coverage in (0, 1), got {level}")
    if (config is None) == (not predictions):
        raise AgelensError("calibrate needs either --config (cached faces) or --predictions (end-to-end predictions)")
    if predictions and (part != "val" or occluded):
        raise AgelensError("--part and --occluded choose cached faces for --config; with --predictions the faces are "
                           "those `agelens evaluate` answered (its part and its --occlude)")
    if predictions:
        for f in predictions:
            if not f.is_file():
                raise AgelensError(f"--predictions: no such file: {f}")
            said = _evaluated_part(f)  # the part `evaluate --config` recorded; else the folder's name is the hint
            if said == "test" or (said is None and f.parent.name.lower().startswith("test")):
                raise AgelensError(f"--predictions: {f} " + ("is of the test part (its metrics.json says so)" if said
                                   else "looks like a test part (its folder's name)")
                                   + "; calibrate on val predictions")
        from .models.weights import resolve_model

        _, mcfg, card = resolve_model(model)
        name = str(card.get("name", model))  # the name evaluate wrote in its `model` column
        try:  # intervals clipped to the model's own age range (before: 0-100 whatever it was)
            rec = calibrate_predictions([str(f) for f in predictions], name, level, mcfg.model.min_age,
                                        mcfg.model.max_age)
        except ValueError as e:
            raise AgelensError(str(e)) from None
    else:
        try:
            rec = calibrate_model(model, str(config), part, occluded, level, progress=not quiet)
        except ValueError as e:  # too few faces for the level
            raise AgelensError(str(e)) from None
    typer.echo(json.dumps(rec, indent=1))
    n = int(rec["coverage"]["n"])
    if n < CALIBRATE_ADVISED:
        typer.echo(f"note: calibrated on {n} faces; z from fewer than {CALIBRATE_ADVISED} is uncertain (its coverage "
                   "on new faces may miss the level by several points)", err=True)
    if not write:
        return
    if model in shipped_models():
        if not force:
            raise AgelensError(f"not written: {model} is a shipped model and its card is part of the installed package "
                               f"({weights_dir()}): every user of this install would get the new intervals, and a "
                               "reinstall undoes them; --force writes it there, --no-write only reports")
        card_p = weights_dir() / f"{model}.json"
    elif Path(model).suffix in (".safetensors", ".json"):
        card_p = Path(model).with_suffix(".json")
    else:
        typer.echo("not written: a run folder or .pt has no model card; export it first, then calibrate the "
                   ".safetensors: `agelens export weights RUN --name NAME --output DIR`")
        return
    if not card_p.is_file():
        raise AgelensError(f"no model card at {card_p} to write interval_z into")
    text = card_p.read_text()
    card = json.loads(text)
    card["interval_z"], card["interval_calibration"] = rec["interval_z"], rec
    atomic_write_json(card_p, card, indent=json_indent(text))  # the card's own layout: a diff of what changed
    typer.echo(f"interval_z = {rec['interval_z']} written to {card_p}")


@app.command()
def report(path: Annotated[Path, typer.Argument(help="run folder (uses test/) or `agelens evaluate` output folder")],
           output: Annotated[Path | None, typer.Option("--output", "-o", help="folder for report.html (default: PATH/report)")] = None,
           samples: Annotated[int, typer.Option(help="faces with Grad-CAM / region heatmaps")] = 6) -> None:
    """Fairness report: self-contained HTML with error-by-age, per-group CIs, confusion, t-SNE, Grad-CAM, regions."""
    from .fairness.report import build_report

    build_report(path, output, samples, log=typer.echo)


@app.command()
def cv(config: ConfigOpt = None, overrides: Overrides = None,
       folds: Annotated[int, typer.Option(help="number of group-safe folds")] = 5,
       quiet: Annotated[bool, typer.Option(help="no progress output")] = False) -> None:
    """k-fold cross-validation (resumable): trains and tests every fold, mean ± std of MAE, CMAE, bias."""
    from .fairness.cv import cv_dir, format_cv, run_cv

    cfg = _load(config, overrides)
    summary = run_cv(cfg, folds, progress=not quiet, log=typer.echo if not quiet else (lambda *_: None))
    typer.echo(format_cv(summary))
    typer.echo(f"-> {cv_dir(cfg, folds) / 'cv.json'}")


@export_app.command("onnx")
def export_onnx_cmd(output: Annotated[Path, typer.Option("--output", "-o", help="folder for the .onnx files")],
                    teacher: Annotated[str, typer.Option(help="teacher: shipped name, .safetensors, .pt, run")] = "teacher",
                    student: Annotated[str | None, typer.Option(help="student (default: shipped)")] = None,
                    detector: Annotated[str | None, typer.Option(help="occlusion detector (default: shipped)")] = None,
                    int8: Annotated[str | None, typer.Option(help="static (QDQ, calibrated; the default with "
                                                             "--calibration) | shipped (static, from the ranges "
                                                             "shipped with the weights: no faces needed) | dynamic | "
                                                             "none (the default without)")] = None,
                    calibration: Annotated[Path | None, typer.Option(help="prepared face cache for static int8, "
                                                                     "e.g. cache/utkface/val")] = None,
                    n_calib: Annotated[int, typer.Option(help="calibration faces (the percentile calibrator keeps "
                                                         "their activations in memory: about 60 MB a face)")] = 64) -> None:
    """ONNX graphs (dynamic batch; preprocessing, flip-TTA and decoding inside) + int8 copies + manifest.json."""
    from .export.onnx import export_all
    from .models.weights import shipped_models
    from .utils import SHIPPED

    shipped = shipped_models()
    models = {"teacher": teacher}
    for role, given in (("student", student), ("occlusion", detector)):
        if given or role in shipped:
            models[role] = given or role
    # the face networks predict verifies every face with (before: left out, so an export found other faces)
    models.update({r: r for r in SHIPPED if r.startswith("faceness") and r in shipped})
    if calibration is not None and int8 not in (None, "static"):
        raise AgelensError(f"--calibration is for --int8 static; --int8 {int8} would not read it")
    if calibration is not None and not calibration.is_dir():
        raise AgelensError(f"--calibration {calibration}: not a prepared face cache folder (`agelens prepare -c "
                           "CONFIG` makes one, e.g. cache/utkface/val; --int8 shipped needs none)")
    if n_calib < 1:
        raise AgelensError(f"--n-calib must be >= 1, got {n_calib}")
    from .faces import animal

    # the cat / non-face check beside them, so that a machine without torch checks faces as this one does
    export_all(output, models, int8 or ("static" if calibration else "none"), calibration, n_calib, log=typer.echo,
               also=lambda d: animal.export(d / f"{animal.FORMAT}.onnx"))
    typer.echo(f"wrote {output}/{animal.FORMAT}.onnx (the cat and non-face check)")
    typer.echo(f"wrote {output}/manifest.json; use: AgeEstimator.from_pretrained(backend='onnx', onnx_dir='{output}')")


def _terminated(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    """SIGTERM (`timeout`, systemd, SLURM, Kubernetes) ends a command as Ctrl-C does: output files closed whole,
    worker processes shut down; exit status 143 (128 + 15)."""
    _err("terminated")
    raise SystemExit(143)


_CLOSED: set[str] = set()  # the standard streams ("input", "output", "error") the caller closed


def _closed(stream, write: bool = True) -> bool:
    """Whether a standard stream was closed by the caller: None, a descriptor no longer open, or (an output) one
    that cannot be written (after `2>&-` the interpreter's start-up may open a file read-only as descriptor 2)."""
    if stream is None:
        return True
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # replaced by a test runner or an IDE: in use
        return False
    try:
        import fcntl
    except ImportError:  # Windows
        return False
    try:
        return write and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    except OSError:
        return True


def _usable_streams() -> None:
    """Closed standard streams (`<&-`, `>&-`, `2>&-`) are read and written as the null device, their descriptor
    held by it so that no file opened later takes it (an `-o` file would become descriptor 1), and named in
    `_CLOSED`: where a command's results or input are due on one, it says so (`_needs_stream`). stdout/stderr in
    an encoding short of a file name's characters (LC_ALL=C with PYTHONUTF8=0) write them as escapes instead of
    failing the job."""
    for fd, (attr, name) in enumerate((("stdin", "input"), ("stdout", "output"), ("stderr", "error"))):
        if not _closed(getattr(sys, attr), write=fd > 0):
            continue
        _CLOSED.add(name)
        try:
            os.fstat(fd)  # open, read-only, taken by another file at start-up: left to it
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        setattr(sys, attr, open(os.devnull, "r" if fd == 0 else "w"))  # noqa: SIM115 (the process's stream)
    for stream in (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if enc and enc != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _needs_stream(name: str, why: str) -> None:
    """An error where a command's results or input are due on a standard stream the caller closed."""
    if name in _CLOSED:
        raise AgelensError(f"standard {name} is closed: {why}")


def main() -> None:
    """Console entry point: AgelensError and bad paths become one-line messages with exit code 2; SIGTERM ends
    the command cleanly. The process then ends without the interpreter's teardown (`_exit_now`)."""
    import signal

    code: int | str | None = 0
    signal.signal(signal.SIGTERM, _terminated)
    _usable_streams()
    try:
        from .registry import load_plugins

        load_plugins()  # the user's components (AGELENS_PLUGINS, agelens.plugins entry points): docs/extending.md
        app()
    except SystemExit as e:
        code = e.code
        if code == 130:  # Ctrl-C: typer turns the KeyboardInterrupt into exit status 130 without a word
            _err("interrupted")
        elif code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":
            # the reader of our output went (`agelens predict DIR | head`): Click exits 1, which here means "some
            # files failed"; a closed pipe ends a Unix tool quietly with 141 (128 + SIGPIPE), as `yes | head` does
            code = 141
    except AgelensError as e:
        from .inference.inputs import terminal_safe

        _err(terminal_safe(f"error: {e}"))  # one line, whatever a file name in it holds
        code = 2
    except OSError as e:  # a path that cannot be read or written, a full disk
        _err(f"error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
        code = 2
    except KeyboardInterrupt:
        _err("interrupted")
        code = 130
    _exit_now(code)


def _exit_now(code: int | str | None) -> None:
    """End the process as `sys.exit(code)` would, less the interpreter's teardown (freeing every module and object:
    about 0.1 s, a sixth of `agelens predict photo.jpg`): exit handlers run and the standard streams are flushed
    first, and every output file is closed by then. Where a non-daemon thread is still running, or the exit
    handlers cannot be run this way, it is a plain sys.exit."""
    import atexit
    import contextlib
    import threading

    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_handlers is None or any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, exit status 1
        _err(str(code))
        code = 1
    run_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a closed pipe or stream (None: `2>&-`)
            stream.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
