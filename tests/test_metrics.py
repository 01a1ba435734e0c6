import numpy as np
import pytest

from agelens.evaluate.metrics import age_bin, compute_metrics


def test_bins():
    assert [age_bin(a) for a in (0, 10, 11, 20.4, 60, 61, 99)] == ["0-10", "0-10", "11-20", "11-20", "51-60", "61+", "61+"]


def test_hand_computed():
    true = np.array([5, 5, 25, 25, 70])
    pred = np.array([6, 9, 25, 35, 64])
    genders = ["male", "female", "male", "female", None]
    races = ["white", "white", "black", "black", "asian"]
    m = compute_metrics(pred, true, genders, races)
    assert m["n"] == 5
    assert m["mae"] == pytest.approx((1 + 4 + 0 + 10 + 6) / 5)
    assert m["cs5"] == pytest.approx(3 / 5) and m["acc5"] == m["cs5"]
    assert m["per_bin"] == {"0-10": 2.5, "21-30": 5.0, "61+": 6.0}
    assert m["cmae"] == pytest.approx((2.5 + 5 + 6) / 3)
    assert m["bias_score"] == pytest.approx(3.5)
    assert m["per_gender"] == {"female": 7.0, "male": 0.5}
    assert m["per_race"] == {"asian": 6.0, "black": 5.0, "white": 2.5}
    assert m["cs"]["1"] == pytest.approx(2 / 5)


def test_rejects_empty():
    with pytest.raises(ValueError):
        compute_metrics(np.array([]), np.array([]))


def test_reports_stay_standard_json_and_one_group_is_no_gap(tmp_path):
    import json

    from agelens.evaluate.metrics import group_report
    from agelens.utils import atomic_write_json

    true = np.array([25.0, 26.0, 27.0, 28.0])
    pred = true + 10  # every face more than 5 years off: Acc@5 is 0 in every group, its ratio 0 / 0
    rep = group_report(pred, true, ["male", "female", "male", "female"], ["white"] * 4, min_n=2)
    assert rep["gender"]["ratio"]["acc5"] is None and rep["gender"]["difference"]["mae"] == 0.0
    assert rep["race"]["difference"]["mae"] is None and "one group" in rep["race"]["note"]
    atomic_write_json(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.array([np.nan])})
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=pytest.fail) == {"a": None, "b": [None, 1.5],
                                                                                          "c": [None]}


def test_a_group_of_a_few_faces_stays_out_of_the_spread():
    from agelens.evaluate.metrics import standardised_mae

    rng = np.random.default_rng(0)
    ages = rng.integers(1, 80, 201).astype(float)
    race = ["a"] * 100 + ["b"] * 100 + ["c"]  # one face of c, read 40 years off
    pred = ages + rng.normal(0, 3, 201)
    pred[-1] += 40
    r = standardised_mae(pred, ages, None, race, n_boot=100)["race"]
    assert r["left_out_of_spread"] == ["c"] and r["spread"] < 5 and r["by_group"]["c"]["n"] == 1


def test_bins_round_half_up():
    assert [age_bin(a) for a in (10.4, 10.5, 60.5, -0.2)] == ["0-10", "11-20", "61+", "0-10"]


def test_a_near_zero_gap_keeps_an_honest_interval():
    """Resampling a max − min near 0 squeezes a bias-corrected interval below its own point (0.004 [0.0001,
    0.0023] on the shipped teacher's run); the pairwise interval holds the point and reaches 0."""
    from agelens.evaluate.metrics import standardised_mae

    rng = np.random.default_rng(1)
    ages = rng.integers(1, 80, 600).astype(float)
    pred = ages + rng.normal(0, 5, 600)
    gender = ["female", "male"] * 300
    g = standardised_mae(pred, ages, gender, None, n_boot=400)["gender"]
    lo, hi = g["spread_ci95"]
    assert lo == 0.0 and hi >= g["spread"] and hi > 0.1  # two like groups: no gap told apart, a wide upper end
    r = standardised_mae(pred + np.where(np.array(gender) == "male", 3.0, 0.0) * np.sign(pred - ages), ages,
                         gender, None, n_boot=400)["gender"]
    assert 0 < r["spread_ci95"][0] <= r["spread"] <= r["spread_ci95"][1]  # a real gap of about 3 years: told apart


def test_a_group_missing_age_bins_is_not_compared_at_equal_age():
    from agelens.evaluate.metrics import standardised_mae

    rng = np.random.default_rng(2)
    ages = np.concatenate([rng.integers(1, 80, 300), rng.integers(1, 40, 60)]).astype(float)
    race = ["a"] * 150 + ["b"] * 150 + ["c"] * 60  # c: no faces over 40
    pred = ages + rng.normal(0, 3, 360)
    r = standardised_mae(pred, ages, None, race, n_boot=50)["race"]
    assert r["left_out_of_spread"] == ["c"] and "not comparable at equal age" in r["left_out_reasons"]["c"]
    assert r["by_group"]["c"]["missing_bins"] == ["41-50", "51-60", "61+"] and r["by_group"]["a"]["missing_bins"] == []


def test_one_face_in_a_heavy_age_bin_does_not_stand_for_the_bin():
    """A group with a single face aged 61+ (10 % of the test's weight) read 20 years off: with that face weighing
    as a whole bin the group looked 2 years worse than a like group, an interval excluding 0; a bin of under
    MIN_CELL faces counts as missing, so the group is not compared at equal age."""
    from agelens.evaluate.metrics import MIN_CELL, standardised_mae

    rng = np.random.default_rng(5)
    ages = np.concatenate([rng.integers(0, 61, 900), rng.integers(61, 90, 100)]).astype(float)
    race = np.array(["w"] * 1000, object)
    race[np.flatnonzero(ages < 61)[:79]] = "o"
    race[np.flatnonzero(ages >= 61)[0]] = "o"
    err = rng.normal(0, 1, 1000) * np.where(ages >= 61, 10.0, 4.0)
    err[np.flatnonzero(ages >= 61)[0]] = 20.0
    r = standardised_mae(ages + err, ages, None, list(race), n_boot=200)["race"]
    assert r["by_group"]["o"]["thin_bins"] == {"61+": 1} and r["by_group"]["o"]["missing_bins"] == []
    assert r["left_out_of_spread"] == ["o"] and "1 face aged 61+" in r["left_out_reasons"]["o"]
    assert r["spread"] is None and r["spread_ci95"] is None
    # the same group with MIN_CELL faces in the bin, like the others': kept, and no gap told apart
    race[np.flatnonzero(ages >= 61)[:MIN_CELL]] = "o"
    err[np.flatnonzero(ages >= 61)[0]] = 0.0
    r = standardised_mae(ages + err, ages, None, list(race), n_boot=200)["race"]
    assert r["left_out_of_spread"] == [] and r["by_group"]["o"]["thin_bins"] == {} and r["spread_ci95"][0] == 0.0


def test_one_bin_one_face_and_one_gender_are_not_gaps():
    from agelens.evaluate.metrics import bootstrap_ci, standardised_mae

    true = np.array([25.0, 26.0, 27.0, 28.0, 29.0])
    pred = true + np.array([1.0, -2.0, 3.0, 0.5, 4.0])
    races = ["w", "w", "w", "w", "b"]
    m = compute_metrics(pred, true, ["male"] * 5, races)
    ci = bootstrap_ci(pred, true, ["male"] * 5, races, n_boot=50, min_n=1)
    assert m["bias_score"] is None and ci["bias_score"] is None  # one age bin: no gap, not 0 [0, 0]
    assert ci["per_race"]["b"] is None and ci["per_race"]["w"] is not None  # one face: no interval of no width
    s = standardised_mae(pred, true, ["male"] * 5, races, n_boot=50, min_n=1)
    assert s["gender"]["spread"] is None and s["gender"]["note"] == "one group: no gap to measure"
    assert s["race"]["by_group"]["b"]["ci95"] is None


def test_groups_of_a_few_faces_get_no_interval_and_small_bins_are_named():
    """Two faces aged 61+ resample to themselves: [38.0, 38.2] read as a precise group MAE; under MIN_N faces a group
    gets no interval, and compute_metrics names the age bins its CMAE and bias score read from a few faces."""
    from agelens.evaluate.metrics import MIN_N, bootstrap_ci, standardised_mae

    rng = np.random.default_rng(0)
    true = np.r_[rng.uniform(22, 38, 60), [70.0, 75.0]]
    pred = true + np.r_[rng.normal(0, 3, 60), [-38.0, -38.2]]
    races = ["white"] * 55 + ["asian"] * 7
    m = compute_metrics(pred, true, ["male", "female"] * 31, races)
    assert m["small_bins"] == {"61+": 2} and m["per_bin_n"]["61+"] == 2 and MIN_N == 10
    ci = bootstrap_ci(pred, true, ["male", "female"] * 31, races, n_boot=100)
    assert ci["per_bin"]["61+"] is None and ci["per_race"]["asian"] is None
    assert ci["per_bin"]["21-30"] is not None and ci["per_race"]["white"] is not None
    s = standardised_mae(pred, true, ["male", "female"] * 31, races, n_boot=100)
    assert s["race"]["by_group"]["asian"]["ci95"] is None and s["race"]["by_group"]["white"]["ci95"] is not None


def test_group_gaps_leave_out_groups_of_a_few_faces():
    from agelens.evaluate.metrics import group_report

    rng = np.random.default_rng(0)
    true = rng.uniform(20, 60, 41)
    pred = true + rng.normal(0, 3, 41)
    races = ["white"] * 20 + ["black"] * 20 + ["pacific"]
    pred[-1] = true[-1] + 40  # one face of its own group, 40 years off
    rep = group_report(pred, true, None, races)["race"]
    assert rep["left_out_of_difference"] == ["pacific"] and rep["by_group"]["pacific"]["n"] == 1
    w, b = rep["by_group"]["white"]["mae"], rep["by_group"]["black"]["mae"]
    assert rep["difference"]["mae"] == pytest.approx(abs(w - b), abs=1e-4) and rep["difference"]["mae"] < 5
    two = group_report(pred[-21:], true[-21:], None, races[-21:])["race"]  # black (20) and pacific (1)
    assert two["difference"]["mae"] is None and "fewer than two groups of 10+ faces" in two["note"]


def test_the_report_names_groups_left_out_or_re_weighted():
    from agelens.evaluate.metrics import standardised_mae
    from agelens.fairness.report import standardised_table

    rng = np.random.default_rng(3)
    # a: every age; b: none aged 0-10 (4 % of the test: kept, re-weighted); c: none over 60; d: 3 faces
    ages = np.concatenate([rng.integers(1, 11, 20), rng.integers(11, 80, 180), rng.integers(11, 80, 200),
                           rng.integers(11, 58, 80), [65.0, 25.0, 35.0]]).astype(float)
    race = ["a"] * 200 + ["b"] * 200 + ["c"] * 80 + ["d"] * 3
    std = standardised_mae(ages + rng.normal(0, 3, len(ages)), ages, None, race, n_boot=50)
    r = std["race"]
    assert r["left_out_of_spread"] == ["c", "d"] and r["by_group"]["b"]["missing_bins"] == ["0-10"]
    page = standardised_table({"standardised": std})
    assert "re-weighted without 0-10" in page and page.count("left out of the spread") == 2
    assert "under 3 faces counts as missing" in page
    # a group whose every bin is thin has no standardised value: n/a, not a crash
    r["by_group"]["d"]["mae"] = None
    assert "n/a" in standardised_table({"standardised": std})


def test_metrics_refuse_nan_ages_and_small_tests_get_no_interval():
    from agelens.evaluate.metrics import bootstrap_ci
    from agelens.fairness.cv import CV_KEYS, format_cv

    with pytest.raises(ValueError, match="1 true age.*not finite.*position 1"):
        compute_metrics(np.array([20.0, 30.0]), np.array([21.0, np.nan]))
    with pytest.raises(ValueError, match="predicted age"):
        bootstrap_ci(np.array([np.inf, 30.0]), np.array([21.0, 30.0]))
    ci = bootstrap_ci(np.array([20.0]), np.array([25.0]), n_boot=50)
    assert ci["mae"] is None and ci["acc5"] is None  # one face: no interval, not [5.0, 5.0]
    # a cross-validation whose bias score has a value in one fold only: its std is unknown, not 0
    rows = [{"fold": 0, "n": 40, **dict.fromkeys(CV_KEYS, 5.0)}, {"fold": 1, "n": 40, **dict.fromkeys(CV_KEYS, 6.0)}]
    rows[1]["bias_score"] = None
    summary = {"per_fold": rows, "mean": {k: 5.5 for k in CV_KEYS} | {"bias_score": 5.0},
               "std": {k: 0.71 for k in CV_KEYS} | {"bias_score": None}}
    table = format_cv(summary)
    assert "5.000 ± n/a" in table and table.count("n/a") == 2


def test_copies_of_one_photo_are_resampled_together():
    """40 photos saved 10 times each: resampling faces treats the copies as 400 independent errors and gives an
    interval about √10 too narrow; resampling the duplicate groups gives the 40 photos' own uncertainty."""
    from agelens.evaluate.metrics import bootstrap_ci, standardised_mae

    rng = np.random.default_rng(4)
    ages = np.repeat(rng.uniform(1, 80, 40), 10)
    pred = ages + np.repeat(rng.normal(0, 5, 40), 10)
    photo = [f"p{i // 10}" for i in range(400)]
    gender = np.repeat(np.array(["f", "m"] * 20, object), 10).tolist()
    faces = bootstrap_ci(pred, ages, gender, None, n_boot=400)
    groups = bootstrap_ci(pred, ages, gender, None, n_boot=400, clusters=photo)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert faces["resampled"] == "faces" and groups["resampled"] == "clusters (40 for 400 faces)"
    assert width(groups["mae"]) > 2.5 * width(faces["mae"])
    assert width(groups["per_gender"]["f"]) > 2.5 * width(faces["per_gender"]["f"])
    s_faces = standardised_mae(pred, ages, gender, None, n_boot=400)["gender"]
    s_groups = standardised_mae(pred, ages, gender, None, n_boot=400, clusters=photo)["gender"]
    assert s_groups["spread"] == s_faces["spread"] and width(s_groups["spread_ci95"]) > 2 * width(s_faces["spread_ci95"])
    # labels no two faces share (or none): faces resampled, the same seeded draws as without clusters
    assert bootstrap_ci(pred, ages, gender, None, n_boot=100, clusters=[None] * 400) == bootstrap_ci(
        pred, ages, gender, None, n_boot=100)


def test_a_few_clusters_get_no_interval_however_many_faces():
    """60 faces of one person resample to that person alone: an interval of no width (before), not an interval."""
    from agelens.evaluate.metrics import bootstrap_ci, standardised_mae

    rng = np.random.default_rng(6)
    ages = rng.uniform(1, 80, 120)
    pred = ages + rng.normal(0, 4, 120)
    gender = ["m"] * 60 + ["f"] * 60
    person = ["p0"] * 60 + [f"q{i}" for i in range(60)]  # the men: one person; the women: 60
    ci = bootstrap_ci(pred, ages, gender, None, n_boot=100, clusters=person)
    assert ci["per_gender"]["m"] is None and ci["per_gender"]["f"] is not None and ci["mae"] is not None
    assert bootstrap_ci(pred[:60], ages[:60], n_boot=100, clusters=person[:60])["mae"] is None
    s = standardised_mae(pred, ages, gender, None, n_boot=100, clusters=person)["gender"]
    assert s["left_out_of_spread"] == ["m"] and "60 faces in 1 cluster (under 10)" in s["left_out_reasons"]["m"]
    # a label 0 is a cluster like any other; None, "" and NaN are faces of their own
    from agelens.evaluate.metrics import _cluster_codes

    codes = _cluster_codes([0, 0, None, "", float("nan"), "a", "a"], 7)
    assert codes[0] == codes[1] and codes[5] == codes[6] and len(set(codes[2:5].tolist())) == 3


# ---- pinned by hand: each of these numbers a mutation of the code once changed unnoticed (a mutation audit) ----


def test_signed_errors_small_bins_and_negative_ages_by_hand():
    true = np.array([5, 5, 25, 25, 70])
    pred = np.array([6, 9, 25, 35, 64])
    m = compute_metrics(pred, true)
    assert m["mean_error"] == pytest.approx((1 + 4 + 0 + 10 - 6) / 5)  # predicted − true: positive reads older
    assert age_bin(-1) == "0-10" and age_bin(-0.4) == "0-10"
    ten = compute_metrics(np.arange(10) + 1.0, np.arange(10.0))  # a bin of exactly MIN_N faces is not small
    assert ten["small_bins"] == {}
    nine = compute_metrics(np.arange(9) + 1.0, np.arange(9.0))
    assert nine["small_bins"] == {"0-10": 9}


def test_group_report_by_hand():
    from agelens.evaluate.metrics import group_report

    true = np.full(30, 30.0)
    pred = np.concatenate([true[:20] + 2, true[20:] + 4])  # 20 women off by +2, 10 men by +4
    genders = ["female"] * 20 + ["male"] * 10
    g = group_report(pred, true, genders)["gender"]
    assert g["by_group"]["female"]["mean_error"] == 2.0 and g["by_group"]["male"]["mean_error"] == 4.0
    assert g["difference"]["mae"] == 2.0 and g["ratio"]["mae"] == 0.5  # min / max
    small = group_report(pred[:25], true[:25], genders[:25])["gender"]  # 5 men: under min_n = 10
    assert small["left_out_of_difference"] == ["male"] and small["difference"]["mae"] is None


def test_standardised_spread_leaves_out_a_small_group_however_far_off():
    from agelens.evaluate.metrics import standardised_mae

    rng = np.random.default_rng(0)
    true = np.tile([5.0, 25.0, 45.0], 40)  # 120 faces, three age bins
    pred = true + rng.choice([-3.0, 3.0], len(true))
    races = ["a"] * 57 + ["b"] * 57 + ["c"] * 6  # c: 2 faces per bin, and 40 years off
    pred[114:] = true[114:] + 40
    s = standardised_mae(pred, true, races=races, n_boot=0, min_cell=1)["race"]
    assert "c" in s["left_out_of_spread"] and s["spread"] < 5


def test_bias_corrected_interval_by_hand():
    from agelens.evaluate.metrics import _bc_interval

    # Efron's correction: the point at the 30th of 100 values pulls the interval down, not the middle 90 %
    assert _bc_interval(np.arange(100.0), 30.0, 0.9) == pytest.approx([0.3811, 72.6579], abs=1e-3)
    # the level is honoured: a uniform spread of resamples, the point in the middle, gives its quantiles
    assert _bc_interval(np.linspace(0, 1, 100001), 0.5, 0.95) == pytest.approx([0.025, 0.975], abs=1e-3)


def test_bootstrap_cmae_is_the_mean_of_bins_and_small_tests_get_none():
    from agelens.evaluate.metrics import bootstrap_ci

    true = np.repeat([5.0, 25.0, 45.0], 20)
    err = np.repeat([1.0, 1.0, 10.0], 20)  # bins of MAE 1, 1, 10: CMAE 4 (a median of bins would read 1)
    ci = bootstrap_ci(true + err, true, n_boot=200)
    assert ci["cmae"][0] <= 4.0 <= ci["cmae"][1] and ci["cmae"][0] > 1.5
    assert bootstrap_ci(true[:5] + 1, true[:5], n_boot=50)["mae"] is None  # 5 faces: no interval


def test_interval_report_by_hand():
    from agelens.evaluate.metrics import interval_report

    assert interval_report([10], [8], [13])["mean_width"] == 5.0
    r = interval_report([5, 70], [0, 0], [10, 60])
    assert r["per_bin"] == {"0-10": 1.0, "61+": 0.0} and r["coverage"] == 0.5
