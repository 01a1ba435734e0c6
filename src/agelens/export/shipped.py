"""The shipped models' ONNX export, kept in a cache folder keyed by the weights: found, or made once (needs torch)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path

from ..errors import AgelensError, CheckpointError
from ..utils import SHIPPED, atomic_write_json, int8_flavor, weights_dir

FINGERPRINT_MEMO = "fingerprints.json"  # shipped_fingerprint's memo: key of the files' stats → fingerprint
FINGERPRINT_MEMO_SIZE = 16  # entries kept (one per state of the weights folder seen)
EXPORT_FORMAT = "agelens-onnx-v5"  # bump when the graphs change (v2: constant padding folded into Conv; v3: int8
# copies from the shipped ranges; v4: int8 keeps the first block in fp32; v5: int8w7's depthwise Conv 8-bit): redone


def _fingerprinted_files() -> list[tuple[str, Path]]:
    """(label, path) of every file the fingerprint reads, in its order: per shipped role its weights, card and int8
    ranges."""
    out = []
    for role in SHIPPED:
        p = weights_dir() / f"{role}.safetensors"
        if p.is_file():
            out.append((role, p))
            card = p.with_suffix(".json")  # the card's calibration (interval_z, thresholds) is in the export too
            if card.is_file():
                out.append(("", card))
            for ranges in sorted(weights_dir().glob(f"{role}.*int8-ranges.json")):  # the int8 copies' ranges
                out.append((ranges.name, ranges))
    return out


def shipped_fingerprint() -> str:
    """SHA-256 over the export format and the shipped weights (names + bytes): the key of their cached export.
    Remembered per file list, sizes and modification times (FINGERPRINT_MEMO in the cache root), so a process
    does not read and hash 30 MB of weights at every start (48 ms against 1 ms)."""
    files = _fingerprinted_files()
    stats = [(label, str(p), st.st_size, st.st_mtime_ns) for label, p in files for st in (p.stat(),)]
    key = hashlib.sha256(json.dumps([EXPORT_FORMAT, stats]).encode()).hexdigest()
    memo_p = onnx_cache_root() / FINGERPRINT_MEMO
    try:
        memo = json.loads(memo_p.read_text())
    except (OSError, ValueError):
        memo = {}
    if isinstance(memo, dict) and isinstance(memo.get(key), str):
        return memo[key]
    h = hashlib.sha256(EXPORT_FORMAT.encode())
    for label, p in files:
        h.update(label.encode())
        h.update(p.read_bytes())
    fp = h.hexdigest()[:16]
    with contextlib.suppress(OSError):  # a read-only cache only costs the hashing again next time
        kept = list((memo if isinstance(memo, dict) else {}).items())[-(FINGERPRINT_MEMO_SIZE - 1):]
        atomic_write_json(memo_p, {**dict(kept), key: fp})
    return fp


def _home_cache() -> Path | None:
    """$XDG_CACHE_HOME, else ~/.cache; None where no home can be found (a container's uid with no passwd entry and
    no HOME) or HOME is set empty (which would put the cache in the working folder)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg)
    if os.environ.get("HOME") == "":
        return None
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # "Could not determine home directory"
        return None
    return home / ".cache" if str(home) not in ("", ".") else None


def _home_root() -> Path | None:
    home = _home_cache()
    return home / "agelens" / "onnx" if home else None


def _temp_root() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"agelens-{uid}" / "onnx"


def _home_writable(root: Path) -> bool:
    """The home cache root exists (made here if missing) and can be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(root, os.W_OK | os.X_OK)


def _private(root: Path) -> bool:
    """The temp cache root (TMP/agelens-UID/onnx) is this user's alone: its folder (made here if missing) is a real
    folder, not a link, owned by this user and closed to others (made so where it is ours), and so is `root`. A
    folder of that name planted by another user in the shared temp folder is neither read nor written."""
    mine = (lambda st: st.st_uid == os.getuid()) if hasattr(os, "getuid") else (lambda st: True)
    try:
        root.parent.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(root.parent)
        if not stat.S_ISDIR(st.st_mode) or not mine(st):
            return False
        if st.st_mode & 0o077:
            os.chmod(root.parent, 0o700)
        root.mkdir(exist_ok=True)
        st = os.lstat(root)
        return stat.S_ISDIR(st.st_mode) and mine(st) and os.access(root, os.W_OK | os.X_OK)
    except OSError:
        return False


def onnx_cache_root() -> Path:
    """Where ONNX exports made on first use are written: $XDG_CACHE_HOME/agelens/onnx (default
    ~/.cache/agelens/onnx) where it can be written; else this user's private folder under the temp folder (`docker
    run --user UID` gives HOME=/ and no passwd entry; read-only homes); the home one where neither can be used (the
    errors then name it)."""
    home = _home_root()
    if home is not None and _home_writable(home):
        return home
    temp = _temp_root()
    return temp if _private(temp) or home is None else home


def cached_file(name: str) -> Path:
    """`name` in the home cache where it is there (a cache made ahead, read-only, is read where it is), else where
    it is to be made (`onnx_cache_root`)."""
    home = _home_root()
    if home is not None and (home / name).exists():
        return home / name
    return onnx_cache_root() / name


def default_onnx_dir() -> Path:
    """$AGELENS_ONNX_DIR, else <cache root>/<fingerprint of the shipped weights> (`cached_file`)."""
    env = os.environ.get("AGELENS_ONNX_DIR")
    return Path(env) if env else cached_file(shipped_fingerprint())


def ensure_export(onnx_dir: str | Path | None = None, log=None, int8: bool | str = False) -> Path:
    """The folder holding teacher/student/occlusion .onnx; exports the shipped weights there first when it lacks
    them (needs torch, once: the fp32 graphs). int8 (for the shipped export, onnx_dir None): also the int8 copies
    of that flavour (`utils.INT8_FLAVORS`; True: this CPU's, `utils.int8_flavor`), quantised from the ranges
    shipped beside the weights, made the first time they are asked for."""
    flavor = (int8 if isinstance(int8, str) else int8_flavor() or "int8") if int8 else None
    d = Path(onnx_dir) if onnx_dir else default_onnx_dir()
    if (d / "manifest.json").is_file() and (d / "teacher.onnx").is_file() and (
            onnx_dir is not None or (d / "teacher.notta.onnx").is_file()):  # a cache from before single-view graphs
        if flavor and onnx_dir is None:
            _ensure_int8(d, flavor, log)
        return d
    if onnx_dir is not None and not d.is_dir():  # before: a mistyped folder got a new export of the shipped models
        raise CheckpointError(f"{d}: no such folder (an export is made by `agelens export onnx --output DIR`)")
    if onnx_dir is not None and any(d.iterdir()):
        raise CheckpointError(f"{d} holds no agelens ONNX export (manifest.json + teacher.onnx)")
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise AgelensError(f"no ONNX export in {d} and torch is not installed to make one: run `agelens export "
                           "onnx --output DIR` where torch is installed, then pass onnx_dir=DIR") from e
    from ..export.onnx import export_all

    if log:
        log(f"preparing the shipped models for this machine once (ONNX export{', int8 copies' if flavor else ''}; "
            f"about half a minute, later runs start at once): {d}")
    with _detail_log(d, log) as detail:
        export_all(d, int8="shipped" if flavor and onnx_dir is None else "none", log=detail,
                   flavors=(flavor,) if flavor else (), replace=False)  # another process's export, made meanwhile, stays
    return d


@contextlib.contextmanager
def _detail_log(d: Path, log=None):
    """A log for the export's line per graph: kept in d/export.log (appended), and one line through `log` at the
    end with the time it took and where the details are."""
    lines: list[str] = []
    t0 = time.monotonic()
    yield lines.append
    with contextlib.suppress(OSError), open(d / "export.log", "a", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    if log:
        log(f"prepared in {time.monotonic() - t0:.0f} s ({len(lines)} steps, each in {d / 'export.log'})")


def _ensure_int8(d: Path, flavor: str, log=None) -> None:
    """The shipped export's int8 copies of one flavour, made now where they were never tried
    (`export.onnx.add_shipped_int8`)."""
    entries = json.loads((d / "manifest.json").read_text()).get("models", {}).values()
    if all(e.get(f"{flavor}_tried") or flavor in e for e in entries):
        return
    try:
        from ..export.onnx import add_shipped_int8
    except ImportError as e:  # torch absent: the fp32 graphs run
        if log:
            log(f"no int8 copies in {d} and torch is not installed to make them ({e}): fp32 graphs run")
        return
    if not os.access(d, os.W_OK):  # a cache made ahead on another CPU, read-only here: its fp32 graphs run
        if log:
            log(f"no {flavor} int8 copies in {d}, which cannot be written: fp32 graphs run")
        return
    if log:
        log(f"quantising the shipped models' ONNX graphs to int8 once ({flavor}): {d}")
    with _detail_log(d, log) as detail:
        add_shipped_int8(d, log=detail, flavor=flavor)
