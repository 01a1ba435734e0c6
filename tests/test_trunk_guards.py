"""The guard heads' logistic fit: weights folded back to raw features, no deprecated scikit-learn call."""

import warnings

import numpy as np

from agelens.train.trunk_guards import CS, fit_logistic


def test_fit_logistic_folds_the_standardisation_into_raw_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) * np.array([1, 10, 0.1, 1, 1, 5]) + np.array([0, 3, -2, 0, 1, 0])
    y = ((x[:, 0] - 0.2 * x[:, 1] + rng.normal(0, 0.5, 400)) > -0.6).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        w, b, c = fit_logistic(x, y)
    assert w.shape == (6,) and c in CS
    p = 1 / (1 + np.exp(-(x @ w + b)))
    assert ((p > 0.5) == y).mean() > 0.85
    assert w[0] > 0 and w[1] < 0
