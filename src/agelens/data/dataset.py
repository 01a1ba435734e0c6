"""Torch Dataset over a FaceCache: random crop + flip for training, centre crop for evaluation; no JPEG decode."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import FaceCache


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size:
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=interp)


def centre_crop(img: np.ndarray, crop: int, size: int) -> np.ndarray:
    """The evaluation view of an aligned face: centre crop×crop, resized to size×size."""
    o = (img.shape[0] - crop) // 2
    return resize_square(img[o:o + crop, o:o + crop], size)


class CachedFaceDataset(Dataset):
    """Yields (uint8 HWC image tensor, age, index). Normalisation happens on the batch (see train.batch)."""

    def __init__(self, cache: FaceCache, train: bool, crop_size: int, input_size: int, seed: int = 0,
                 indices: np.ndarray | None = None, scale_jitter: float = 0.08) -> None:
        self.cache, self.train = cache, train
        self.crop, self.size = min(crop_size, cache.size), input_size
        self.indices = np.arange(len(cache)) if indices is None else np.asarray(indices)
        self.seed, self.epoch, self.scale_jitter = seed, 0, scale_jitter

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, int(i)))

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        i = int(self.indices[k])
        img = self.cache.images[i]
        s = self.cache.size
        if self.train:
            rng = self._rng(i)
            c = int(round(self.crop * (1 + rng.uniform(-self.scale_jitter, self.scale_jitter))))
            c = min(max(16, c), s)
            y0, x0 = rng.integers(0, s - c + 1, size=2)
            out = img[y0:y0 + c, x0:x0 + c]
            if rng.random() < 0.5:
                out = out[:, ::-1]
            out = resize_square(out, self.size)
        else:
            out = centre_crop(img, self.crop, self.size)
        return torch.from_numpy(out), torch.tensor(self.cache.ages[i]), i
