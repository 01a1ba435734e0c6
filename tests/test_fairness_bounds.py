"""benchmarks/fairness_bounds.py: label-disagreement floor, oracle per-bin shift, bias-vs-MAE ratio."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fairness_bounds as fb  # noqa: E402


def test_label_disagreement_floor(tmp_path):
    csv = tmp_path / "groups.csv"
    csv.write_text("group,file\n"
                   "a,60_0_0_1.jpg.chip.jpg\na,70_0_0_2.jpg.chip.jpg\na,70_0_0_3.jpg.chip.jpg\n"  # pairs 10, 10, 0
                   "b,5_1_0_4.jpg.chip.jpg\nb,5_1_0_5.jpg.chip.jpg\n")
    d = fb.label_disagreement(csv)
    assert d["0-10"] == {"pairs": 1, "mean_abs_diff": 0.0, "share_differ": 0.0, "mae_floor": 0.0}
    # pair (60, 70) has mean age 65 → 61+, pair (70, 70) → 61+
    assert d["61+"]["pairs"] == 3 and d["61+"]["mean_abs_diff"] == pytest.approx(20 / 3, abs=1e-3)
    assert d["61+"]["mae_floor"] == pytest.approx(10 / 3, abs=1e-3)


def test_oracle_shift_removes_per_bin_offsets_but_not_spread(tmp_path):
    csv = tmp_path / "p.csv"
    rows = [(5, 7), (6, 8), (7, 9), (70, 60), (72, 62), (80, 70)]  # 0-10: +2 each; 61+: −10 each
    csv.write_text("age,pred\n" + "".join(f"{a},{p}\n" for a, p in rows))
    r = fb.oracle_shift(csv)
    assert r["bias"] == pytest.approx(8.0) and r["bias_oracle_shift"] == pytest.approx(0.0)
    rows.append((90, 90))  # a spread in 61+: median shift −10 leaves |0 + 10| on that face
    csv.write_text("age,pred\n" + "".join(f"{a},{p}\n" for a, p in rows))
    assert fb.oracle_shift(csv)["bias_oracle_shift"] == pytest.approx(10 / 4)


def test_accuracy_vs_bias_keeps_clean_tests_of_the_same_faces(tmp_path):
    for name, m in {"a": {"n": 10, "mae": 5.0, "bias_score": 7.0}, "b": {"n": 10, "mae": 4.0, "bias_score": 5.0},
                    "c": {"n": 10, "mae": 6.0, "bias_score": 9.0, "occlusion": "all"},
                    "d": {"n": 11, "mae": 1.0, "bias_score": 1.0}}.items():
        (tmp_path / name / "test").mkdir(parents=True)
        (tmp_path / name / "test" / "metrics.json").write_text(json.dumps(m))
    pts = fb.accuracy_vs_bias(str(tmp_path / "**" / "test*" / "metrics.json"), 10)
    assert [(p["mae"], p["bias"]) for p in pts] == [(5.0, 7.0), (4.0, 5.0)]
