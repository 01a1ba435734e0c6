"""Faces as `predict` finds them, apart from the age models: the face verifiers (`TrunkGuard`, the teacher's own
heads with the separate networks behind them; `SeparateGuard`, the separate networks alone), `find_and_align` (the
detector cascade of `faces.detect`, every face verified, aligned, looked at upright, the ImageNet vetoes applied)
and the helpers the batch engine (`inference.stream`) shares with the estimator (`inference.predictor`)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..errors import AgelensError, ImageError, NoFaceError
from ..faces import animal, orientation
from ..faces import detect as face_search
from ..faces.detect import DETECTED_THRESHOLD, FaceAnalyzer, iou, whole_image_crop, without_same_face
from ..faces.mesh import N_MESH
from ..faces.orientation import turned_back
from ..faces.prepare import N_LANDMARKS, largest_face, prepare_face
from ..faces.realign import CropSource
from ..imageio import file_box
from .backends import CropClassifier

# An image under this on a side holds no face to find: the padded retry read an 8 x 8 thumbnail as one (verified at
# 0.98) and gave it an age; under 16 px the face networks reject faces anyway (an audit's 10-32 px thumbnails)
MIN_IMAGE_SIDE = 16
MEMO_SIZE = 64  # crops whose answers a memo keeps (the faces of the last few images): AgeEstimator.MEMO_SIZE


class CropMemo:
    """Per-crop answers of one network for the last crops it read (least recently used dropped first): a crop asked
    about twice (verified, then estimated; the cat check's occlusion score, then routing) runs once. Thread-safe."""

    def __init__(self) -> None:
        self._rows: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def rows(self, crops: np.ndarray, compute, size: int) -> list:
        """One answer per crop: kept ones, and `compute(distinct new crops)` (one row per crop it is given) for
        the rest. Keeps at least this call's crops, and `size` in all."""
        keys = [(c.shape, hash(c.tobytes())) for c in crops]
        with self._lock:  # rows come from this local dict, so an eviction by another call cannot lose them
            found = {k: self._rows[k] for k in keys if k in self._rows}
            for k in found:
                self._rows.move_to_end(k)
        first = {k: i for i, k in reversed(list(enumerate(keys))) if k not in found}  # one read per distinct crop
        if first:
            miss = list(first.values())
            new = compute(crops[miss])
            with self._lock:
                for i, row in zip(miss, new, strict=True):
                    found[keys[i]] = self._rows[keys[i]] = row
                while len(self._rows) > max(size, len(keys)):  # keep this batch for the next call
                    self._rows.popitem(last=False)
        return [found[k] for k in keys]


class TrunkGuard:
    """A CropClassifier answered first by the teacher's own guard head (`ModelConfig.guards`): the estimator runs the
    teacher once per crop and keeps the result (`AgeEstimator.trunk`), so verifying a face, flagging its occlusion
    and estimating its age share one backbone pass. With a `fallback` (the separate network) it is a cascade:
    scores below `skip_below` or at/above `skip_above` (the card's `guard_cascade`, where the head is sure) stand,
    the other crops are scored by the fallback, whose threshold decides."""

    def __init__(self, est, index: int, name: str, threshold: float,
                 fallback: CropClassifier | None = None, skip_below: float | None = None,
                 skip_above: float | None = None, photo: CropClassifier | None = None,
                 bands: CropClassifier | None = None, tile_head: float | None = None) -> None:
        self.est, self.index, self.name, self.fallback = est, index, name, fallback
        # a second face network trained on degraded photos (`faceness_photo`): a crop the fallback rejects passes
        # when it vouches for it, at DETECTED_THRESHOLD for the detector's own faces (`scores`) and at its own
        # threshold on the fallback steps (`separate_scores`); the tile step keeps the fallback alone (`both_scores`)
        self.photo = photo
        # a third one fine-tuned on faces under full-width bands (`faceness_bands`): asked only at the whole-image
        # step (`whole_scores`), where a face crop covered brow to chin by two bands is otherwise rejected
        self.bands = bands
        self.threshold = float(fallback.threshold if fallback is not None else threshold)
        self.skip_below = -np.inf if skip_below is None else float(skip_below)
        self.skip_above = np.inf if skip_above is None else float(skip_above)
        # the head's own bar at the tile step (`both_scores`; the card's `guard_cascade`): None = the fallback's
        # threshold, a bar that depends on how sure of faces a given trunk's head happens to be
        self.tile_head = None if tile_head is None else float(tile_head)
        self._memo = CropMemo()  # the fallback's scores: the cat check and routing ask about the same crops
        self._photo_memo = CropMemo()  # the photo network's: verification and the people veto's gate ask again
        self._bands_memo = CropMemo()

    @property
    def memo_size(self) -> int:
        """Crops each network's memo keeps: the estimator's MEMO_SIZE (this module's without one)."""
        return getattr(self.est, "MEMO_SIZE", MEMO_SIZE)

    def fallback_scores(self, crops: np.ndarray) -> np.ndarray:
        """The separate network's scores, each crop read once while it stays in the memo."""
        return np.array(self._memo.rows(crops, self.fallback.scores, self.memo_size), np.float32)

    def head_scores(self, crops: np.ndarray) -> np.ndarray:
        """The teacher's guard head alone."""
        return self.est.trunk(np.asarray(crops))[2][:, self.index].copy()

    def both_scores(self, crops: np.ndarray) -> np.ndarray:
        """A crop passes (at `threshold`) only when both networks say so: the fallback at its threshold and the
        guard head at `tile_head` (the fallback's threshold without one). The fallback's score where the head clears
        its bar; elsewhere the lower of it and the head's score scaled so that the bar maps onto `threshold`."""
        p = self.head_scores(crops)
        if self.fallback is None:
            return p
        q = self.fallback_scores(np.asarray(crops))
        bar = self.threshold if self.tile_head is None else self.tile_head
        return np.where(p >= bar, q, np.minimum(q, p * (self.threshold / bar))).astype(np.float32)

    def scores(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        p, unsure = self._cascade(crops)
        if self.fallback is not None:
            self._vouch(self.photo, self._photo_memo, crops, p, unsure & (p < DETECTED_THRESHOLD), DETECTED_THRESHOLD,
                        DETECTED_THRESHOLD)
        return p

    def _cascade(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The head's scores with the fallback's where the head is unsure, and which crops those were."""
        p = self.head_scores(crops)
        unsure = (p >= self.skip_below) & (p < self.skip_above)
        if self.fallback is not None and unsure.any():
            p[unsure] = self.fallback_scores(crops[unsure])
        return p, unsure

    def separate_scores(self, crops: np.ndarray) -> np.ndarray:
        """The separate networks alone, for the fallback steps (decided at `threshold`): the fallback's score, or
        the photo network's where the fallback rejects a crop and the photo network passes it at its own
        threshold (either network vouches)."""
        crops = np.asarray(crops)
        p = self.fallback_scores(crops)
        if self.photo is not None:
            self._vouch(self.photo, self._photo_memo, crops, p, p < self.threshold, self.photo.threshold,
                        self.threshold)
        return p

    def whole_scores(self, crops: np.ndarray) -> np.ndarray:
        """The whole-image step's scores (decided at `threshold`): `separate_scores`, and where those reject a crop
        the band network's at its own threshold (any of the three vouches)."""
        crops = np.asarray(crops)
        p = self.separate_scores(crops)
        if self.bands is not None:
            self._vouch(self.bands, self._bands_memo, crops, p, p < self.threshold, self.bands.threshold,
                        self.threshold)
        return p

    def _vouch(self, net: CropClassifier | None, memo: CropMemo, crops: np.ndarray, p: np.ndarray,
               doubted: np.ndarray, need: float, floor: float) -> None:
        """In place: the `doubted` crops that `net` (a second face network, its scores kept in `memo`) scores at
        `need` or more get its score, at least `floor` (the decision point of the step asking)."""
        if net is None or not doubted.any():
            return
        idx = np.flatnonzero(doubted)
        q = np.array(memo.rows(crops[idx], net.scores, self.memo_size), np.float32)
        ok = q >= need
        p[idx[ok]] = np.maximum(q[ok], floor)


class SeparateGuard(TrunkGuard):
    """predict's face networks without the teacher's head, for code that runs no teacher (`shipped_verifier`:
    evaluate's face preparation, the detection-only workers): `faceness` decides every step, `faceness_photo`
    vouches where a TrunkGuard lets it, `faceness_bands` at the whole-image step."""

    def __init__(self, face: CropClassifier, photo: CropClassifier | None = None,
                 bands: CropClassifier | None = None) -> None:
        super().__init__(None, 1, "face", face.threshold, face, photo=photo, bands=bands)

    def head_scores(self, crops: np.ndarray) -> np.ndarray:
        return self.fallback_scores(np.asarray(crops))

    def _cascade(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """No head to be sure: every crop is the fallback's, read from the memo once."""
        return self.fallback_scores(crops), np.ones(len(crops), bool)


def face_source(face: tuple):
    """A `find_and_align` face's CropSource (None for a whole-image face, or a face tuple without one)."""
    return face[5] if len(face) > 5 else None


def in_file_pixels(faces: list, scale: float) -> list:
    """`find_and_align` faces with their boxes multiplied by scale: from a reduced decode's pixels
    (`imageio.decode_reduced`) to the file's."""
    if scale == 1.0:
        return faces
    return [(file_box(box, scale), *rest) for box, *rest in faces]


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """rgb itself, or AgelensError where it is no RGB uint8 image of at least 2 x 2 pixels (as the decoder asks)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise AgelensError(f"expected an RGB uint8 image (H, W, 3), got shape {rgb.shape} dtype {rgb.dtype}")
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ImageError(f"image is {rgb.shape[1]}x{rgb.shape[0]}, too small to hold a face")
    return rgb


_SHIPPED_VERIFIER: list = []  # [verifier or None], loaded on first use in this process


def shipped_verifier():
    """The shipped face networks as predict asks them, less the teacher's head (`SeparateGuard`: `faceness`, with
    `faceness_photo` and `faceness_bands` where shipped), loaded once per process: each from its cached ONNX export
    when there is one, else torch; None when `faceness` is not shipped or cannot run."""
    if not _SHIPPED_VERIFIER:
        from ..utils import shipped_models

        shipped = shipped_models()
        face = _shipped_face_network("faceness") if "faceness" in shipped else None
        v = None
        if face is not None:
            v = SeparateGuard(face, *(_shipped_face_network(r) if r in shipped else None
                                      for r in ("faceness_photo", "faceness_bands")))
        _SHIPPED_VERIFIER.append(v)
    return _SHIPPED_VERIFIER[0]


def _shipped_face_network(role: str):
    """One shipped face network: its cached ONNX graph (made by the first ONNX-backed run: fast, torch-free), else
    torch; None when neither can run."""
    from ..export.shipped import default_onnx_dir
    from .backends.onnx import OnnxModel

    try:
        return OnnxModel(default_onnx_dir() / f"{role}.onnx", threads=1)
    except Exception:
        try:
            from ..occlusion.detector import OcclusionDetector

            return OcclusionDetector.from_pretrained(role)
        except ImportError:  # neither an export nor torch: the detector steps only
            return None


def find_and_align(rgb: np.ndarray, analyzer: FaceAnalyzer, cache_size: int, detect: bool = True,
                   verifier="shipped", proposed: list | None = None, upright: bool = True, vet: bool = True,
                   robust: bool = True) -> list[tuple]:
    """(box, score, aligned crop, landmarks_found, detection, source) for each face; detect=False: the image is
    one face crop. source: the image the crop was warped from and how (`faces.realign.CropSource`), None for a
    whole-image face. Every face, from the detector or a fallback, counts only when `verifier` (a binary crop classifier with
    `scores` and `threshold`; "shipped" = the shipped face verifier, None = none: detector steps only) says it is
    a face. proposed: the image's `FaceAnalyzer.propose` faces when the caller has them. upright: where the largest
    face does not read upright (`faces.orientation`), the image is looked at again turned each way (`_upright`).
    vet: faces the detector was unsure of go through the ImageNet check (`without_non_faces`); False only to fit
    or measure that check. Where the check vetoes every face and all came from the detector step (a detection on
    a fragment of a half-hidden face, or on something no face), the fallback steps look once, as for an image the
    detector finds nothing on (their faces checked again); where it vetoes every face and the occlusion-robust
    detector found one of them, the search runs again without that step (robust=False), as it ran before the step
    existed. Raises NoFaceError when there is no face."""
    h, w = rgb.shape[:2]
    if not detect:
        crop, lm = prepare_face(rgb, analyzer, cache_size, aligned=True)
        return [([0.0, 0.0, float(w), float(h)], 1.0, crop, not np.isnan(lm).any(), "whole-image", None)]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise NoFaceError(f"no face found (the image is {w}x{h}: under {MIN_IMAGE_SIDE} px on a side, too small to "
                          "find a face in)")
    v = shipped_verifier() if isinstance(verifier, str) else verifier
    sep = getattr(v, "fallback", None)  # a TrunkGuard's separate face network(s): they alone vouch for fallback faces

    def find(img: np.ndarray, proposed: list | None = None, detector_only: bool = False) -> list:
        return without_same_face(analyzer.find_faces(
            img, v.scores if v is not None else None, v.threshold if v is not None else 0.5, cache_size, verify=True,
            fallback_verifier=(v.separate_scores, sep.threshold) if sep is not None else None,
            tile_verifier=(v.both_scores, v.threshold) if hasattr(v, "both_scores") else None,
            whole_verifier=(v.whole_scores, v.threshold) if getattr(v, "bands", None) is not None else None,
            proposed=proposed, detector_only=detector_only, robust=robust))

    faces = find(rgb, proposed)
    if not faces:
        raise NoFaceError("no face found")
    def entries(turned: list) -> tuple[list, list, list]:
        out, mirrored, robust_found = [], [], []
        for f, img, turn in turned:
            source = None
            if f.detection == "whole-image":
                crop, found = whole_image_crop(img, cache_size), False
            else:
                crop, lm = prepare_face(img, analyzer, cache_size, aligned=False, face=f)
                found = not np.isnan(lm[:N_MESH]).any()  # the fast path has no iris points
                source = CropSource(img, f.aligned(img, cache_size)[1], cache_size)  # the warp prepare_face made
            box = turned_back(f.box, turn, rgb.shape)
            out.append(([round(float(v), 1) for v in box], f.score, crop, found, f.detection, source))
            mirrored.append(f.mirrored)
            robust_found.append(f.robust)
        return out, mirrored, robust_found

    out, mirrored, robust_found = entries(_upright(rgb, faces, find, analyzer.detect) if upright
                                          else [(f, rgb, 0) for f in faces])
    kept = without_non_faces(rgb, out, v, mirrored, robust_found) if vet else out
    if not kept and robust and any(robust_found):
        # every face turned away, one of them the robust detector's: its step may have stood in front of the steps
        # that found this face before it existed (FaceMesh alone, the whole image, the tiles)
        return find_and_align(rgb, analyzer, cache_size, detect, verifier, proposed, upright, vet, robust=False)
    looked = proposed is not None and len(proposed) == 0  # the detector step gave nothing: the fallbacks have run
    if not kept and not looked and all(how == "detector" for _, _, _, _, how, _ in out):
        # every detection vetoed: there was none, so the fallback steps look (`find` on an empty detector step)
        return find_and_align(rgb, analyzer, cache_size, detect, verifier, [], upright, vet, robust)
    if (not kept and looked and face_search.VETOED_TILES and max(h, w) >= face_search.VETOED_TILES_MIN_SIDE
            and hasattr(v, "both_scores")):
        # every face turned away in a large photo, the fallbacks' too: the tiles, which those faces stood in front
        # of, are read beside them
        beside = analyzer.tile_steps(rgb, (v.both_scores, v.threshold), cache_size, beside=[o[0] for o in out])
        if beside:
            more, more_mirrored, more_robust = entries([(f, rgb, 0) for f in without_same_face(beside)])
            kept = without_non_faces(rgb, more, v, more_mirrored, more_robust)
    if not kept:
        raise NoFaceError("no face found")
    return kept


def without_non_faces(rgb: np.ndarray, faces: list, verifier=None, mirrored: list | None = None,
                      robust: list | None = None) -> list:
    """`find_and_align` faces less those the ImageNet check (`faces.animal`) vetoes. The people veto (too little
    probability on the classes human faces look like) is asked about faces a fallback step found or the detector
    scored under animal.PEOPLE_BELOW, less those a TrunkGuard verifier scores animal.FACE_SURE or more (its
    memoised scores). The cat veto is asked about those and about faces of animal.MIN_SIDE px or more scored under
    animal.CHECK_BELOW whose occlusion score reaches animal.OCCLUDED: the score predict reports, from the teacher's
    head in the verification pass and the separate network where the head is unsure (where the verifier is not the
    teacher's head, regardless of occlusion). Faces the mirror step built (`mirrored`, one flag per face) are always
    asked the people veto, at animal.MIRROR_PEOPLE. Without the check (no torch to export it), the faces stay as
    they are. A face small in its image that the detector was unsure of (`animal.small_and_unsure`) is always asked
    the people veto, at animal.SMALL_PEOPLE. Faces the occlusion-robust detector found (`robust`, one flag per face)
    are checked as a fallback step's, whatever their detection says."""
    fallback = np.array([how != "detector" for _, _, _, _, how, *_ in faces], bool)
    if robust is not None:
        fallback |= np.asarray(robust, bool)
    score = np.array([s for _, s, *_ in faces], np.float64)
    people = np.array([animal.people_asked(s, how) for _, s, _, _, how, *_ in faces], bool) | fallback
    est = getattr(verifier, "est", None)
    if people.any() and est is not None:  # a TrunkGuard, whose scores of these crops are memoised: faces it is
        idx = np.flatnonzero(people)  # sure of are not asked
        people[idx] = verifier.scores(np.stack([faces[i][2] for i in idx])) < animal.FACE_SURE
    strict = np.zeros(len(faces), bool) if mirrored is None else np.asarray(mirrored, bool)
    small = np.array([animal.small_and_unsure(b, s, rgb.shape) for b, s, *_ in faces], bool)
    people |= strict | small
    cat = ((fallback | (score < animal.CHECK_BELOW))
           & np.array([min(b[2] - b[0], b[3] - b[1]) >= animal.MIN_SIDE for b, *_ in faces], bool) & ~people)
    if cat.any() and est is not None and est.detector is not None:  # the teacher's own occlusion head
        cat[cat] = est.detector.scores(np.stack([faces[i][2] for i in np.flatnonzero(cat)])) >= animal.OCCLUDED
    ask = people | cat
    check = animal.shipped() if ask.any() else None
    if check is None:
        return faces
    idx = np.flatnonzero(ask)
    vetoed = set(idx[check.vetoes(rgb, [faces[i][0] for i in idx], people[idx], strict[idx], small[idx])].tolist())
    return [f for i, f in enumerate(faces) if i not in vetoed]


def predicted_face(rgb: np.ndarray, analyzer: FaceAnalyzer, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The largest face as `predict` finds and aligns it (`find_and_align`: every step checked by the shipped face
    verifier, a photo turned sideways or upside down looked at upright) and NaN landmarks: `evaluate`'s end-to-end
    preparation (`data.cache.build_cache(prepare=...)`). Raises NoFaceError when there is no face."""
    crop = largest_face(find_and_align(rgb, analyzer, size), box=lambda f: f[0])[2]
    return crop, np.full((N_LANDMARKS, 2), np.nan, np.float32)


def _upright(rgb: np.ndarray, faces: list, find, detect) -> list[tuple[object, np.ndarray, int]]:
    """(face, the image it was found on, that image's quarter turns from `rgb`) per face. Where the largest face
    does not read upright (`faces.orientation`: probability under LOOK_AGAIN), the detector alone (`detect`: raw
    boxes, nothing verified) looks at the image turned each other way, the likeliest turn first, until its largest
    box reads upright with at least CONFIDENT. Such a turn wins if it beats the image as it is by MARGIN: the
    detector step of `find` (verified, with landmarks) then runs on it, and its faces that read upright
    (≥ LOOK_AGAIN) replace those they cover (in `rgb`'s coordinates); faces of the image as it is that read upright
    stay beside them. Without a shipped classifier, or where no turn wins, the faces stay as found."""
    model = orientation.shipped()
    kept = [(f, rgb, 0) for f in faces]
    if model is None:
        return kept

    def largest(img: np.ndarray, found: list) -> np.ndarray:
        """The turn probabilities of the largest face (the one face read on an upright photo)."""
        return model.turns(img, [largest_face(found).box])[0]

    reads = largest(rgb, faces)
    here = float(reads[0])
    if here >= orientation.LOOK_AGAIN:
        return kept
    best = (here, 0)
    # np.rot90(rgb, turn) turns a face read as k quarter turns upright when turn = 4 - k: likeliest first
    for turn in sorted((1, 2, 3), key=lambda t: -reads[(4 - t) % 4]):
        img = np.ascontiguousarray(np.rot90(rgb, turn))
        seen = detect(img)
        if seen:
            score = float(largest(img, seen)[0])
            if score > best[0]:
                best = (score, turn)
            if score >= orientation.CONFIDENT:
                break
    score, turn = best
    if turn == 0 or score < orientation.CONFIDENT or score - here < orientation.MARGIN:
        return kept
    img = np.ascontiguousarray(np.rot90(rgb, turn))
    again = find(img, detector_only=True)  # turned upright, the face is the detector's to find
    if not again:
        return kept
    up = model.turns(img, [f.box for f in again])[:, 0] >= orientation.LOOK_AGAIN
    found = [(f, img, turn) for f, ok in zip(again, up, strict=True) if ok]
    if not found:
        return kept
    boxes = [turned_back(f.box, turn, rgb.shape) for f, _, _ in found]
    stay = model.turns(rgb, [f.box for f in faces])[:, 0] >= orientation.LOOK_AGAIN
    rest = [(f, rgb, 0) for f, ok in zip(faces, stay, strict=True) if ok and all(iou(f.box, b) < 0.3 for b in boxes)]
    return found + rest
