"""Shared fixtures: tiny synthetic datasets and a tiny trained checkpoint (never ../shared)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def synthetic_face(age: float, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A blob image whose brightness and ring count track the age, so a tiny model can learn it."""
    yy, xx = np.mgrid[:size, :size] / size
    r = np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    level = 40 + 2.0 * age
    img = np.clip(level * (r < 0.4) + 30 * np.sin(r * (4 + age / 8) * np.pi) + rng.normal(0, 4, (size, size)), 0, 255)
    return np.repeat(img[..., None], 3, axis=2).astype(np.uint8)


def utk_faces(d, n: int, seed: int = 0):
    """n synthetic faces named as UTKFace names them (AGE_GENDER_RACE_DATE.jpg.chip.jpg) in a new folder d."""
    rng = np.random.default_rng(seed)
    d.mkdir()
    for i in range(n):
        age = int(rng.integers(1, 90))
        Image.fromarray(synthetic_face(age, rng)).save(d / f"{age}_{i % 2}_{i % 5}_2017011{i:04d}.jpg.chip.jpg")
    return d


@pytest.fixture()
def utk_folder(tmp_path):
    """A UTKFace-style folder of synthetic images, one name lacking the race field, one bad name."""
    rng = np.random.default_rng(0)
    d = tmp_path / "utk"
    d.mkdir()
    for i in range(24):
        age = int(rng.integers(1, 90))
        race = "" if i == 3 else f"{i % 5}_"
        Image.fromarray(synthetic_face(age, rng)).save(d / f"{age}_{i % 2}_{race}2017011{i:04d}.jpg.chip.jpg")
    (d / "notes_bad_name.jpg").write_bytes(b"x")
    return d


@pytest.fixture(scope="session")
def astronaut_path(tmp_path_factory):
    from importlib import resources

    return str(resources.files("agelens") / "assets" / "astronaut.jpg")
