"""A job's age mix (`agelens.inference.prior`): EM finds a folder's mix from the answers alone and re-weighs them."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from agelens.inference.predictor import AgeEstimator
from agelens.inference.prior import KL_FROM, MIN_FACES, adapt_ages, estimate_mix, reweigh

GRID = np.arange(101, dtype=np.float64)


def _normal(mu: float, sd: float) -> np.ndarray:
    p = np.exp(-0.5 * ((GRID - mu) / sd) ** 2)
    return p / p.sum()


TRAINING = 0.7 * _normal(30, 8) + 0.3 * _normal(55, 15)  # a training mix with a heap of young adults


def _answers(prior: np.ndarray, n: int, seed: int, noise: float = 6.0):
    """True ages drawn from `prior`, and what a model trained on TRAINING answers: the posterior mean and sd of
    the age given a noisy look (true age + N(0, noise)) under the TRAINING mix."""
    rng = np.random.default_rng(seed)
    true = rng.choice(GRID, n, p=prior)
    look = true + rng.normal(0, noise, n)
    post = np.exp(-0.5 * ((GRID[None] - look[:, None]) / noise) ** 2) * TRAINING
    post /= post.sum(1, keepdims=True)
    mean = post @ GRID
    return true, mean, np.sqrt(post @ GRID ** 2 - mean ** 2)


@pytest.fixture(scope="module")
def base():
    """The model's training mix as `train.age_prior` measures it: the mean Gaussian answer on training faces."""
    from agelens.inference.prior import posteriors

    _, a, s = _answers(TRAINING, 20000, 0)
    return posteriors(a, s, GRID).mean(0)


def test_a_folder_of_children_is_read_younger_and_closer(base):
    kids = _normal(8, 4)
    true, a, s = _answers(kids, 600, 1)
    new_a, new_s, info = adapt_ages(a, s, base)
    assert info["applied"] and info["faces"] == 600
    moved = np.abs(new_a - a)
    assert info["mean_change"] == round(float(moved.mean()), 3) and info["max_change"] == round(float(moved.max()), 3)
    assert info["max_change"] > info["mean_change"] > 0
    assert np.abs(new_a - true).mean() < 0.85 * np.abs(a - true).mean()  # the lean towards 30 is undone
    assert info["mix_mean_age"] < 15 < info["training_mean_age"]
    assert np.mean(new_a) < np.mean(a) and np.all(new_s > 0)


def test_a_folder_like_the_training_mix_is_left_as_answered(base):
    _, a, s = _answers(TRAINING, 600, 2)
    new_a, new_s, info = adapt_ages(a, s, base)
    assert not info["applied"] and info["divergence"] < KL_FROM and info["strength"] == 0
    assert np.array_equal(new_a, a.astype(np.float32)) and np.array_equal(new_s, s.astype(np.float32))


def test_the_move_grows_with_the_mix_divergence(base):
    """Between KL_FROM and KL_FULL the answers move part of the way: a mix a little off moves them less."""
    moves = []
    for mix in (0.8 * TRAINING + 0.2 * _normal(12, 5), 0.4 * TRAINING + 0.6 * _normal(12, 5), _normal(12, 5)):
        _, a, s = _answers(mix, 800, 5)
        new_a, _, info = adapt_ages(a, s, base)
        moves.append((info["strength"], float(np.abs(new_a - a).mean())))
    assert [m[0] for m in moves] == sorted(m[0] for m in moves) and moves[-1][0] == 1.0
    assert moves[0][1] < moves[-1][1]


def test_estimated_mix_is_a_distribution_and_equal_mixes_change_nothing(base):
    _, a, s = _answers(_normal(70, 6), 300, 3)
    mix = estimate_mix(a, s, base)
    assert mix.shape == base.shape and mix.sum() == pytest.approx(1.0) and (mix > 0).all()
    assert GRID @ mix > GRID @ base + 10  # an old people's home reads older than the training mix
    same_a, same_s = reweigh(np.array([40.0, 50.0]), np.array([5.0, 8.0]), base, base)
    assert same_a == pytest.approx([40.0, 50.0], abs=1e-3) and same_s == pytest.approx([5.0, 8.0], abs=1e-2)


def test_small_jobs_and_models_without_a_training_mix_are_left_as_answered(base):
    a, s = np.linspace(5, 60, MIN_FACES - 1), np.full(MIN_FACES - 1, 5.0)
    for args, why in (((a, s, base), f"fewer than {MIN_FACES} clean faces"),
                      ((np.linspace(5, 60, 50), np.full(50, 5.0), None), "no training age mix")):
        new_a, new_s, info = adapt_ages(*args)
        assert not info["applied"] and np.array_equal(new_a, np.asarray(args[0], np.float32))
        assert np.array_equal(new_s, np.asarray(args[1], np.float32))
        assert why in info["reason"]  # the summary says why, for a Python caller of est.adapt


def _estimator(prior):
    teacher = SimpleNamespace(name="teacher", crop_size=224, input_size=160, interval_z=1.8, age_prior=prior,
                              min_age=0.0, max_age=100.0)
    return AgeEstimator(teacher, backend="test")


def test_estimator_adapts_a_jobs_records_with_their_intervals(base):
    true, a, s = _answers(_normal(8, 4), 60, 4)
    records = [{"file": f"{i}.jpg", "error": None,
                "faces": [{"age": float(x), "spread": float(y), "interval": [0.0, 100.0], "student_weight": 0.0,
                           "model": "teacher"}]} for i, (x, y) in enumerate(zip(a, s, strict=True))]
    records.append({"file": "bad.jpg", "error": "no face found", "faces": []})
    occluded = [{"file": "occ.jpg", "error": None, "faces": [
        {"age": 30.0, "spread": 9.0, "interval": [14.0, 46.0], "student_weight": 1.0, "model": "student",
         "occlusion_score": 0.97},
        {"age": 31.0, "spread": 9.0, "interval": [15.0, 47.0], "student_weight": 0.0, "model": "teacher",
         "occlusion_score": 0.25}]}]
    kept = json.loads(json.dumps(occluded))
    info = _estimator(list(base)).adapt(records + occluded)
    assert info["applied"] and info["faces"] == 60 and info["left_as_answered"] == 2
    assert occluded == kept  # an occluded or unsure face keeps its own answer
    ages = np.array([r["faces"][0]["age"] for r in records[:-1]])
    assert np.abs(ages - true).mean() < np.abs(a - true).mean()
    for r in records[:-1]:  # the intervals follow the adapted answers (rounded to 0.01 years, then 0.1)
        f = r["faces"][0]
        assert f["interval"][0] == pytest.approx(max(0.0, f["age"] - 1.8 * f["spread"]), abs=0.1)
        assert f["interval"][1] == pytest.approx(min(100.0, f["age"] + 1.8 * f["spread"]), abs=0.1)
    unchanged = json.loads(json.dumps(records))
    assert not _estimator(None).adapt(unchanged)["applied"] and unchanged == records  # no card mix: as answered


@pytest.mark.parametrize("fmt,name", [("jsonl", "out.jsonl"), ("csv", "out.csv"), ("parquet", "out.parquet")])
def test_an_adapted_job_replaces_its_streamed_output_whole(tmp_path, fmt, name):
    """A streamed --output is rewritten with the adapted records: all of it, in every format, nothing left beside."""
    import pandas as pd

    from agelens.inference.stream import open_sink, rewrite_output

    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    face = {"box": [1.0, 2.0, 30.0, 40.0], "age": 30.0, "spread": 5.0, "interval": [21.0, 39.0],
            "detection_score": 0.9, "model": "teacher", "landmarks_found": True, "detection": "detector",
            "occluded": False, "occlusion_score": 0.01, "student_weight": 0.0}
    records = [{"file": f"{i}.jpg", "error": None, "faces": [dict(face, age=30.0 + i)]} for i in range(5)]
    out = tmp_path / name
    sink = open_sink(out, fmt)
    for r in records:
        sink.write(r)
    sink.close()
    adapted = json.loads(json.dumps(records))
    for r in adapted:
        r["faces"][0]["age"] -= 7.5
    rewrite_output(out, fmt, adapted)
    if fmt == "jsonl":
        ages = [json.loads(x)["faces"][0]["age"] for x in out.read_text().splitlines()]
    elif fmt == "csv":
        ages = list(pd.read_csv(out)["age"])
    else:
        ages = [r["faces"][0]["age"] for r in pd.read_parquet(out).to_dict("records")]
    assert ages == [22.5 + i for i in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
