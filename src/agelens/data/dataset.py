"""Torch Dataset over a FaceCache: random crop + flip for training, centre crop for evaluation; no JPEG decode.
Optionally draws a synthetic occluder (from the cached landmarks) before cropping, applies stronger augmentation
to rare-group faces (fairness tail augmentation) and returns face-region masks for region attention."""

from __future__ import annotations

import contextlib

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import SOURCE_SCALE
from .cache import FaceCache
from .views import centre_crop, resize_square  # noqa: F401  (re-exported)


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera-like degradations (blur, down/up-scaling, JPEG), each with probability 0.4: the occlusion detector
    then cannot rely on the crisp edges of synthetic occluders."""
    out = img
    if rng.random() < 0.4:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.4:
        s = out.shape[0]
        small = int(s * rng.uniform(0.25, 0.6))
        out = cv2.resize(cv2.resize(out, (small, small), interpolation=cv2.INTER_AREA), (s, s),
                         interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.4:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 80))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def strong_augment(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tail augmentation for faces of rare groups: rotation ±15°, brightness and contrast ±30 %.
    Returns the image and the 2×3 matrix applied (for the landmarks)."""
    s = img.shape[0]
    m = cv2.getRotationMatrix2D((s / 2, s / 2), float(rng.uniform(-15, 15)), 1.0)
    out = cv2.warpAffine(np.ascontiguousarray(img), m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    x = out.astype(np.float32)
    mu = x.mean()
    x = (x - mu) * rng.uniform(0.7, 1.3) + mu
    return np.clip(x * rng.uniform(0.7, 1.3), 0, 255).astype(np.uint8), m.astype(np.float32)


class CachedFaceDataset(Dataset):
    """Yields (uint8 HWC image tensor, target, index); target is the age, or 1/0 occluded/clean with
    target="occluded". With pair=True it yields (clean, occluded, age, index) under the same crop and flip.

    occlusion: an OcclusionMix; training draws a fresh occluder per epoch, evaluation a fixed one per image (seeded by
    the index), so every model sees the same occluded test set. Faces without landmarks stay clean.
    strong_p: per cache record, the probability of strong augmentation in training (fairness tail augmentation).
    regions=True appends (R, REGION_RES, REGION_RES) face-region masks of the view (not with pair=True).
    augment > 0: realistic photo degradations in training (data.augment.realistic at this strength), drawn after the
    occluder so it is degraded with the face; source_scale: realistic's probability of degrading at a lower working
    resolution, source_min its smallest working scale; augment_p: realistic's per-degradation probabilities that
    replace the defaults. augment_pair=True (training): the image is a (2, H, W, 3) stack of two independent degradation
    draws of the same face under the same occluder, crop and flip (consistency training); with anchor=True the first
    of the two is the undegraded face (the reference of anchored consistency); with resave=True the pair is one
    degradation draw saved as two files (`augment.resave_pair`: JPEG re-encoded, halved, shifted). degradation: one named
    data.augment degradation on every image, seeded per record (the degraded test).
    """

    def __init__(self, cache: FaceCache, train: bool, crop_size: int, input_size: int, seed: int = 0,
                 indices: np.ndarray | None = None, scale_jitter: float = 0.08, occlusion=None,
                 target: str = "age", pair: bool = False, degrade: bool = False, strong_p: np.ndarray | None = None,
                 regions: bool = False, augment: float = 0.0, degradation: str | None = None,
                 source_scale: float = 0.0, augment_pair: bool = False, anchor: bool = False,
                 augment_p: dict[str, float] | None = None, source_min: float = SOURCE_SCALE[0],
                 realign: float = 0.0, resave: bool = False, realign_net: bool = False) -> None:
        self.cache, self.train = cache, train
        self.crop, self.size = min(crop_size, cache.size), input_size
        self.indices = np.arange(len(cache)) if indices is None else np.asarray(indices)
        self.seed, self.epoch, self.scale_jitter = seed, 0, scale_jitter
        self.occlusion, self.target, self.pair, self.degrade = occlusion, target, pair, degrade
        self.drawn: dict[int, str | None] = {}  # with an occlusion mix: the type each record last got (None: clean)
        self.strong_p, self.regions = strong_p, regions
        self.augment, self.degradation = augment, degradation
        self.source_scale, self.augment_pair, self.anchor = source_scale, augment_pair, anchor
        self.augment_p, self.source_min = augment_p or {}, source_min
        self.realign, self._analyzer, self.resave, self.realign_net = realign, None, resave, realign_net
        if anchor and not augment_pair:
            raise ValueError("anchor=True needs augment_pair=True")
        if resave and (not augment_pair or anchor):
            raise ValueError("resave=True needs augment_pair=True and works without anchor")
        if regions and pair:
            raise ValueError("regions=True is not supported with pair=True")
        if augment_pair and (pair or regions or augment <= 0):
            raise ValueError("augment_pair=True needs augment > 0 and works without pair and regions")
        if target not in ("age", "occluded"):
            raise ValueError(f"target must be age|occluded, got {target!r}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, int(i)))

    def occluded_view(self, i: int, with_alpha: bool = False):
        """The full cached image of record i with its occluder (or clean) and the occlusion type drawn (None when
        clean), photo-degraded as configured; with_alpha adds the occluder's coverage map (None when clean)."""
        img, kind, alpha = self._occluded(i)
        img = self._photo(img, i)
        return (img, kind, alpha) if with_alpha else (img, kind)

    def _occluded(self, i: int) -> tuple[np.ndarray, str | None, np.ndarray | None]:
        """Record i's cached image with its occluder drawn (image, type or None, coverage map or None)."""
        from ..occlusion.synth import OcclusionError, occlude

        img = np.asarray(self.cache.images[i])
        kind, alpha = None, None
        if self.degrade and self.train:
            img = degrade(img, np.random.default_rng((self.seed, self.epoch, int(i), 9)))
        if self.occlusion is not None:
            rng = np.random.default_rng((self.seed, self.epoch if self.train else 0, int(i), 7))
            kind = self.occlusion.sample(rng)
            if kind is None and self.occlusion.clear_glasses and rng.random() < self.occlusion.clear_glasses:
                from ..occlusion.synth import add_clear_glasses

                with contextlib.suppress(OcclusionError):
                    img = add_clear_glasses(img, self.cache.landmarks[i], rng)
            elif kind is not None:
                try:
                    o = occlude(img, self.cache.landmarks[i], kind, rng)
                    img, alpha = o.image, o.alpha
                except OcclusionError:
                    kind = None
                if kind is not None and self.train and self.realign > 0 and rng.random() < self.realign:
                    img, alpha = self._realigned(img), None
            self.drawn[int(i)] = kind
        return img, kind, alpha

    def _realigned(self, img: np.ndarray) -> np.ndarray:
        """The largest face found on the occluded image, aligned as predict aligns a photo's face (the landmarks
        meet the occluder), and with realign_net corrected by the shipped realignment network as predict corrects
        the student's crops (warped from the image around it); the image as it is where no face is found."""
        from ..faces.detect import FaceAnalyzer
        from ..faces.prepare import largest_face

        if self._analyzer is None:  # one per process: data-loader workers build their own
            self._analyzer = FaceAnalyzer(fast=None)
        faces = self._analyzer.find_faces(img, crop_size=img.shape[0])
        if not faces:
            return img
        crop, m = largest_face(faces).aligned(img, img.shape[0])
        if self.realign_net:
            from ..faces.realign import CropSource, realigned

            crop = realigned(crop[None], [CropSource(img, m, img.shape[0])])[0]
        return crop

    def _photo(self, img: np.ndarray, i: int, draw: int = 0) -> np.ndarray:
        """The photo degradations of record i: training's realistic draw number `draw` (the second view of
        augment_pair uses draw 1), then the named test degradation."""
        if self.augment > 0 and self.train:
            from .augment import realistic

            img = realistic(img, np.random.default_rng((self.seed, self.epoch, int(i), 13 + 4 * draw)), self.augment,
                            self.source_scale, self.augment_p, self.source_min)
        if self.degradation is not None:
            from .augment import degrade_for_test

            img = degrade_for_test(img, self.degradation, self.seed * 1_000_003 + int(i))
        return img

    def _view_geom(self, img: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, tuple]:
        """The view and its geometry (x0, y0, crop side, flipped) in pixels of the cached image."""
        s = img.shape[0]
        if rng is None:
            o = (s - self.crop) // 2
            return centre_crop(img, self.crop, self.size), (o, o, self.crop, False)
        c = int(round(self.crop * (1 + rng.uniform(-self.scale_jitter, self.scale_jitter))))
        c = min(max(16, c), s)
        y0, x0 = rng.integers(0, s - c + 1, size=2)
        out = img[y0:y0 + c, x0:x0 + c]
        flip = bool(rng.random() < 0.5)
        if flip:
            out = out[:, ::-1]
        return resize_square(out, self.size), (int(x0), int(y0), c, flip)

    def _masks(self, i: int, geom: tuple, warp: np.ndarray | None) -> torch.Tensor:
        from ..models.regions import landmarks_or_mean, region_masks, view_landmarks

        s = self.cache.size
        lm = landmarks_or_mean(self.cache.landmarks[i], s)
        if warp is not None:
            lm = lm @ warp[:, :2].T + warp[:, 2]
        x0, y0, c, flip = geom
        return torch.from_numpy(region_masks(view_landmarks(lm, s, x0, y0, c, flip)))

    def __getitem__(self, k: int):
        return self.item(int(self.indices[k]))

    def item(self, i: int):
        """The sample of cache record i (what __getitem__ returns for the position of i); the streamed shard
        dataset calls it with a one-record store, so both paths augment identically."""
        base, kind, _ = self._occluded(i)
        paired = self.augment_pair and self.train
        shown = base if paired and self.anchor else self._photo(base, i)
        second = None
        if paired and self.resave:  # one draw of the degradations, saved as two files
            from .augment import resave_pair

            shown, second = resave_pair(shown, np.random.default_rng((self.seed, self.epoch, int(i), 29)),
                                        self.source_min)
        elif paired:
            second = self._photo(base, i, draw=1)  # one occluder, drawn once
        warp = None
        if self.train and self.strong_p is not None and self.strong_p[i] > 0:
            rng = np.random.default_rng((self.seed, self.epoch, i, 11))
            if rng.random() < self.strong_p[i]:
                drawn = rng.bit_generator.state  # the second view gets the same rotation and contrast
                shown, warp = strong_augment(shown, rng)
                if second is not None:
                    rng.bit_generator.state = drawn
                    second = strong_augment(second, rng)[0]
        state = self._rng(i).bit_generator.state if self.train else None

        def view(img):
            """(view tensor, its geometry); the same crop and flip for every call on this index."""
            rng = None
            if state is not None:
                rng = np.random.default_rng()
                rng.bit_generator.state = state
            out, geom = self._view_geom(img, rng)
            return torch.from_numpy(out), geom

        age = torch.tensor(self.cache.ages[i])
        if self.pair:
            return view(np.asarray(self.cache.images[i]))[0], view(shown)[0], age, i
        target = torch.tensor(float(kind is not None)) if self.target == "occluded" else age
        img, geom = view(shown)
        if second is not None:
            img = torch.stack([img, view(second)[0]])
        if self.regions:
            return img, target, i, self._masks(i, geom, warp)
        return img, target, i
