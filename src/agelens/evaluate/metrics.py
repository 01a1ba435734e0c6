"""Age-estimation metrics: MAE, CS(k), CMAE, Acc@5, bias score, per-bin / per-gender / per-race MAE."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# (label, low, high) inclusive on the integer (rounded) true age
AGE_BINS: list[tuple[str, int, int]] = [("0-10", 0, 10), ("11-20", 11, 20), ("21-30", 21, 30), ("31-40", 31, 40),
                                        ("41-50", 41, 50), ("51-60", 51, 60), ("61+", 61, 10**6)]


def age_bin(age: float) -> str:
    a = int(round(float(age)))
    return next(label for label, lo, hi in AGE_BINS if lo <= a <= hi) if a >= 0 else AGE_BINS[0][0]


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.abs(np.asarray(pred, float) - np.asarray(true, float)).mean())


def cumulative_score(pred: np.ndarray, true: np.ndarray, k: float = 5) -> float:
    """CS(k): share of faces with |error| <= k years."""
    return float((np.abs(np.asarray(pred, float) - np.asarray(true, float)) <= k).mean())


def per_bin_mae(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    bins = np.array([age_bin(a) for a in true])
    err = np.abs(np.asarray(pred, float) - np.asarray(true, float))
    return {label: float(err[bins == label].mean()) for label, _, _ in AGE_BINS if (bins == label).any()}


def per_group_mae(pred: np.ndarray, true: np.ndarray, groups: Sequence[str | None]) -> dict[str, float]:
    err = np.abs(np.asarray(pred, float) - np.asarray(true, float))
    g = np.array([x if x else "" for x in groups], dtype=object)
    return {str(k): float(err[g == k].mean()) for k in sorted(set(g.tolist())) if k != ""}


def compute_metrics(pred: np.ndarray, true: np.ndarray, genders: Sequence[str | None] | None = None,
                    races: Sequence[str | None] | None = None, ks: Sequence[int] = (1, 3, 5, 10),
                    ndigits: int = 4) -> dict:
    """All headline metrics; CMAE = mean of per-bin MAE, bias score = max − min per-bin MAE.

    Acc@5 (fairness paper) and CS(5) (occlusion paper) are the same quantity, |error| <= 5 years."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    if len(pred) != len(true) or len(pred) == 0:
        raise ValueError(f"need equal, non-empty prediction and label arrays (got {len(pred)} and {len(true)})")
    bins = per_bin_mae(pred, true)
    r = lambda x: round(float(x), ndigits)  # noqa: E731
    out = {"n": int(len(pred)), "mae": r(mae(pred, true)), "cs5": r(cumulative_score(pred, true, 5)),
           "cmae": r(np.mean(list(bins.values()))), "acc5": r(cumulative_score(pred, true, 5)),
           "bias_score": r(max(bins.values()) - min(bins.values())),
           "cs": {str(k): r(cumulative_score(pred, true, k)) for k in ks},
           "per_bin": {k: r(v) for k, v in bins.items()},
           "per_bin_n": {label: int(sum(age_bin(a) == label for a in true)) for label in bins},
           "per_gender": {k: r(v) for k, v in per_group_mae(pred, true, genders).items()} if genders is not None else {},
           "per_race": {k: r(v) for k, v in per_group_mae(pred, true, races).items()} if races is not None else {},
           "mean_error": r(np.mean(pred - true))}
    return out
