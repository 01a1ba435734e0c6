"""Fairness building blocks: sampler, loss weights, KNN term, region masks, KNN refinement, bootstrap, curation."""

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agelens.config import FairnessConfig, load_config
from agelens.errors import CheckpointError, ConfigError
from agelens.evaluate.metrics import bootstrap_ci, compute_metrics
from agelens.fairness.knn import KnnIndex, model_fingerprint, refine, tune
from agelens.fairness.losses import (
    FairLoss,
    GroupDRO,
    KnnAdjustment,
    class_balanced_weights,
    effective_number_weights,
    lds_kernel_window,
    lds_weights,
    normalise,
    sample_weights,
)
from agelens.fairness.sampling import BalancedSampler, group_labels, tail_probabilities
from agelens.models import build_model
from agelens.models.heads import build_head
from agelens.models.model import load_compatible
from agelens.models.regions import REGION_NAMES, mean_landmarks, region_masks, view_landmarks

# ---- sampler -------------------------------------------------------------------------------------------------------


def test_balanced_sampler_balances_and_is_deterministic():
    labels = ["a"] * 900 + ["b"] * 90 + ["c"] * 10
    s = BalancedSampler(labels, num_samples=6000, seed=3)
    draw = list(s)
    shares = Counter(labels[i] for i in draw)
    assert all(abs(shares[g] / len(draw) - 1 / 3) < 0.03 for g in "abc"), shares
    assert list(BalancedSampler(labels, num_samples=6000, seed=3)) == draw  # same (seed, epoch) → same draw
    s.set_epoch(1)
    assert list(s) != draw
    # power 0: uniform over samples
    u = Counter(labels[i] for i in BalancedSampler(labels, num_samples=6000, power=0.0))
    assert u["a"] / 6000 > 0.85


def test_balanced_sampler_ddp_shards_are_disjoint_parts_of_one_draw():
    labels = group_labels([5, 5, 5, 25, 25, 70, 70, 70, 70, 12, 33], None, None, ["age_bin"])
    full = BalancedSampler(labels, num_replicas=1, seed=7)
    ranks = [BalancedSampler(labels, num_replicas=3, rank=r, seed=7) for r in range(3)]
    for r in ranks:
        r.set_epoch(2)
    shards = [list(r) for r in ranks]
    assert len({len(x) for x in shards}) == 1 and sum(map(len, shards)) == ranks[0].total >= len(labels)
    draw = ranks[0].draw(2)
    for k, shard in enumerate(shards):  # rank k holds the draw positions k, k+3, ...: disjoint, covering the draw
        assert shard == draw[k::3].tolist()
    assert full.total == len(labels) and len(ranks[0]) == ranks[0].total // 3


def test_group_labels_and_tail_probabilities():
    labels = group_labels([3, 25, 25, 70], ["male", None, "female", "female"], None, ["age_bin", "gender"])
    assert labels == ["0-10|male", "21-30|unknown", "21-30|female", "61+|female"]
    p = tail_probabilities(["x"] * 8 + ["y"] * 2, 0.5)
    assert p[0] == 0 and p[-1] == pytest.approx(0.5 * (1 - 2 / 8))
    assert not tail_probabilities(["x", "y"], 0.0).any()


# ---- loss weights ------------------------------------------------------------------------------------------------


def test_class_balanced_weights_match_hand_computed():
    beta = 0.9
    w = class_balanced_weights(["a", "a", "a", "b"], beta)
    wa, wb = (1 - beta) / (1 - beta**3), (1 - beta) / (1 - beta**1)  # 1/E_n, E_n = (1 − β^n)/(1 − β)
    assert w == pytest.approx([wa, wa, wa, wb])
    assert effective_number_weights([3, 1], beta) == pytest.approx([1 / 2.71, 1.0], rel=1e-6)
    n = normalise(w)
    assert n.mean() == pytest.approx(1.0) and n[3] / n[0] == pytest.approx(wb / wa)
    # expected draws change the class sizes: a balanced draw makes both classes equal → equal weights
    assert class_balanced_weights(["a", "a", "a", "b"], beta, np.array([1 / 3, 1 / 3, 1 / 3, 1])) == pytest.approx([1.0] * 4)
    cfg = FairnessConfig(cb_beta=beta, cb_by=["age_bin"], max_weight=100)
    sw = sample_weights(cfg, [5, 6, 7, 40], [None] * 4, [None] * 4)
    assert sw == pytest.approx(n, rel=1e-6)
    assert sample_weights(FairnessConfig(), [5, 40], [None] * 2, [None] * 2) is None


def test_lds_weights_shape_and_monotonic():
    win = lds_kernel_window(5, 2.0)
    assert len(win) == 5 and win[2] == 1 and win[0] == pytest.approx(win[4]) and win[0] < win[1] < 1
    ages = np.array([20] * 50 + [21] * 30 + [60] * 2)
    for mode in ("inverse_sqrt", "inverse"):
        w = lds_weights(ages, 5, 2.0, mode)
        assert w.shape == ages.shape
        assert w[0] < w[50] < w[-1]  # rarer (smoothed) ages weigh more
    cfg = FairnessConfig(lds=True, max_weight=3.0)
    sw = sample_weights(cfg, ages, [None] * len(ages), [None] * len(ages))
    assert sw.max() <= 3.0 and sw[0] < sw[-1]


@pytest.mark.parametrize("name", ["coral", "dldl", "mwr", "ce", "regression"])
def test_heads_accept_per_sample_weights(name):
    torch.manual_seed(0)
    head = build_head(name, 8, 0, 20)
    emb = torch.randn(4, 8)
    age = torch.tensor([3.0, 7.0, 12.0, 18.0])
    out = head(emb)
    torch.manual_seed(1)
    plain = head.loss(out, age)
    torch.manual_seed(1)
    ones = head.loss(out, age, torch.ones(4))
    assert ones.item() == pytest.approx(plain.item(), rel=1e-5)
    torch.manual_seed(1)
    first_only = head.loss(out, age, torch.tensor([4.0, 0, 0, 0]))
    torch.manual_seed(1)
    single = head.loss({k: v[:1] for k, v in out.items()}, age[:1])
    assert first_only.item() == pytest.approx(single.item(), rel=1e-4)


@pytest.mark.parametrize("name", ["coral", "dldl", "mwr", "ce", "regression", "binary"])
def test_head_loss_is_the_mean_of_its_per_sample_losses(name):
    torch.manual_seed(0)
    head = build_head(name, 8, 0, 20)
    out = head(torch.randn(5, 8))
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]) if name == "binary" else torch.tensor([3.0, 7, 12, 18, 20])
    torch.manual_seed(1)
    per = head.losses(out, target)
    torch.manual_seed(1)
    assert per.shape == (5,) and head.loss(out, target).item() == pytest.approx(per.mean().item(), rel=1e-6)


def test_group_dro_weights_groups_and_moves_towards_the_worst():
    groups = np.array([0, 0, 1, 1, 2])  # three groups over five training records
    per = torch.tensor([1.0, 3.0, 10.0, 10.0, 0.0], requires_grad=True)
    idx = torch.tensor([0, 1, 2, 3])  # group 2 absent from the batch
    flat = GroupDRO(groups, 3, eta=0.0)
    loss = flat(per[:4], idx)
    assert loss.item() == pytest.approx((2.0 + 10.0) / 2)  # mean of the present groups' means
    assert torch.allclose(flat.q, torch.full((3,), 1 / 3))
    loss.backward()  # each group's mean gets half the weight: samples of group 0 (2 of them) 1/4 each
    assert per.grad.tolist() == pytest.approx([0.25, 0.25, 0.25, 0.25, 0.0])

    dro = GroupDRO(groups, 3, eta=0.1)
    dro(per[:4].detach(), idx)
    q = dro.q.tolist()
    assert sum(q) == pytest.approx(1.0, abs=1e-6) and q[1] > q[0] > q[2]  # absent group 2: no step up
    assert q[1] / q[0] == pytest.approx(np.exp(0.1 * (10.0 - 2.0)), rel=1e-5)
    w = torch.tensor(q[:2]) / sum(q[:2])
    assert dro(per[:4].detach(), idx).item() > float(w @ torch.tensor([2.0, 10.0]))  # leaned further to group 1
    fresh = GroupDRO(groups, 3, eta=0.1)
    fresh.load_state_dict(dro.state_dict())
    assert torch.equal(fresh.q, dro.q)


def test_fair_loss_with_group_dro_uses_the_weighted_per_sample_losses():
    torch.manual_seed(0)
    head = build_head("dldl", 8, 0, 20)
    out = head(torch.randn(4, 8))
    age = torch.tensor([3.0, 5.0, 15.0, 18.0])
    idx = torch.tensor([0, 1, 2, 3])
    weights = np.array([1.0, 0.0, 1.0, 1.0], np.float32)  # 1 + λ·w with λ = 1: sample 1 gets 1, the others 2
    loss = FairLoss(head, weights, 1.0, None, 0.0, GroupDRO(np.array([0, 0, 1, 1]), 2, eta=0.0))
    assert loss.active
    per = head.losses(out, age) * torch.tensor([2.0, 1.0, 2.0, 2.0])
    assert loss(out, age, idx).item() == pytest.approx(((per[0] + per[1]) / 2 + (per[2] + per[3]) / 2).item() / 2,
                                                       rel=1e-6)


def test_knn_adjustment_targets_exact_neighbours():
    knn = KnnAdjustment(k=1, bank_size=4)
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    ages = torch.tensor([10.0, 20.0, 50.0, 60.0])
    t = knn.targets(emb, ages)
    assert t.tolist() == pytest.approx([20, 10, 60, 50], abs=1e-3)  # nearest other sample's age
    assert len(knn.bank_age) == 4
    loss = knn(torch.tensor([10.0, 10.0, 10.0, 10.0], requires_grad=True), emb[:1].repeat(4, 1), ages)
    assert loss.item() > 0
    state = knn.state_dict()
    fresh = KnnAdjustment(k=1, bank_size=4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.bank_emb, knn.bank_emb)
    old = {k: v for k, v in state.items() if k != "bank_idx"}  # a checkpoint from before the bank kept indices
    fresh.load_state_dict(old)
    assert fresh.bank_idx.tolist() == [-1] * 4


def test_knn_adjustment_never_reads_a_faces_own_copies():
    """A balanced sampler draws with replacement: a face's earlier copy in the bank, or a second copy in the batch,
    is not its neighbour (it would be an L1 to its own label)."""
    knn = KnnAdjustment(k=1, bank_size=8)
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    knn.targets(emb, torch.tensor([10.0, 20.0, 50.0]), torch.tensor([7, 8, 9]))  # into the bank
    again = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # face 7 twice more, in one batch
    t = knn.targets(again, torch.tensor([10.0, 10.0]), torch.tensor([7, 7]))
    assert t.tolist() == pytest.approx([20.0, 20.0], abs=1e-3)  # face 8, not a copy of 7
    assert knn.bank_idx.tolist() == [7, 8, 9, 7, 7]
    assert knn.targets(again, torch.tensor([10.0, 10.0])).tolist() == pytest.approx([10.0, 10.0])  # no indices


# ---- region attention ----------------------------------------------------------------------------------------------


def test_region_masks_from_landmarks():
    lm = view_landmarks(mean_landmarks(), 256, 16, 16, 224, False)
    m = region_masks(lm)
    assert m.shape == (len(REGION_NAMES), 32, 32) and m.min() >= 0 and m.max() <= 1
    assert (m.sum((1, 2)) > 1).all()  # every region non-empty
    # inside the crop: a face moved out of the view leaves no mask
    assert region_masks(lm + 2.0).sum() == 0
    # mirrored view ↔ mirrored masks (regions are left+right unions)
    mf = region_masks(view_landmarks(mean_landmarks(), 256, 16, 16, 224, True))
    assert np.abs(mf - m[:, :, ::-1]).mean() < 0.02
    # missing landmarks fall back to the mean face
    nan = np.full((478, 2), np.nan, np.float32)
    assert np.array_equal(region_masks(view_landmarks(nan, 256, 16, 16, 224, False)), m)


def test_region_attention_is_identity_at_init_and_loads_old_weights():
    cfg = load_config(None, ["model.backbone=resnet18", "model.region_attention=true"]).model
    torch.manual_seed(0)
    plain = build_model(load_config(None, ["model.backbone=resnet18"]).model).eval()
    model = build_model(cfg).eval()
    fresh = load_compatible(model, plain.state_dict(), "old.pt")
    assert set(fresh) == {"region_attention.weight", "region_attention.prior"}
    x = torch.randn(2, 3, 64, 64)
    masks = torch.rand(2, len(REGION_NAMES), 32, 32)
    with torch.no_grad():
        a = plain(x)["embedding"]
        assert torch.allclose(model(x, masks)["embedding"], a) and torch.allclose(model(x)["embedding"], a)
        model.region_attention.weight.fill_(0.5)
        assert not torch.allclose(model(x, masks)["embedding"], a)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_compatible(plain, {"nope": torch.zeros(1)}, "bad.pt")


def test_fairness_config_validation():
    with pytest.raises(ConfigError, match="train.sampler"):
        load_config(None, ["train.sampler=weird"])
    with pytest.raises(ConfigError, match="train.balance_by"):
        load_config(None, ["train.balance_by=[age_bin, shoe_size]"])
    with pytest.raises(ConfigError, match="fairness.cb_beta"):
        load_config(None, ["fairness.cb_beta=1.5"])
    with pytest.raises(ConfigError, match="lds_kernel"):
        load_config(None, ["fairness.lds_kernel=4"])
    with pytest.raises(ConfigError, match="fairness.dro_eta"):
        load_config(None, ["fairness.group_dro=true", "fairness.dro_eta=-1"])
    with pytest.raises(ConfigError, match="fairness.dro_by"):
        load_config(None, ["fairness.dro_by=[shoe_size]"])
    assert load_config(None, ["train.balance_by=age_bin,race"]).train.balance_by == ["age_bin", "race"]


# ---- KNN refinement ---------------------------------------------------------------------------------------------


def test_knn_refinement_exact_neighbours_tuning_and_fingerprint(tmp_path):
    train = np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 1, 0], [0, 0.98, 0.2], [0, 0, 1]], np.float32)
    ages = np.array([10, 12, 40, 44, 80], np.float32)
    idx = KnnIndex.from_embeddings(train, ages, fingerprint="abc", model="toy")
    sims, nb = idx.search(np.array([[1, 0.05, 0]], np.float32), 2)
    assert nb[0].tolist() == [10, 12] or nb[0].tolist() == [12, 10]
    assert sims[0, 0] >= sims[0, 1] > 0.9
    pred = np.array([20.0])
    s = np.clip(sims[0, :2], 0, None) + 1e-6
    want = 0.5 * 20 + 0.5 * (s * nb[0]).sum() / s.sum()
    assert refine(pred, sims, nb, 2, 0.5)[0] == pytest.approx(want)
    # tuning: queries whose model predictions are biased but whose neighbours are right → w > 0
    q = train + np.random.default_rng(0).normal(0, 0.01, train.shape).astype(np.float32)
    s, n = idx.search(q, 3)
    k, w, grid = tune(ages + 8, ages, s, n, ks=(1, 3), ws=(0.0, 0.5, 1.0))
    assert (k, w) == (1, 1.0) and len(grid) == 6
    idx.k, idx.w = k, w
    p = tmp_path / "knn.npz"
    idx.save(p)
    back = KnnIndex.load(p)
    assert (back.k, back.w, back.meta["model"]) == (1, 1.0, "toy") and back.index.ntotal == 5
    assert back.refine(np.array([0.0]), train[2:3])[0] == pytest.approx(40, abs=1e-3)
    back.check("abc")
    with pytest.raises(CheckpointError, match="fingerprint abc"):
        back.check("other")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(Exception, match="not a readable agelens KNN index"):
        KnnIndex.load(tmp_path / "bad.npz")
    with pytest.raises(Exception, match=r"is a folder; give the index file .* \(here: bad.npz, knn.npz\)"):
        KnnIndex.load(tmp_path)  # `evaluate --knn` given the folder the index went into


def test_index_with_k_and_w_given_uses_them_instead_of_tuning(monkeypatch):
    """`agelens index --k 3 --w 0.25` (the paper's fixed values, say) keeps them, measured on validation; without
    them k and w are tuned over the grids."""
    import agelens.evaluate.predict as predict_mod
    from agelens.fairness.knn import build_index

    rng = np.random.default_rng(0)

    class Cache:
        def __init__(self, n, path):
            self.ages, self.path = rng.uniform(1, 80, n).astype(np.float32), path

        def __len__(self):
            return len(self.ages)

    train, val = Cache(60, "train"), Cache(12, "val")
    embs = {"train": rng.normal(size=(60, 8)), "val": rng.normal(size=(12, 8))}
    monkeypatch.setattr(predict_mod, "predict_cache", lambda model, cache, *a, **k: (
        cache.ages + 5, np.ones(len(cache)), embs[cache.path]))
    cfg, model = load_config(None), torch.nn.Linear(2, 2)
    idx = build_index(model, cfg, train, val, None, ks=(3,), ws=(0.25,), progress=False, log=lambda *_: None)
    assert (idx.k, idx.w, idx.meta["k_grid"], idx.meta["w_grid"]) == (3, 0.25, [3], [0.25])
    assert [(g["k"], g["w"]) for g in idx.meta["grid"]] == [(3, 0.25)]
    tuned = build_index(model, cfg, train, val, None, progress=False, log=lambda *_: None)
    assert len(tuned.meta["grid"]) == 6 * 11 and tuned.meta["k_grid"] == [1, 3, 5, 10, 20, 50]


def test_model_fingerprint_tracks_weights_and_geometry():
    m = build_model(load_config(None, ["model.backbone=resnet18", "model.pretrained=false"]).model)
    a = model_fingerprint(m, 224, 112)
    assert a == model_fingerprint(m, 224, 112) != model_fingerprint(m, 224, 128)
    with torch.no_grad():
        m.head.fc.bias.add_(1.0)
    assert model_fingerprint(m, 224, 112) != a


# ---- bootstrap ---------------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_point_and_is_seeded():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 90, 400).astype(float)
    pred = true + rng.normal(0, 5, 400) + (true > 60) * 4
    g = list(rng.choice(["male", "female"], 400))
    r = list(rng.choice(["white", "black", "asian", None], 400))
    m = compute_metrics(pred, true, g, r)
    ci = bootstrap_ci(pred, true, g, r, n_boot=300, seed=5)
    for key in ("mae", "cmae", "bias_score", "acc5"):
        lo, hi = ci[key]
        assert lo <= m[key] <= hi and hi - lo < 3, (key, ci[key], m[key])
    for key in ("per_bin", "per_gender", "per_race"):
        assert set(ci[key]) == set(m[key])
        for name, (lo, hi) in ci[key].items():
            assert lo <= m[key][name] <= hi
    assert bootstrap_ci(pred, true, g, r, n_boot=300, seed=5) == ci
    assert bootstrap_ci(pred, true, g, r, n_boot=300, seed=6) != ci


# ---- curation ------------------------------------------------------------------------------------------------------


def _noise_image(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)


def test_curate_drops_conflicting_duplicates_and_counts_bins(tmp_path):
    from agelens.fairness.curate import curate, format_counts, load_curate_config, parse_source

    utk = tmp_path / "utk"
    utk.mkdir()
    for i, (age, g, r) in enumerate([(5, 0, 0), (25, 1, 1), (33, 0, 2), (70, 1, 0), (45, 0, 3)]):
        _noise_image(utk / f"{age}_{g}_{r}_2017{i:05d}.jpg.chip.jpg", i)
    extra = tmp_path / "extra"
    extra.mkdir()
    names = sorted(p.name for p in utk.iterdir())
    shutil.copy(utk / names[0], extra / "dup_conflict.png")  # same pixels as 25_1_1..., different age
    shutil.copy(utk / names[2], extra / "dup_same.png")  # same as 45_0_3..., same labels
    _noise_image(extra / "new.png", 99)
    with open(extra / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "age", "gender", "race"])
        w.writerows([["dup_conflict.png", 60, "female", "black"], ["dup_same.png", 45, "male", "indian"],
                     ["new.png", 8, "female", ""]])
    sources = [parse_source(f"utkface={utk}"), parse_source(f"csv={extra / 'labels.csv'},name=extra")]
    cfg = load_curate_config(None, sources=sources, output=str(tmp_path / "m.csv"), workers=1)
    rep = curate(cfg, log=lambda *_: None)
    rows = list(csv.DictReader((tmp_path / "m.csv").read_text().splitlines()))
    assert list(rows[0]) == ["path", "age", "gender", "race", "group", "source"]
    assert rep["records_in"] == 8 and rep["duplicate_groups"] == 2 and rep["conflicting_groups"] == 1
    assert rep["records_out"] == 5 and len(rows) == 5  # conflict pair dropped, consistent pair reduced to one
    assert not any("dup_conflict" in r["path"] or names[0] in r["path"] for r in rows)
    assert rep["counts_before"]["21-30"]["female"]["black"] == 1 and rep["counts_after"]["21-30"] == {}
    assert rep["counts_after"]["0-10"] == {"female": {"unknown": 1}, "male": {"white": 1}}
    assert "21-30" in format_counts(rep["counts_before"], rep["counts_after"])
    # median keeps one face of the conflicting group with the median age
    cfg = load_curate_config(None, sources=sources, output=str(tmp_path / "m2.csv"), conflicts="median", workers=1)
    curate(cfg, log=lambda *_: None)
    rows = list(csv.DictReader((tmp_path / "m2.csv").read_text().splitlines()))
    assert len(rows) == 6 and any(r["age"] == "42.5" for r in rows)
    with pytest.raises(ConfigError, match="conflicts"):
        load_curate_config(None, sources=sources, conflicts="vote")


def test_curate_names_the_paths_listed_not_their_symlink_targets(tmp_path):
    """A symlinked dataset: manifest, dropped groups and outliers name the links the CSV lists, made absolute
    (before: the resolved targets, which the user's CSV does not hold); exact duplicates are still found."""
    import os

    from agelens.fairness.curate import curate, load_curate_config, parse_source

    real, links = tmp_path / "real", tmp_path / "links"
    real.mkdir()
    links.mkdir()
    for i in range(3):
        _noise_image(real / f"r{i}.png", i)
    for name, target in (("a.png", "r0.png"), ("a_copy.png", "r0.png"), ("b.png", "r1.png"), ("c.png", "r2.png")):
        (links / name).symlink_to(real / target)
    (links / "labels.csv").write_text("path,age,gender\na.png,20,male\na_copy.png,30,male\nb.png,70,female\n"
                                      "c.png,40,female\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a relative source: paths made absolute against the working folder
    try:
        cfg = load_curate_config(None, sources=[parse_source("csv=links/labels.csv")], output=str(tmp_path / "m.csv"),
                                 max_age=60.0, workers=1)
        rep = curate(cfg, log=lambda *_: None)
    finally:
        os.chdir(cwd)
    rows = list(csv.DictReader((tmp_path / "m.csv").read_text().splitlines()))
    assert sorted(r["path"] for r in rows) == [str(links / "b.png"), str(links / "c.png")]
    assert rep["dropped_groups"][0]["paths"] == [str(links / "a.png"), str(links / "a_copy.png")]
    assert [(o["path"], o["source"]) for o in rep["outliers"]] == [(str(links / "b.png"), "csv")]


def test_curate_fills_a_kept_duplicates_missing_labels_and_reports_resolved_groups(tmp_path):
    """A consistent duplicate group whose first member lacks gender and race keeps it with the labels its copies
    agree on (before: kept unlabelled); a conflicting group kept by --conflicts median is listed with its members'
    labels and the ones kept."""
    from agelens.fairness.curate import curate, load_curate_config, parse_source

    for name, seed in (("a.png", 0), ("a_copy.png", 0), ("a_copy2.png", 0), ("b.png", 1), ("b_copy.png", 1)):
        _noise_image(tmp_path / name, seed)
    (tmp_path / "labels.csv").write_text("path,age,gender,race\na.png,20,,\na_copy.png,20,female,\n"
                                         "a_copy2.png,20,,asian\nb.png,30,male,white\nb_copy.png,34,female,white\n")
    src = [parse_source(f"csv={tmp_path / 'labels.csv'}")]
    rep = curate(load_curate_config(None, sources=src, output=str(tmp_path / "m.csv"), conflicts="median",
                                    workers=1), log=lambda *_: None)
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "m.csv").read_text().splitlines())}
    assert (rows["a.png"]["gender"], rows["a.png"]["race"]) == ("female", "asian")
    assert rep["filled_labels"] == [{"path": str(tmp_path / "a.png"), "source": "csv", "gender": "female",
                                     "race": "asian", "from": [str(tmp_path / "a_copy.png"),
                                                               str(tmp_path / "a_copy2.png")]}]
    assert rep["counts_after"]["11-20"] == {"female": {"asian": 1}}
    (g,) = rep["resolved_groups"]
    assert g["genders"] == ["male", "female"] and g["ages"] == [30.0, 34.0]
    assert g["kept"]["path"] == str(tmp_path / "b.png") and g["kept"]["age"] == 32.0
    # keep_duplicates: every member of the consistent group gets the labels it lacked
    rep = curate(load_curate_config(None, sources=src, output=str(tmp_path / "m2.csv"), keep_duplicates=True,
                                    workers=1), log=lambda *_: None)
    rows = list(csv.DictReader((tmp_path / "m2.csv").read_text().splitlines()))
    assert [(r["gender"], r["race"]) for r in rows] == [("female", "asian")] * 3
    assert len(rep["filled_labels"]) == 3 and len(rep["dropped_groups"]) == 1


def test_cli_curate_and_one_line_errors(tmp_path):
    import subprocess
    import sys

    d = tmp_path / "utk"
    d.mkdir()
    for i, age in enumerate([3, 30, 64]):
        _noise_image(d / f"{age}_{i % 2}_{i}_2017{i:05d}.jpg.chip.jpg", i)
    shutil.copy(d / "3_0_0_201700000.jpg.chip.jpg", d / "9_0_0_201700009.jpg.chip.jpg")  # conflicting duplicate
    _noise_image(d / "holiday.jpg", 9)  # no UTKFace name: a row the adapter skips
    run = lambda *a: subprocess.run([sys.executable, "-m", "agelens.cli", *map(str, a)], capture_output=True,  # noqa: E731
                                    text=True, timeout=300)
    r = run("curate", "--source", f"utkface={d}", "-o", tmp_path / "m.csv", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "0-10" in r.stdout and "2→0" in r.stdout and "4 → 2 records" in r.stdout
    # the skipped row is said, and listed with its reason (before: a count in the report only)
    assert "utkface: 1 row(s) skipped" in r.stdout and "holiday.jpg: file name does not start" in r.stdout
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [Path(b["path"]).name for b in report["bad_row_list"]["utkface"]] == ["holiday.jpg"]
    # exporting a run with the defaults would replace the shipped teacher: refused, saying how to write one's own
    r = run("export", "weights", tmp_path / "no_run")
    assert r.returncode == 2 and "would replace the shipped teacher" in r.stderr and "--output DIR" in r.stderr
    r = run("curate", "--source", "utkface", "-o", tmp_path / "x.csv")
    assert r.returncode == 2 and "error: --source 'utkface' is not DATASET=ROOT" in r.stderr and "Traceback" not in r.stderr
    r = run("evaluate", "--from-cache", "--model", "teacher", "--knn", tmp_path / "none.npz", "-o", tmp_path / "o")
    assert r.returncode == 2 and "error: KNN index not found" in r.stderr and "Traceback" not in r.stderr
    r = run("index", "teacher", "-o", tmp_path / "knn.npz", "--k", "3", "--w", "1.5")
    assert r.returncode == 2 and "error: --k must be >= 1 and --w in [0, 1]" in r.stderr, r.stderr
    r = run("index", "teacher", "-o", tmp_path / "knn.npz", "--criterion", "rmse")
    assert r.returncode == 2 and "error: --criterion must be mae or cmae" in r.stderr
    # options that --from-cache cannot use, and --root with --config, were silently not used
    r = run("evaluate", "--from-cache", "--model", "teacher", "--route", "student", "--no-detect", "-o", tmp_path / "o")
    assert r.returncode == 2 and "--no-detect, --route cannot apply" in r.stderr
    r = run("evaluate", "--root", tmp_path, "-c", "configs/teacher_stable.yaml", "-o", tmp_path / "o")
    assert r.returncode == 2 and "not both" in r.stderr


@pytest.mark.parametrize("route", ["teacher", "student"])
def test_analyse_crops_embeddings_are_the_teachers(route):
    """evaluate --knn/--save-embeddings take the teacher's embeddings from the routed pass (faces routed to the
    student get one teacher pass more): they equal the teacher's own embeddings of the same views."""
    from agelens.data.views import centre_crop
    from agelens.inference.backends.torch import TorchModel
    from agelens.inference.predictor import AgeEstimator
    from agelens.models.inputs import to_input

    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=resnet18", "model.pretrained=false"]).model
    teacher, student = build_model(cfg).eval(), build_model(cfg).eval()
    est = AgeEstimator.from_model(teacher, 224, 64, tta_flip=True, student=TorchModel(student, 224, 64, "student"),
                                  route=route)
    crops = np.random.default_rng(0).integers(0, 255, (3, 256, 256, 3), dtype=np.uint8)
    r = est.analyse_crops(crops, embeddings=True)
    assert set(r["model"]) == {route}
    x = to_input(torch.from_numpy(np.stack([centre_crop(c, 224, 64) for c in crops])), *teacher.mean_std)
    with torch.no_grad():
        want = teacher.predict(x, True)[2].numpy()
    assert r["embedding"].shape == want.shape
    np.testing.assert_allclose(r["embedding"], want, atol=1e-4)
    assert "embedding" not in est.analyse_crops(crops)


def test_signed_error_cells_carry_face_counts_and_empty_cells():
    from agelens.fairness.report import plot_signed_error, signed_error_cells

    by = {"0-10|female": {"mean_error": 1.5, "n": 12}, "61+|female": {"mean_error": -9.0, "n": 2},
          "0-10|male": {"mean_error": -0.5, "n": 3}}
    m, n, labels = signed_error_cells({"groups": {"age_bin×gender": {"by_group": by}}})
    assert labels == ["female", "male"] and m.shape == n.shape == (2, 7)
    assert (m[0, 0], n[0, 0], m[0, 6], n[0, 6], n[1, 0]) == (1.5, 12, -9.0, 2, 3)
    assert np.isnan(m[1, 1:]).all() and (n[1, 1:] == 0).all()
    assert signed_error_cells({})[2] == [] and plot_signed_error({}) is None


def test_report_says_where_grad_cam_has_no_positive_evidence_and_its_resolution():
    """A model whose age does not move with its features (head zeroed) has a CAM of 0 everywhere: said, and drawn
    without a heat map (before: a uniform tint, no note); the note gives the last feature map's cells (2×2 here)."""
    from types import SimpleNamespace

    import matplotlib

    from agelens.fairness.report import faces_note, plot_faces

    matplotlib.use("Agg")
    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=resnet18", "model.pretrained=false", "model.head=dldl",
                             "data.crop_size=64", "data.input_size=64"])
    model = build_model(cfg.model)
    for p in model.head.parameters():
        torch.nn.init.zeros_(p)
    rng = np.random.default_rng(0)
    cache = SimpleNamespace(ages=np.array([5.0, 25.0]), size=64, landmarks=[mean_landmarks() / 4] * 2,
                            images=[rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)])
    png, weights, info = plot_faces(model, cfg, cache, 2)
    assert png and weights is None and info == {"cam_size": (2, 2), "faces": 2, "no_evidence": 2}
    note = faces_note(info, 64, None)
    assert "2×2 cells over the 64 px input" in note and "2 of 2 face(s): no positive evidence" in note
    assert "no positive evidence" not in faces_note({"cam_size": (7, 7), "faces": 3, "no_evidence": 0}, 224, None)


def test_report_header_names_the_runs_recipe_components(tmp_path):
    """A run folder's config.yaml says which parts of the fairness recipe were on; a shipped model has none."""
    import yaml

    from agelens.config import config_to_dict
    from agelens.fairness.report import recipe_line, run_config_file

    cfg = load_config(None, ["model.region_attention=true", "train.sampler=balanced", "train.balance_by=age_bin,gender",
                             "fairness.gamma_knn=0.1", "fairness.knn_k=3"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    for metrics, found in (({"model_path": str(run)}, True), ({"model_path": str(run / "best.pt")}, True),
                           ({"model": "teacher"}, False), ({"model_path": str(tmp_path / "w.safetensors")}, False)):
        assert (run_config_file(metrics, None) == run / "config.yaml") is found, metrics
    assert run_config_file({}, run) == run / "config.yaml"
    line = recipe_line(run / "config.yaml")
    assert "balanced sampler on (by age_bin × gender, power 1)" in line and "class-balanced loss off" in line
    assert "KNN loss on (γ 0.1, k 3)" in line and "region attention on" in line and "group DRO off" in line
    assert "LDS off" in line


def test_evaluate_mae_unadapted_is_the_same_pipeline_with_knn(monkeypatch):
    """With --knn, prior_adaptation.mae_unadapted is the MAE of the unadapted answers refined by the same index
    (before: taken before KNN, so mae − mae_unadapted credited KNN's gain to the adaptation). An index of weight 1
    and k = 1 over the test faces' own embeddings answers each face's true age, adapted or not: both MAEs are 0."""
    from types import SimpleNamespace

    import agelens.data.dataset as dataset_mod
    from agelens.data.adapters import FaceRecord
    from agelens.evaluate.runner import evaluate_estimator

    n = 4
    true = np.array([10.0, 30.0, 50.0, 70.0], np.float32)
    emb = np.eye(n, 8, dtype=np.float32)
    teacher = SimpleNamespace(name="t", model=torch.nn.Linear(2, 2), crop_size=224, input_size=224)
    est = SimpleNamespace(
        teacher=teacher, detector=None, route="teacher",
        analyse_crops=lambda crops, **_: {"age": true + 6, "spread": np.ones(n, np.float32), "embedding": emb,
                                          "student_weight": np.zeros(n, np.float32), "occluded": np.zeros(n, bool),
                                          "occlusion_score": np.full(n, np.nan), "model": np.array(["t"] * n)},
        adapt_arrays=lambda a, s, w, sc: (a - 3, s, {"applied": True}),
        intervals=lambda a, s, w: (a - 1, a + 1))
    fingerprint = model_fingerprint(teacher.model, 224, 224)
    knn = KnnIndex.from_embeddings(emb, true, fingerprint=fingerprint)
    knn.k, knn.w = 1, 1.0

    class Views:
        def __init__(self, *a, **k):
            pass

        def occluded_view(self, i, with_alpha=False):
            return np.zeros((16, 16, 3), np.uint8), None, None

    monkeypatch.setattr(dataset_mod, "CachedFaceDataset", Views)
    class Cache:
        records, ages, failed = [FaceRecord(f"{i}.jpg", float(a)) for i, a in enumerate(true)], true, []

        def __len__(self):
            return n

    cache = Cache()
    m = evaluate_estimator(est, cache, None, progress=False, knn=knn, bootstrap=0, groups=False, adapt=True)
    assert m["mae"] == pytest.approx(0, abs=1e-4)
    assert m["prior_adaptation"]["mae_unadapted"] == pytest.approx(0, abs=1e-4)
    m = evaluate_estimator(est, cache, None, progress=False, bootstrap=0, groups=False, adapt=True)
    assert m["mae"] == pytest.approx(3) and m["prior_adaptation"]["mae_unadapted"] == pytest.approx(6)


def test_curate_help_states_the_defaults_it_falls_back_to():
    """The options default to the YAML's values, so their help names the fallback; it must be CurateConfig's."""
    import re

    from typer.testing import CliRunner

    from agelens.cli import app
    from agelens.fairness.curate import CurateConfig

    out = CliRunner().invoke(app, ["curate", "--help"], env={"COLUMNS": "200"}).output
    text = re.sub(r"\s+", " ", out.replace("│", " "))
    c = CurateConfig()
    for fallback in (f"else {c.conflicts})", f"else {c.near_dup})", f"else {c.age_tolerance:g})",
                     f"else {c.workers})", "else drop)" if c.drop_outliers else "else keep)"):
        assert fallback in text, (fallback, text)
