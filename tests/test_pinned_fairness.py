"""Fairness losses, the balanced sampler, KNN refinement, the job's age-mix adaptation and split-conformal
calibration pinned by hand: each value was derived by hand (or, where said, pinned from the code) after a mutation
audit changed it unnoticed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from agelens.config import FairnessConfig
from agelens.evaluate import calibrate as C
from agelens.fairness import knn as N
from agelens.fairness import losses as L
from agelens.fairness import sampling as S
from agelens.inference import prior as P

SIDE = 0.7260695963132157  # lds_kernel_window(3, 1)[0]: the Gaussian kernel's side weight, centre 1


def close(x, y, tol=1e-4) -> bool:
    return np.allclose(np.asarray(x, float), np.asarray(y, float), atol=tol)


def test_lds_weights_by_hand():
    c = SIDE
    assert close(L.lds_weights([20] * 4 + [21], 3, 1.0, "inverse"), [1 / (5 * (1 + 2 * c))] * 5)  # counts clipped to 5
    assert close(L.lds_weights([20] * 4 + [21], 3, 1.0), [1 / (2 + c)] * 4 + [1 / (1 + 2 * c)])  # inverse sqrt, smoothed
    assert close(L.lds_weights([20, 21], 3, 1.0, draws=np.array([4.0, 1.0])), [1 / (2 + c), 1 / (1 + 2 * c)])
    assert close(L.lds_weights([20.6, 20, 20, 20, 21], 3, 1.0)[0], 1 / (np.sqrt(2) + c * np.sqrt(3)))  # 20.6 is 21
    assert close(L.normalise(np.array([1.0, 2.0]), np.array([3.0, 1.0])), [0.8, 1.6])  # mean weight 1 over draws


def test_sample_weights_follow_the_sampled_mix():
    cb = FairnessConfig(cb_beta=0.9, cb_by=["age_bin"], max_weight=100)
    w = L.sample_weights(cb, [5, 6, 7, 40], [None] * 4, [None] * 4, np.array([1.0, 1, 1, 2]))
    assert close(w, [0.854317] * 3 + [1.218525])
    lds = FairnessConfig(lds=True, lds_kernel=3, lds_sigma=1.0, max_weight=100)
    assert close(L.sample_weights(lds, [20, 21], [None] * 2, [None] * 2, np.array([4.0, 1])), [0.978146, 1.087416])


def test_knn_adjustment_by_hand():
    emb, ages = torch.tensor([[1.0, 0], [0.6, 0.8], [0, 1]]), torch.tensor([10.0, 20, 40])
    t = L.KnnAdjustment(k=2, bank_size=0).targets(emb, ages)
    assert close(t.tolist(), [20, 38 / 1.4, 20], 1e-3)  # similarity-weighted neighbours, not plain means
    assert close(L.KnnAdjustment(k=2, bank_size=0)(t + torch.tensor([1.0, -2, 3]), emb, ages).item(), 2.0, 1e-3)  # L1
    k = L.KnnAdjustment(k=1, bank_size=2)
    for e, a in (([1.0, 0], 1.0), ([0.0, 1], 2.0), ([0.6, 0.8], 3.0)):
        k.targets(torch.tensor([e]), torch.tensor([a]))
    assert k.bank_age.tolist() == [2.0, 3.0] and close(k.bank_emb.tolist(), [[0, 1], [0.6, 0.8]])  # the newest kept
    k = L.KnnAdjustment(k=3, bank_size=8)
    k.targets(torch.tensor([[1.0, 0], [-1.0, 0]]), torch.tensor([10.0, 90]), torch.tensor([7, 8]))
    # face 7's own earlier copy in the bank is no neighbour of it
    assert close(k.targets(torch.tensor([[1.0, 0], [0, 1.0]]), torch.tensor([10.0, 50]), torch.tensor([7, 9]))[0].item(),
                 70.0, 1e-3)


def test_fair_loss_weights_and_terms():
    head = SimpleNamespace(loss=lambda out, y, w: torch.tensor(0.0), decode=lambda out: (out["pred"],))
    assert close(L.FairLoss(head, np.array([1.0, 0, 1, 1]), 0.5, None, 0.0).weights.tolist(), [1.5, 1, 1.5, 1.5])
    emb, ages = torch.tensor([[1.0, 0], [0.6, 0.8], [0, 1]]), torch.tensor([10.0, 20, 40])
    t = torch.tensor([20, 38 / 1.4, 20])
    fl = L.FairLoss(head, None, 0.0, L.KnnAdjustment(k=2, bank_size=0), 0.25)
    assert close(fl({"pred": t + torch.tensor([1.0, -2, 3]), "embedding": emb}, ages, torch.arange(3)).item(), 0.5, 1e-3)
    fl = L.FairLoss(head, None, 0.0, L.KnnAdjustment(k=1, bank_size=8), 1.0)
    fl({"pred": torch.tensor([10.0, 50]), "embedding": torch.tensor([[1.0, 0], [0, 1.0]])}, torch.tensor([10.0, 50]),
       torch.tensor([7, 8]))
    out = {"pred": torch.tensor([10.0]), "embedding": torch.tensor([[1.0, 0]])}
    assert close(fl(out, torch.tensor([10.0]), torch.tensor([7])).item(), 40.0, 1e-3)  # its own copy is left out


def test_balanced_sampler_by_hand():
    s = S.BalancedSampler(["a", "b"] * 5, seed=0)
    drawn = s.draw(3).tolist()
    s.set_epoch(3)
    assert drawn == list(s)
    assert S.group_labels([20.6, 20.4], None, None, ["age"]) == ["21", "20"]
    with pytest.raises(ValueError):
        S.BalancedSampler(["a"] * 4, num_replicas=2, rank=2)
    assert close(S.balanced_probabilities(["b", "a", "a", "a"]), [0.5, 1 / 6, 1 / 6, 1 / 6])  # labels in any order


def test_knn_refinement_by_hand():
    with np.errstate(all="ignore"):
        assert close(N.knn_mean(np.array([[-0.5, -0.2]]), np.array([[30.0, 50.0]]), 2), [40.0])  # no NaN
    pred, true = np.array([25.0] * 9 + [15.0]), np.array([25.0] * 9 + [5.0])
    nb = np.array([[28.0]] * 9 + [[5.0]])
    assert N.tune(pred, true, np.ones((10, 1)), nb, ks=(1,), ws=(0.0, 0.5, 1.0))[:2] == (1, 0.0)
    assert N.tune(pred, true, np.ones((10, 1)), nb, ks=(1,), ws=(0.0, 0.5, 1.0), criterion="cmae")[:2] == (1, 1.0)
    same = N.tune(np.array([10.0, 20]), np.array([10.0, 20]), np.array([[1, 0.5], [1, 0.5]]),
                  np.array([[10.0, 99], [20, 99]]), ks=(1, 2), ws=(0.0, 0.5, 1.0))
    assert same[:2] == (1, 0.0)  # a tie keeps the simplest setting
    idx = N.KnnIndex.from_embeddings(np.array([[1.0, 0], [1, 0], [0, 1]], np.float32), np.array([10, 20, 60.0]))
    idx.k, idx.w = 2, 1.0
    assert close(idx.refine(np.array([0.0]), np.array([[1.0, 0]], np.float32)), [15.0])
    two = N.KnnIndex.from_embeddings(np.eye(2, dtype=np.float32), np.array([1.0, 2]))
    assert two.search(np.array([[1.0, 0]], np.float32), 5)[0].shape == (1, 2)
    assert tuple(N.W_GRID) == tuple(i / 10 for i in range(11))


def test_age_mix_adaptation_by_hand():
    ra, rs = P.reweigh(np.array([0.5]), np.array([10.0]), np.array([0.5, 0.5]), np.array([0.25, 0.75]))
    assert close(ra, [0.75]) and close(rs, [0.4330127])
    got = P.estimate_mix(np.array([0.0, 0]), np.array([0.5, 0.5]), np.array([0.5, 0.5]), pseudo=2, sigma=0.01,
                         iterations=1)
    assert close(got, [0.690399, 0.309601])
    assert P.estimate_mix(np.full(30, 50.0), np.full(30, 0.5), np.full(101, 1 / 101), pseudo=0, iterations=1).max() < 0.25
    with np.errstate(all="ignore"):
        assert close(P.posteriors(np.array([10.0]), np.array([0.0]), np.arange(21.0))[0, 10], 0.786571)
    assert close(P.posteriors(np.array([10.0, 12]), np.array([2.0, 2]), np.arange(21.0)).sum(1), [1, 1])
    assert "divergence" in P.adapt_ages(np.linspace(5, 60, 20), np.full(20, 5.0), np.full(101, 1 / 101))[2]
    # pinned from the code (the edge-padded smoothing at age 0), not derived by hand
    first = P.estimate_mix(np.zeros(30), np.full(30, 0.5), np.full(101, 1 / 101), pseudo=0, iterations=1)[0]
    assert close(first, 0.4196311880731732, 1e-6)


def test_adaptation_strength_divergence_and_scale_of_the_training_mix():
    base = np.exp(-0.5 * ((np.arange(101) - 30) / 10) ** 2)
    base /= base.sum()
    rng = np.random.default_rng(0)
    a, sp = np.clip(rng.normal(10, 4, 300), 0, 100), np.full(300, 4.0)
    info = P.adapt_ages(a, sp, base)[2]
    assert info == P.adapt_ages(a, sp, 3 * base)[2]  # the card's mix need not sum to 1
    mix = P.estimate_mix(a, sp, base)
    assert info["divergence"] == round(float(np.sum(mix * np.log(mix / base))), 4)  # KL(mix ‖ base)
    assert close(mix, P.estimate_mix(a, sp, base, iterations=1000), 1e-4)  # converged
    a2, sp2 = np.random.default_rng(1).normal(30, 6, 2000).clip(0, 100), np.full(2000, 4.0)
    new, _, info2 = P.adapt_ages(a2, sp2, base)
    m2 = P.estimate_mix(a2, sp2, base)
    s = float(np.clip((np.sum(m2 * np.log(m2 / base)) - P.KL_FROM) / (P.KL_FULL - P.KL_FROM), 0, 1))
    assert info2["strength"] == 0.447 and close(new, P.reweigh(a2, sp2, base, base * (m2 / base) ** s)[0], 1e-3)


def test_conformal_z_and_coverage_by_hand():
    p, t, s = np.arange(1, 10) * 0.1, np.zeros(9), np.full(9, 0.1)
    assert C.conformal_z(p, t, s) == 9.0  # the ceil(0.9 · 10) = 9th smallest of |error| / spread
    assert C.coverage([1.0], [1.0], [2.0], 1.0, 0, 100)["mean_width"] == 3.0  # [0, 3]: clipped at the youngest age
    rec = C._record({"a": (p, t, s)}, 0.5, 0, 100)
    assert rec["interval_z"] == 5.0 and rec["per_dataset"]["a"]["mae"] == 0.5


def test_calibrating_for_occluded_faces_occludes_every_face(monkeypatch, tmp_path):
    """`agelens calibrate student --occluded` fits z on faces each given a paper occluder; without it, clean."""
    import agelens.evaluate.predict as predict_mod
    import agelens.evaluate.prepared as prepared
    from agelens.config import load_config
    from agelens.occlusion.synth import PAPER_MIX, OcclusionMix

    config = tmp_path / "c.yaml"
    config.write_text("data:\n  dataset: utkface\n")
    cfg = load_config(config)
    monkeypatch.setattr(prepared, "load_model_config", lambda spec, path: (None, cfg, None))
    monkeypatch.setattr(prepared, "open_part", lambda c, part: SimpleNamespace(ages=np.arange(10.0)))
    monkeypatch.setattr(prepared, "eval_numerics", lambda: None)
    asked = []

    def answers(model, cache, cfg, numerics, progress=True, occlusion=None, seed=0):
        asked.append(occlusion)
        return np.arange(10.0) + 1, np.ones(10), None

    monkeypatch.setattr(predict_mod, "predict_cache", answers)
    rec = C.calibrate_model("student", str(config), occluded=True, progress=False)
    assert isinstance(asked[-1], OcclusionMix) and asked[-1].mix == PAPER_MIX and asked[-1].clean_fraction == 0
    assert rec["occluded"] is True and rec["interval_z"] == 1.0  # every error 1 with spread 1
    C.calibrate_model("teacher", str(config), occluded=False, progress=False)
    assert asked[-1] is None
