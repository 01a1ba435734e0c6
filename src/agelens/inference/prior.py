"""A job's age mix: label-shift adaptation of the ages over the faces of one job (Saerens, Latinne & Decaestecker,
"Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation 2002).

An age model's answer for a face leans towards the ages it saw most in training (UTKFace + All-Age-Faces: most
faces 20-40): teenagers read older, people over 50 younger. A folder whose age mix differs (school photos, an old
people's home, scanned family albums of mostly children) pays for that lean on every face. Over a job's faces,
EM estimates the folder's own age mix from the answers themselves (no labels) and re-weighs each face's answer
by it:

- each face's answer is read as a distribution over whole ages, a Gaussian of its age and spread;
- only clean faces take part (`AgeEstimator.adapt_arrays`, CLEAN_BELOW): an occluded face leans by its occluder;
- the model's training mix (`base`: the mean of those distributions over training faces, in the teacher's card as
  `age_prior`) is divided out and the job's mix multiplied in, estimated by EM as the mean re-weighed distribution,
  smoothed over ±2 years and drawn towards `base` by PSEUDO_FACES pseudo-faces (a small job moves little);
- the face's age and spread become the re-weighed distribution's mean and standard deviation; how far depends on
  how far the job's mix is from the training mix (KL_FROM, KL_FULL): a job like the training mix stays as answered.

End to end (`benchmarks/prior_adapt.py`, folders of 400 test photos of both datasets): mostly children (the age
mix of public scanned-photo sets) MAE 3.81 → 3.52, ages 31-60 only 6.48 → 5.42, mostly over 50 6.47 → 6.18;
UTKFace's and All-Age-Faces' own test parts and every occluded folder are left as answered.
"""

from __future__ import annotations

import numpy as np

MIN_FACES = 20  # fewer faces: the ages are left as they are (a mix cannot be told from a handful)
PSEUDO_FACES = 50  # the estimated mix is drawn towards the training mix as if this many faces followed it
SMOOTH_YEARS = 2.0  # the estimated mix is smoothed over about this many years (ages are not exact)
MAX_FACES = 20000  # the mix is estimated on at most this many faces of a larger job (seeded sample)
ITERATIONS = 50
CHUNK = 20000  # faces re-weighed at a time
# The estimated mix's divergence from the training mix, KL(mix ‖ base), sets how far the answers move: not at all up
# to KL_FROM (a job like the training mix, or too small to tell: UTKFace's and All-Age-Faces' test parts 0.02 /
# 0.06, 100 random UTKFace test photos 0.015, an even mix of ages 0.05-0.08), fully from KL_FULL (mostly children
# 0.42-0.44, mostly over 50 0.25, ages 31-60 only 0.36: `benchmarks/prior_adapt.py` folders), the ratio mix / base
# raised to the share in between.
KL_FROM, KL_FULL = 0.08, 0.2
# Only faces the occlusion detector scores under this take part (AgeEstimator.adapt_arrays): clean UTKFace test
# photos 0.004 at the median, 0.076 at the 90th percentile; half-covered faces the teacher still answers 0.26-0.34
# at the median (`benchmarks/prior_adapt.py --foreign`).
CLEAN_BELOW = 0.1
MIN_SPREAD = 0.5


def _smooth(p: np.ndarray, sigma: float) -> np.ndarray:
    x = np.arange(-int(4 * sigma) - 1, int(4 * sigma) + 2)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    pad = len(x) // 2
    return np.convolve(np.pad(p, pad, mode="edge"), k / k.sum(), "valid")


def posteriors(ages: np.ndarray, spreads: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(N, len(grid)) each face's answer as a Gaussian over the whole ages of `grid`, normalised."""
    a = np.asarray(ages, np.float64)[:, None]
    s = np.maximum(np.asarray(spreads, np.float64), MIN_SPREAD)[:, None]
    q = np.exp(-0.5 * ((grid[None] - a) / s) ** 2) + 1e-300
    return q / q.sum(1, keepdims=True)


def estimate_mix(ages: np.ndarray, spreads: np.ndarray, base: np.ndarray, pseudo: float = PSEUDO_FACES,
                 sigma: float = SMOOTH_YEARS, iterations: int = ITERATIONS) -> np.ndarray:
    """The job's age mix over the whole ages of `base` (ages counted from the head's min_age), by EM: the weights
    job mix / base that make the mean re-weighed answer the job mix."""
    base = np.asarray(base, np.float64)
    grid = np.arange(len(base), dtype=np.float64)
    p0 = posteriors(ages, spreads, grid)
    n, w = len(p0), np.ones(len(base))
    mix = base
    for _ in range(iterations):
        q = p0 * w
        q /= q.sum(1, keepdims=True)
        mix = np.maximum(_smooth((q.sum(0) + pseudo * base) / (n + pseudo), sigma), 1e-12)
        mix /= mix.sum()
        w = mix / base
    return mix


def reweigh(ages: np.ndarray, spreads: np.ndarray, base: np.ndarray, mix: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Each face's (age, spread) after its answer is re-weighed by mix / base (the mean and standard deviation),
    CHUNK faces at a time (an archive's million faces would otherwise hold 0.8 GB of distributions)."""
    base = np.asarray(base, np.float64)
    grid = np.arange(len(base), dtype=np.float64)
    ratio = np.asarray(mix, np.float64) / base
    ages, spreads = np.asarray(ages), np.asarray(spreads)
    mean, sd = np.zeros(len(ages), np.float32), np.zeros(len(ages), np.float32)
    for k in range(0, len(ages), CHUNK):
        q = posteriors(ages[k:k + CHUNK], spreads[k:k + CHUNK], grid) * ratio
        q /= q.sum(1, keepdims=True)
        m = q @ grid
        mean[k:k + CHUNK] = m
        sd[k:k + CHUNK] = np.sqrt(np.maximum(q @ grid ** 2 - m ** 2, 0.0))
    return mean, sd


def adapt_ages(ages: np.ndarray, spreads: np.ndarray, base: np.ndarray | list | None, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, dict]:
    """A job's (ages, spreads) adapted to its own age mix, and a summary (`applied`, `faces`; once estimated the
    mix's mean age against the training mix's, their divergence and the `strength` it sets; where applied the
    mean and largest age change). Left as they are (applied False) with fewer than MIN_FACES faces, without a
    training mix (`base` None: a model card without `age_prior`) or with a mix within KL_FROM of the training
    mix."""
    ages, spreads = np.asarray(ages, np.float32), np.asarray(spreads, np.float32)
    info: dict = {"applied": False, "faces": int(len(ages))}
    if base is None or len(ages) < MIN_FACES:
        info["reason"] = (f"fewer than {MIN_FACES} clean faces: a mix cannot be told from them" if base is not None
                          else "the model card has no training age mix (age_prior)")
        return ages, spreads, info
    base = np.maximum(np.asarray(base, np.float64), 1e-9)  # a card's mix rounded to zero at an age nobody has
    base = base / base.sum()
    idx = np.arange(len(ages))
    if len(idx) > MAX_FACES:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), MAX_FACES, replace=False))
    mix = estimate_mix(ages[idx], spreads[idx], base)
    grid = np.arange(len(base))
    kl = float(np.sum(mix * np.log(mix / base)))
    strength = float(np.clip((kl - KL_FROM) / (KL_FULL - KL_FROM), 0.0, 1.0))
    info.update({"mix_mean_age": round(float(mix @ grid), 2), "training_mean_age": round(float(base @ grid), 2),
                 "divergence": round(kl, 4), "strength": round(strength, 3)})
    if strength == 0.0:
        info["reason"] = f"the job's age mix is like the training mix (divergence {kl:.3f}, adapted from {KL_FROM})"
        return ages, spreads, info
    new_a, new_s = reweigh(ages, spreads, base, base * (mix / base) ** strength)
    change = np.abs(new_a - ages)
    info.update({"applied": True, "mean_change": round(float(change.mean()), 3),
                 "max_change": round(float(change.max()), 3)})
    return new_a, new_s, info
