"""benchmarks/label_free.py: the second opinion's blend and scores, the toned-print test."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import label_free as lf  # noqa: E402


def test_blend_leaves_student_faces_and_v0_alone():
    assert lf.blended([30.0, np.nan, np.nan, 1.0], 0.3) == 30.0  # the student answered alone
    assert lf.blended([30.0, 30.0, 40.0, 0.0], 0.0) == 30.0
    assert lf.blended([30.0, 30.0, 40.0, 0.0], 0.3) == pytest.approx(33.0)
    # a blended face: only the teacher's share (1 - w) takes the student's plain view in
    assert lf.blended([32.0, 30.0, 40.0, 0.5], 0.4) == pytest.approx(32.0 + 0.5 * 0.4 * 10.0)


def test_score_opinions_counts_answered_faces_and_changes():
    row = {"age": 20.0, "clean": [22.0, 22.0, 19.0, 0.0]}
    rows = [dict(row, **{c: row["clean"] for c in (*lf.TEST_DEGRADATIONS, "occluded", *lf.STABILITY)}),
            dict(row, clean=None, jpeg_q75=None)]  # an unanswered photo is left out, not scored as 0
    res = lf.score_opinions(rows, [0.0, 0.5])
    assert res["mae"]["clean"] == [2.0, 0.5]
    assert res["stability"]["jpeg_q75"] == [[0.0, 0.0], [0.0, 0.0]]
    assert res["clean_paired_v0.3"][0] == pytest.approx(-0.9)


def test_tone_ratio_separates_toned_from_colour():
    from skimage import data

    rgb = data.astronaut()
    g = rgb.mean(-1, keepdims=True)
    sepia = np.clip(g * np.array([1.07, 0.95, 0.76]) + 12, 0, 255).astype(np.uint8)
    assert lf.tone_ratio(sepia) < lf.TONED_BELOW < lf.tone_ratio(rgb)
    assert lf.tone_ratio(lf.grey(rgb)) < 1e-5
