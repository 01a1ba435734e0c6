"""Age-estimation metrics: MAE, CS(k), CMAE, Acc@5, bias score, per-bin / per-gender / per-race MAE."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# (label, low, high) inclusive on the true age rounded half up (10.5 → 11-20, 10.4 → 0-10)
AGE_BINS: list[tuple[str, int, int]] = [("0-10", 0, 10), ("11-20", 11, 20), ("21-30", 21, 30), ("31-40", 31, 40),
                                        ("41-50", 41, 50), ("51-60", 51, 60), ("61+", 61, 10**6)]


# Fewest faces a group (age bin, gender, race) needs for an interval, a gap or a spread: the bootstrap of a few faces
# spans only their own errors (two faces aged 61+ read [38.0, 38.2]: falsely precise), and a gap to a group of one
# face is that face's error.
MIN_N = 10


def age_bin(age: float) -> str:
    a = int(np.floor(float(age) + 0.5))
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


def interval_report(true: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict:
    """How often the intervals [lo, hi] hold the true ages: n, coverage overall and per age bin, mean width."""
    true, lo, hi = (np.asarray(a, np.float64) for a in (true, lo, hi))
    hit = (lo <= true) & (true <= hi)
    bins = np.array([age_bin(a) for a in true])
    per_bin = {label: round(float(hit[bins == label].mean()), 4) for label, _, _ in AGE_BINS if (bins == label).any()}
    return {"n": int(len(true)), "coverage": round(float(hit.mean()), 4),
            "mean_width": round(float((hi - lo).mean()), 3), "per_bin": per_bin}


def per_group_mae(pred: np.ndarray, true: np.ndarray, groups: Sequence[str | None]) -> dict[str, float]:
    err = np.abs(np.asarray(pred, float) - np.asarray(true, float))
    g = np.array([x if x else "" for x in groups], dtype=object)
    return {str(k): float(err[g == k].mean()) for k in sorted(set(g.tolist())) if k != ""}


def compute_metrics(pred: np.ndarray, true: np.ndarray, genders: Sequence[str | None] | None = None,
                    races: Sequence[str | None] | None = None, ks: Sequence[int] = (1, 3, 5, 10),
                    ndigits: int = 4) -> dict:
    """All headline metrics; CMAE = mean of per-bin MAE, bias score = max − min per-bin MAE (None with one age bin:
    there is no gap to measure), both over every bin present; "small_bins" names those of under MIN_N faces.

    Acc@5 (fairness paper) and CS(5) (occlusion paper) are the same quantity, |error| <= 5 years."""
    pred, true = _checked(pred, true)
    bins = per_bin_mae(pred, true)
    labels = [age_bin(a) for a in true]
    counts = {label: labels.count(label) for label in bins}
    r = lambda x: round(float(x), ndigits)  # noqa: E731
    out = {"n": int(len(pred)), "mae": r(mae(pred, true)), "cs5": r(cumulative_score(pred, true, 5)),
           "cmae": r(np.mean(list(bins.values()))), "acc5": r(cumulative_score(pred, true, 5)),
           "bias_score": r(max(bins.values()) - min(bins.values())) if len(bins) >= 2 else None,
           "cs": {str(k): r(cumulative_score(pred, true, k)) for k in ks},
           "per_bin": {k: r(v) for k, v in bins.items()},
           "per_bin_n": counts,
           # bins in CMAE and the bias score with under MIN_N faces: their MAE is a few faces' errors
           "small_bins": {label: c for label, c in counts.items() if c < MIN_N},
           "per_gender": {k: r(v) for k, v in per_group_mae(pred, true, genders).items()} if genders is not None else {},
           "per_race": {k: r(v) for k, v in per_group_mae(pred, true, races).items()} if races is not None else {},
           "mean_error": r(np.mean(pred - true))}
    return out


def _checked(pred, true) -> tuple[np.ndarray, np.ndarray]:
    """pred and true as float arrays of one length, every value finite (a NaN age has no bin, and would make MAE NaN
    while CS(5) counted it a miss)."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    if len(pred) != len(true) or len(pred) == 0:
        raise ValueError(f"need equal, non-empty prediction and label arrays (got {len(pred)} and {len(true)})")
    for name, a in (("predicted", pred), ("true", true)):
        bad = np.flatnonzero(~np.isfinite(a))
        if len(bad):
            raise ValueError(f"{len(bad)} {name} age(s) are not finite numbers (NaN or inf), first at position {bad[0]}")
    return pred, true


# ---- uncertainty and group reports (fairness) -------------------------------------------------------------------


def _codes(labels: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """Integer codes for the non-empty labels (-1 for missing) and the sorted label names."""
    names = sorted({str(x) for x in labels if x})
    pos = {k: i for i, k in enumerate(names)}
    return np.array([pos[str(x)] if x else -1 for x in labels], np.int64), names


def _bc_interval(boot: np.ndarray, point: float, level: float) -> list[float] | None:
    """Bias-corrected percentile interval (Efron): contains the point estimate unless it lies outside the middle
    `level` of the bootstrap distribution; None when no resample had the statistic."""
    from scipy.stats import norm

    b = boot[np.isfinite(boot)]
    if len(b) == 0 or not np.isfinite(point):
        return None
    frac = ((b < point).sum() + 0.5 * (b == point).sum()) / len(b)
    z0 = norm.ppf(np.clip(frac, 1 / (len(b) + 1), len(b) / (len(b) + 1)))
    z = norm.ppf(0.5 + level / 2)
    lo, hi = np.quantile(b, [norm.cdf(2 * z0 - z), norm.cdf(2 * z0 + z)])
    return [round(float(lo), 4), round(float(hi), 4)]


def _resample_weights(rng: np.random.Generator, n: int, c: int, clusters: np.ndarray | None) -> np.ndarray:
    """(c, n) counts: how often each face is in each of c bootstrap resamples. clusters None: faces drawn with
    replacement; else cluster codes (n,): whole clusters drawn (as many as there are), every face of a drawn
    cluster counted as often as its cluster was drawn."""
    if clusters is None:
        idx = rng.integers(0, n, size=(c, n))
        return np.bincount((np.arange(c)[:, None] * n + idx).ravel(), minlength=c * n).reshape(c, n).astype(np.float64)
    k = int(clusters.max()) + 1
    draws = rng.integers(0, k, size=(c, k))
    counts = np.bincount(np.repeat(np.arange(c), k) * k + draws.ravel(), minlength=c * k).reshape(c, k)
    return counts[:, clusters].astype(np.float64)


def _cluster_codes(clusters: Sequence[str | None] | None, n: int) -> np.ndarray | None:
    """Integer cluster per face from group labels (None, "" or NaN: a cluster of its own); None where no two faces
    share one (faces are then resampled one by one)."""
    if clusters is None:
        return None
    if len(clusters) != n:
        raise ValueError(f"need one cluster label per face, got {len(clusters)} for {n}")
    alone = lambda g: g is None or g == "" or (isinstance(g, float) and g != g)  # noqa: E731 - None, "", NaN
    labels = [f"f{i}" if alone(g) else f"g{g}" for i, g in enumerate(clusters)]
    _, codes = np.unique(np.array(labels, dtype=object), return_inverse=True)
    return codes.astype(np.int64) if codes.max() + 1 < n else None


def _units(codes: np.ndarray, cl: np.ndarray | None, k: int) -> np.ndarray:
    """How many independent units (faces, or clusters where given) each group code 0..k-1 holds: an interval
    resampled from a few clusters spans only their errors, however many faces they hold."""
    ok = codes >= 0
    if cl is None:
        return np.bincount(codes[ok], minlength=k)
    return np.array([len(np.unique(cl[ok][codes[ok] == j])) for j in range(k)], np.int64)


def _group_sums(w: np.ndarray, err: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per resample (rows of w) and group code (0..k-1; -1 left out): the weighted sum of errors and of weights."""
    onehot = np.zeros((len(codes), k))
    ok = codes >= 0
    onehot[np.flatnonzero(ok), codes[ok]] = 1.0
    return w @ (onehot * err[:, None]), w @ onehot


def bootstrap_ci(pred: np.ndarray, true: np.ndarray, genders: Sequence[str | None] | None = None,
                 races: Sequence[str | None] | None = None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, chunk: int = 100, min_n: int = MIN_N,
                 clusters: Sequence[str | None] | None = None) -> dict:
    """Seeded bootstrap 95 % intervals for MAE, CMAE, bias score, Acc@5 and the per-bin / per-gender / per-race MAE;
    bias-corrected percentile intervals (the bias score, a max − min, is biased upwards under resampling). Faces are
    resampled with replacement, or, given `clusters` (a label per face: a duplicate group or a person; None or "" a
    face of its own), whole clusters, since copies of one photo or one person's faces are not independent. A group
    absent from a resample is left out of that resample's CMAE/bias; a group of fewer than min_n faces gets no
    interval (None), nor does any statistic of a test that small."""
    pred, true = _checked(pred, true)
    err = np.abs(pred - true)
    n = len(err)
    cl = _cluster_codes(clusters, n)
    units = n if cl is None else int(cl.max()) + 1  # faces, or clusters
    rng = np.random.default_rng(seed)
    attrs = {"per_bin": _codes([age_bin(a) for a in true]), "per_gender": _codes(genders) if genders is not None else None,
             "per_race": _codes(races) if races is not None else None}
    stats: dict[str, list[np.ndarray]] = {"mae": [], "acc5": [], "cmae": [], "bias_score": []}
    groups: dict[str, list[np.ndarray]] = {k: [] for k, v in attrs.items() if v is not None}
    hit = (err <= 5).astype(np.float64)
    for start in range(0, n_boot, chunk):
        w = _resample_weights(rng, n, min(chunk, n_boot - start), cl)
        total = w.sum(1)
        stats["mae"].append(w @ err / total)
        stats["acc5"].append(w @ hit / total)
        for key in groups:
            codes, names = attrs[key]
            sums, cnt = _group_sums(w, err, codes, len(names))
            with np.errstate(invalid="ignore", divide="ignore"):
                m = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
            groups[key].append(m)
            if key == "per_bin":
                stats["cmae"].append(np.nanmean(m, 1))
                stats["bias_score"].append(np.nanmax(m, 1) - np.nanmin(m, 1))
    point_bins = per_bin_mae(pred, true)
    points = {"mae": mae(pred, true), "acc5": cumulative_score(pred, true, 5),
              "cmae": float(np.mean(list(point_bins.values()))),
              "bias_score": max(point_bins.values()) - min(point_bins.values())}
    out: dict = {"method": "bootstrap, bias-corrected percentile", "n_boot": n_boot, "seed": seed, "level": level,
                 "resampled": "faces" if cl is None else f"clusters ({int(cl.max()) + 1} for {n} faces)"}
    for k, v in stats.items():
        # one age bin: no bias score, so no interval (every resample would give 0)
        out[k] = (_bc_interval(np.concatenate(v), points[k], level)
                  if units >= max(min_n, 2) and (k != "bias_score" or len(point_bins) >= 2) else None)
    point_groups = {"per_bin": point_bins,
                    "per_gender": per_group_mae(pred, true, genders) if genders is not None else {},
                    "per_race": per_group_mae(pred, true, races) if races is not None else {}}
    for key, parts in groups.items():
        m = np.concatenate(parts)
        codes, names = attrs[key]
        counts = _units(codes, cl, len(names))
        # a group of a few faces (clusters) resamples to them alone: an interval as narrow as their errors
        out[key] = {name: _bc_interval(m[:, j], point_groups[key][name], level) if counts[j] >= max(min_n, 2) else None
                    for j, name in enumerate(names) if name in point_groups[key]}
    return out


def group_report(pred: np.ndarray, true: np.ndarray, genders: Sequence[str | None] | None = None,
                 races: Sequence[str | None] | None = None, ndigits: int = 4, min_n: int = MIN_N) -> dict:
    """fairlearn MetricFrame per sensitive attribute (age bin, gender, race and their pairwise intersections): per
    group n, MAE, Acc@5 and mean signed error, plus the between-group difference (max − min) and ratio (min / max)
    over the groups of min_n faces or more (the others listed in "left_out_of_difference").
    Faces missing an attribute are left out of the frames that use it."""
    import pandas as pd
    from fairlearn.metrics import MetricFrame

    pred, true = np.asarray(pred, float), np.asarray(true, float)
    n = len(pred)
    cols = {"age_bin": [age_bin(a) for a in true],
            "gender": list(genders) if genders is not None else [None] * n,
            "race": list(races) if races is not None else [None] * n}
    metrics = {"n": lambda y, p: len(y), "mae": lambda y, p: float(np.abs(p - y).mean()),
               "acc5": lambda y, p: float((np.abs(p - y) <= 5).mean()), "mean_error": lambda y, p: float((p - y).mean())}
    r = lambda x: round(float(x), ndigits)  # noqa: E731
    out: dict = {}
    for attrs in (["age_bin"], ["gender"], ["race"], ["age_bin", "gender"], ["age_bin", "race"], ["gender", "race"]):
        ok = np.array([all(cols[a][i] for a in attrs) for i in range(n)], bool)
        if ok.sum() == 0:
            continue
        sf = pd.DataFrame({a: np.asarray(cols[a], dtype=object)[ok] for a in attrs})
        mf = MetricFrame(metrics=metrics, y_true=true[ok], y_pred=pred[ok], sensitive_features=sf)
        by = mf.by_group
        rows = {}
        for key, row in by.iterrows():
            if not np.isfinite(row["n"]) or row["n"] == 0:  # an empty combination of the cartesian product
                continue
            label = "|".join(map(str, key)) if isinstance(key, tuple) else str(key)
            rows[label] = {"n": int(row["n"]), "mae": r(row["mae"]), "acc5": r(row["acc5"]),
                           "mean_error": r(row["mean_error"])}
        # the gaps are between groups of min_n faces or more (a 1-face group's error is one face's, not a group's)
        small = sorted(g for g, v in rows.items() if v["n"] < min_n)
        kept = [g for g in rows if g not in small]
        entry = {"by_group": rows, "min_n": min_n, "left_out_of_difference": small}
        if len(kept) < 2:  # nothing to compare, which is not "perfectly fair"
            out["×".join(attrs)] = {**entry, "difference": dict.fromkeys(("mae", "acc5", "mean_error")),
                                    "ratio": dict.fromkeys(("mae", "acc5")),
                                    "note": "one group: no gap to measure" if len(rows) < 2 else
                                    f"fewer than two groups of {min_n}+ faces: no gap measured"}
            continue
        diff, ratio = {}, {}
        for m in ("mae", "acc5", "mean_error"):
            v = np.array([rows[g][m] for g in kept], float)
            diff[m] = _finite(v.max() - v.min(), r)
            if m != "mean_error":  # a ratio of 0 / 0 (every group with Acc@5 0) is undefined: None, as JSON writes it
                ratio[m] = _finite(v.min() / v.max(), r) if v.max() > 0 else None
        out["×".join(attrs)] = {**entry, "difference": diff, "ratio": ratio}
    return out


def _finite(x, r) -> float | None:
    return r(x) if np.isfinite(x) else None


def _std_mae(w: np.ndarray, err: np.ndarray, grp: np.ndarray, bins: np.ndarray, n_groups: int, n_bins: int,
             weights: np.ndarray, use: np.ndarray | None = None) -> np.ndarray:
    """Age-standardised MAE of each group for R resamples at once: w (R, n) how often each face is in each resample
    (`_resample_weights`; ones for the test itself), err, grp, bins (n,); → (R, n_groups), NaN for a group with no
    faces. Bins a group lacks, or that `use` (n_groups, n_bins) leaves out, are dropped and the weights
    renormalised over the rest."""
    cell = np.where(grp >= 0, grp * n_bins + bins, -1)
    sums, cnt = _group_sums(w, err, cell, n_groups * n_bins)
    sums, cnt = sums.reshape(-1, n_groups, n_bins), cnt.reshape(-1, n_groups, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(cnt > 0, sums / np.maximum(cnt, 1), 0.0)
        wt = weights[None, None, :] * (cnt > 0)
        if use is not None:
            wt = wt * use[None]
        return np.where(wt.sum(2) > 0, (per * wt).sum(2) / wt.sum(2), np.nan)


# a group lacking faces in age bins that hold more than this share of the test is not compared at equal age
MISSING_SHARE = 0.05
# fewest faces of a group in one age bin for that bin to count in its standardised MAE: a bin of one face weighs as
# much as a full one, and a face resampling of it neither varies that face's error nor keeps the bin in every
# resample. Simulated (1,000 faces, a group of 80 with k faces aged 61+, 10 % of the weight, no true gap; 200 tests):
# the spread's 95 % interval left out 0 in 19.5 / 13 / 7.5 / 8 % of tests for k = 1 / 2 / 3 / 4 (5 % nominal), the
# group's own interval held its true value in 76.5 / 86 / 93.5 / 93.5 %; a thinner bin counts as missing
MIN_CELL = 3


def _spread_interval(boot: np.ndarray, point: np.ndarray, keep: np.ndarray, level: float) -> list[float] | None:
    """Interval for the spread (max − min over the kept groups) from simultaneous intervals of every pairwise
    difference (bootstrap max-|t|: d ± c·se, c the `level` quantile over resamples of the largest standardised
    deviation of any pair): where every pair's interval holds its true difference, the true spread, the largest
    |difference|, lies between the largest lower and the largest upper bound on |difference|. Unlike an interval
    resampled from the spread itself, it does not collapse when the spread is near 0 (a max − min is biased upwards
    under resampling), and it reaches 0 when no pair is told apart."""
    idx = np.flatnonzero(keep)
    pairs = np.array([(i, j) for k, i in enumerate(idx) for j in idx[k + 1:]])
    if len(pairs) == 0:
        return None
    d_hat = point[pairs[:, 0]] - point[pairs[:, 1]]
    d = boot[:, pairs[:, 0]] - boot[:, pairs[:, 1]]
    d = d[np.isfinite(d).all(1)]
    if len(d) < 2:
        return None
    se = d.std(0, ddof=1)
    se = np.where(se > 0, se, np.inf)  # a pair that never varies adds no deviation
    c = float(np.quantile(np.max(np.abs(d - d_hat) / se, 1), level))
    with np.errstate(invalid="ignore"):  # c = 0 (every pair constant) times an infinite se: replaced just below
        lo, hi = d_hat - c * se, d_hat + c * se
    finite = np.isfinite(se)
    lo, hi = np.where(finite, lo, d_hat), np.where(finite, hi, d_hat)
    upper = np.maximum(np.abs(lo), np.abs(hi))
    lower = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))
    return [round(float(lower.max()), 4), round(float(upper.max()), 4)]


def standardised_mae(pred: np.ndarray, true: np.ndarray, genders: Sequence[str | None] | None = None,
                     races: Sequence[str | None] | None = None, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95, min_n: int = MIN_N, min_cell: int = MIN_CELL,
                     clusters: Sequence[str | None] | None = None) -> dict:
    """Age-standardised MAE per gender, race and gender × race: each group's per-age-bin MAE weighted by the whole
    test's bin shares, so groups are compared at equal age (a raw per-group MAE mostly reflects the group's age mix).
    Per attribute: {"by_group": {g: {"mae", "ci95", "n"}}, "spread": max − min over groups, "spread_ci95"}, with
    seeded bootstrap (faces resampled, or whole `clusters` as in `bootstrap_ci`) bias-corrected percentile intervals
    per group and, for the spread, simultaneous intervals of the pairwise differences (`_spread_interval`). A
    group's age bin of fewer than min_cell faces counts as missing, listed with its faces in "thin_bins" (min_cell
    1: every face counts, the method before 2026-12-06). Left out of the spread, named in "left_out_of_spread" with
    the reason in "left_out_reasons": groups with fewer than min_n faces (one face's error is no group's accuracy)
    or min_n clusters, and groups missing age bins that hold more than MISSING_SHARE of the test (their value is
    re-weighted over the bins they have, so they are not compared at equal age; each group lists its
    "missing_bins")."""
    pred, true = _checked(pred, true)
    err = np.abs(pred - true)
    n = len(err)
    bin_codes, bin_names = _codes([age_bin(a) for a in true])
    weights = np.bincount(bin_codes, minlength=len(bin_names)) / max(n, 1)
    g_ = list(genders) if genders is not None else [None] * n
    r_ = list(races) if races is not None else [None] * n
    cols = {"gender": g_, "race": r_,
            "gender×race": [f"{g}|{r}" if g and r else None for g, r in zip(g_, r_)]}
    cl = _cluster_codes(clusters, n)

    def boot_weights():  # the same seeded draws for every attribute, 100 resamples at a time (memory ~ 100·n)
        rng = np.random.default_rng(seed)
        for start in range(0, n_boot, 100):
            yield _resample_weights(rng, n, min(100, n_boot - start), cl)
    out: dict = {"method": "per-bin MAE weighted by the test's age-bin shares; bootstrap, bias-corrected percentile "
                           "per group; for the spread, simultaneous (bootstrap max-|t|) intervals of the pairwise differences",
                 "bin_shares": {b: round(float(w), 4) for b, w in zip(bin_names, weights)}, "min_cell": min_cell,
                 "n_boot": n_boot, "seed": seed,
                 "resampled": "faces" if cl is None else f"clusters ({int(cl.max()) + 1} for {n} faces)"}
    for attr, labels in cols.items():
        codes, names = _codes(labels)
        if not names:
            continue
        ok = codes >= 0
        counts = np.bincount(codes[ok], minlength=len(names))
        units = _units(codes, cl, len(names))
        cells = np.zeros((len(names), len(bin_names)), np.int64)
        np.add.at(cells, (codes[ok], bin_codes[ok]), 1)
        use = cells >= max(min_cell, 1)
        missing = [[b for b, c in zip(bin_names, row, strict=True) if c == 0] for row in cells]
        thin = [{b: int(c) for b, c in zip(bin_names, row, strict=True) if 0 < c < min_cell} for row in cells]
        missing_share = ((~use) * weights[None]).sum(1)
        reasons = {}
        for j, name in enumerate(names):
            if counts[j] < min_n:
                reasons[name] = f"{counts[j]} face{'' if counts[j] == 1 else 's'} (under {min_n})"
            elif units[j] < min_n:
                reasons[name] = f"{counts[j]} faces in {units[j]} cluster{'' if units[j] == 1 else 's'} (under {min_n})"
            elif missing_share[j] > MISSING_SHARE:
                lacks = [f"no faces aged {', '.join(missing[j])}"] if missing[j] else []
                lacks += [f"{c} face{'' if c == 1 else 's'} aged {b}" for b, c in thin[j].items()]
                thin_note = f"; a bin of under {min_cell} faces counts as missing" if thin[j] else ""
                reasons[name] = (f"{', '.join(lacks)} ({missing_share[j]:.1%} of the test{thin_note}): "
                                 "not comparable at equal age")
        keep = np.array([nm not in reasons for nm in names], bool)
        point = _std_mae(np.ones((1, n)), err, codes, bin_codes, len(names), len(bin_names), weights, use)[0]
        spread = float(np.nanmax(point[keep]) - np.nanmin(point[keep])) if keep.sum() >= 2 else None
        groups = {}
        boot = None
        if n_boot > 0:
            boot = np.concatenate([_std_mae(w, err, codes, bin_codes, len(names), len(bin_names), weights, use)
                                   for w in boot_weights()])
        for j, name in enumerate(names):
            # a few faces resample to themselves: no interval under min_n (as bootstrap_ci)
            ci = _bc_interval(boot[:, j], float(point[j]), level) if boot is not None and units[j] >= max(min_n, 2) else None
            # every bin of a group thin: no standardised value (None), and no interval
            groups[name] = {"mae": _finite(point[j], lambda x: round(float(x), 4)), "ci95": ci, "n": int(counts[j]),
                            "missing_bins": missing[j], "thin_bins": thin[j]}
        entry = {"by_group": groups, "spread": None if spread is None else round(spread, 4), "spread_ci95": None,
                 "min_n": min_n, "left_out_of_spread": list(reasons), "left_out_reasons": reasons}
        if spread is None:
            entry["note"] = ("one group: no gap to measure" if len(names) == 1 else
                             "fewer than two groups can be compared: no gap to measure")
        elif boot is not None:
            entry["spread_ci95"] = _spread_interval(boot, point, keep, level)
        out[attr] = entry
    return out


def fmt(x: float | None, ndigits: int = 3) -> str:
    """A metric for a log line: 'n/a' where it is undefined (None)."""
    return "n/a" if x is None else f"{x:.{ndigits}f}"
