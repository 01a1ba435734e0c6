"""`agelens occlude IN OUT`: occluded copies of every image under IN, written to OUT with the same relative paths,
plus OUT/occlusions.csv (file, output, status, type, style, area fractions, reason). Landmarks come from FaceMesh on
each image (the largest face); faces without landmarks are listed with the reason and not written. Each image's
occluder is drawn from (seed, its relative path), so it does not change as files are added or left out; the CSV
grows, in file order, as images are done (an interrupted run lists what it wrote). An
OUT that holds an earlier run's occlusions.csv is refused unless overwrite=True, which first deletes that run's
outputs."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AgelensError
from ..parallel import CRASHED, crash_safe_map, per_input
from ..utils import atomic_write
from .synth import OcclusionError, OcclusionMix, occlude

CSV_FIELDS = ["file", "output", "status", "type", "style", "area_fraction", "eye_fraction", "mouth_fraction", "reason"]


@dataclass
class _Job:
    src: str
    dst: str
    key: int  # the image's own seed: a stable hash of its path relative to the input


def path_key(relative: str) -> int:
    """A stable 63-bit number for a relative path (the same on every machine and Python run)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(relative.replace("\\", "/").encode()).digest()[:8], "big") >> 1


# extensions OpenCV writes; an image of another kind (GIF, HEIC, AVIF...) is written as PNG, named NAME.EXT.png
ENCODED = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def output_path(dst: Path) -> Path:
    """Where an occluded copy is written: dst, or dst + ".png" where OpenCV cannot write dst's format."""
    return dst if dst.suffix.lower() in ENCODED else dst.with_name(dst.name + ".png")


_analyzer = None


def _init_worker() -> None:
    global _analyzer
    from ..faces.detect import FaceAnalyzer

    _analyzer = FaceAnalyzer()


def _error_row(src: str, reason: str = "") -> dict:
    """A CSV row of a photo that was not occluded (fields filled in by `_occlude_one` as it goes)."""
    return {**dict.fromkeys(CSV_FIELDS, ""), "file": src, "status": "error", "reason": reason}


def _crashed_row(job: _Job) -> dict:
    return _error_row(job.src, CRASHED)


def _occlude_one(args: tuple[_Job, OcclusionMix, int]) -> dict:
    import cv2

    from ..faces.prepare import largest_face
    from ..imageio import load_image

    job, mix, seed = args
    row = _error_row(job.src)
    try:
        rgb = load_image(job.src)
        rng = np.random.default_rng((seed, job.key))
        kind = mix.sample(rng)
        if kind is None:
            out, row["status"], row["type"] = rgb, "clean", "clean"
        else:
            faces = [f for f in _analyzer.find_faces(rgb) if f.landmarks is not None]
            if not faces:
                raise OcclusionError("no face landmarks found (FaceMesh failed), occluder not placed")
            face = largest_face(faces)
            occ = occlude(rgb, face.landmarks, kind, rng)
            out = occ.image
            row.update(status="ok", type=kind, style=occ.style, area_fraction=f"{occ.fraction:.4f}",
                       eye_fraction=f"{occ.parts['eyes']:.4f}" if "eyes" in occ.parts else "",
                       mouth_fraction=f"{occ.parts['mouth']:.4f}" if "mouth" in occ.parts else "")
        dst = output_path(Path(job.dst))
        ext = dst.suffix.lower()
        ok, buf = cv2.imencode(ext, cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else [])
        if not ok:
            raise AgelensError(f"could not encode {dst}")
        atomic_write(dst, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))
        row["output"] = str(dst)
    except AgelensError as e:
        row["reason"] = str(e)
    return row


def _clear_earlier_run(dst: Path, overwrite: bool) -> None:
    """Refuse a dst that holds an earlier run (its occlusions.csv), or with overwrite delete that run's outputs and
    CSV (nothing else in dst)."""
    csv_path = dst / "occlusions.csv"
    if not csv_path.is_file():
        return
    if not overwrite:
        raise AgelensError(f"{dst} holds an earlier run (occlusions.csv): give an empty folder, or --overwrite to "
                           "delete that run's outputs first")
    with open(csv_path, newline="") as f:
        outputs = [r.get("output") or "" for r in csv.DictReader(f)]
    for o in outputs:
        p = Path(o)
        if o and p.is_file() and dst.resolve() in p.resolve().parents:
            p.unlink()
    csv_path.unlink()


def occlude_folder(src: str | Path, dst: str | Path, mix: OcclusionMix, seed: int = 0, workers: int = 2,
                   limit: int = 0, progress: bool = True, overwrite: bool = False) -> dict:
    """Write occluded copies of every image under src into dst; returns a summary (counts, fraction stats)."""
    from ..data.adapters import IMAGE_EXTS
    from ..progress import track

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise AgelensError(f"input not found: {src}")
    if src.resolve() == dst.resolve() or src.resolve() in dst.resolve().parents:
        raise AgelensError(f"output {dst} must not be the input folder or inside it")
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if limit > 0:
        files = files[:limit]
    if not files:
        raise AgelensError(f"no images found in {src}")
    _clear_earlier_run(dst, overwrite)
    rel = [f.name if src.is_file() else f.relative_to(src).as_posix() for f in files]
    jobs = [_Job(str(f), str(dst / r), path_key(r)) for f, r in zip(files, rel, strict=True)]
    args = [(j, mix, seed) for j in jobs]
    if workers <= 1:
        _init_worker()
        it = map(_occlude_one, args)
    else:  # a worker that dies on a photo (a native crash) fails that photo only, instead of hanging the run
        chunks = [(jobs[i:i + 8], mix, seed) for i in range(0, len(jobs), 8)]
        it = crash_safe_map(per_input(_occlude_one), chunks, workers, _crashed_row, _init_worker)
    dst.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    # the rows come in file order (both maps keep it); the CSV grows as images are done: a stop leaves what was done
    with open(dst / "occlusions.csv", "w", newline="") as f:
        live = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        live.writeheader()
        for row in track(it, total=len(jobs), description="occluding", enabled=progress):
            rows.append(row)
            live.writerow(row)
            f.flush()
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    """Counts per status and type, and how many of the occluders with part bounds (the paper's types) sit inside
    them (None when none has: the newer families)."""
    from .synth import BOUNDS

    ok = [r for r in rows if r["status"] == "ok"]
    inside, bounded, parts = 0, 0, {"eyes": [], "mouth": []}
    for r in ok:  # only the paper's types have part bounds (the newer families record no part fractions)
        good, measured = True, False
        for part, key in (("eyes", "eye_fraction"), ("mouth", "mouth_fraction")):
            if r[key] != "":
                v = float(r[key])
                parts[part].append(v)
                good &= BOUNDS[part][0] <= v <= BOUNDS[part][1]
                measured = True
        inside += good and measured
        bounded += measured
    q = {p: ({"min": round(min(v), 4), "p1": round(float(np.percentile(v, 1)), 4),
              "median": round(float(np.median(v)), 4), "p99": round(float(np.percentile(v, 99)), 4),
              "max": round(max(v), 4), "n": len(v)} if v else None) for p, v in parts.items()}
    return {"images": len(rows), "status": dict(Counter(r["status"] for r in rows)),
            "types": dict(Counter(r["type"] for r in ok)), "with_part_bounds": bounded, "inside_bounds": inside,
            "inside_bounds_share": round(inside / bounded, 4) if bounded else None, "fractions": q,
            "errors": dict(Counter(r["reason"] for r in rows if r["status"] == "error").most_common(5))}
