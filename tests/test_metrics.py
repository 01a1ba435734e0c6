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
    rep = group_report(pred, true, ["male", "female", "male", "female"], ["white"] * 4)
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
