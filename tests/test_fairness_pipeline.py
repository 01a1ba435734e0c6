"""End to end on a tiny synthetic dataset: fair recipe training → KNN index → evaluate --from-cache → report; k-fold cv."""

import json

import numpy as np
import pytest

from agelens.config import load_config
from agelens.errors import CheckpointError, ConfigError
from agelens.evaluate.metrics import MIN_N
from agelens.evaluate.prepared import evaluate_prepared_cache
from agelens.fairness.cv import format_cv, run_cv
from agelens.fairness.knn import KnnIndex, build_index_file
from agelens.fairness.report import build_report
from agelens.models.checkpoint import load_checkpoint
from agelens.train.run import train_and_test

QUIET = {"progress": False, "log": lambda *_: None}


def _args(tmp_path, utk_folder, name, *extra):
    return [f"data.root={utk_folder}", f"data.split_file={tmp_path}/split.json", f"data.cache_dir={tmp_path}/cache",
            "data.cache_size=48", "data.crop_size=40", "data.input_size=32", "data.val_frac=0.2", "data.test_frac=0.2",
            "model.backbone=resnet18", "model.head=dldl", "train.batch_size=8", "train.lr=1e-3", "train.numerics=fp32",
            "train.channels_last=off", "train.freeze_backbone_epochs=0", "train.epochs=1", "train.log_every=1",
            f"out_dir={tmp_path}/runs", f"name={name}", *extra]


FAIR = ["model.region_attention=true", "train.sampler=balanced", "train.balance_by=age_bin,gender",
        "train.tail_augment=0.5", "fairness.cb_beta=0.99", "fairness.cb_by=age", "fairness.lds=true",
        "fairness.gamma_knn=0.1", "fairness.knn_k=3"]


def test_fair_recipe_trains_indexes_evaluates_and_reports(tmp_path, utk_folder, monkeypatch):
    import torch

    from agelens.data.cache import FaceCache

    tmp = tmp_path
    cfg = load_config(None, _args(tmp, utk_folder, "fair", *FAIR))
    res = train_and_test(cfg, **QUIET)
    run = cfg.run_dir
    ck = load_checkpoint(run / "last.pt")
    assert "region_attention.weight" in ck["model"] and "knn_bank" in ck
    test = res["test"]
    assert {"n", "mae", "cs5", "cmae", "acc5", "bias_score", "per_bin", "per_gender", "per_race"} <= set(test)
    ci = test["ci95"]
    if test["n"] >= MIN_N:
        assert ci["mae"][0] <= test["mae"] <= ci["mae"][1]
    else:  # a test of a few faces resamples to their own errors: no interval, as for a small group
        assert ci["mae"] is None and ci["cmae"] is None
    assert set(ci["per_bin"]) == set(test["per_bin"])
    assert "gender" in test["groups"] and "age_bin×gender" in test["groups"]

    idx = build_index_file(str(run), tmp / "knn.npz", **QUIET)
    assert idx.index.ntotal == len(idx.ages) == len(FaceCache(tmp / "cache" / "train"))
    assert KnnIndex.load(tmp / "knn.npz").meta["fingerprint"] == idx.meta["fingerprint"]
    m = evaluate_prepared_cache(str(run), None, "test", tmp / "eval", knn=KnnIndex.load(tmp / "knn.npz"),
                                embeddings=True, bootstrap=200, progress=False)
    assert m["knn"]["k"] == idx.k and m["n"] == test["n"]
    if idx.w == 0:  # w = 0 leaves the predictions as they were
        assert m["mae"] == pytest.approx(test["mae"], abs=1e-3)
    assert (tmp / "eval" / "embeddings.npz").is_file()
    assert "pred_before_knn" in (tmp / "eval" / "predictions.csv").read_text().splitlines()[0]

    # occluded from the cache: each face's drawn type is reported, in metrics.json and predictions.csv
    import os

    import pandas as pd

    from agelens.occlusion.synth import OcclusionMix

    occ = evaluate_prepared_cache(os.path.relpath(run), None, "test", tmp / "occ", progress=False, bootstrap=0,
                                  occlusion=OcclusionMix({"mask": 1.0}, 0.5), seed=3, extra={"occlusion_seed": 3})
    assert occ["model_path"] == str(run.resolve())  # absolute: `report` reloads it from any folder
    table = pd.read_csv(tmp / "occ" / "predictions.csv")
    counts = table.occlusion.value_counts().to_dict()
    assert occ["occlusion_seed"] == 3 and {k: v["n"] for k, v in occ["per_occlusion"].items()} == counts
    assert sum(counts.values()) == occ["n"] and set(counts) <= {"mask", "clean"}

    # an index built for another model is refused
    ck = load_checkpoint(run / "best.pt")
    ck["model"]["head.fc.bias"] += 1.0
    torch.save(ck, tmp / "other.pt")
    import agelens.evaluate.predict as predict_mod

    def no_pass(*a, **k):  # refused before the prediction pass (before: after every face was read)
        raise AssertionError("the faces were read before the index was checked")

    monkeypatch.setattr(predict_mod, "predict_cache", no_pass)
    with pytest.raises(CheckpointError, match="fingerprint"):
        evaluate_prepared_cache(str(tmp / "other.pt"), None, "test", tmp / "eval2", knn=KnnIndex.load(tmp / "knn.npz"),
                                progress=False)
    monkeypatch.undo()

    page = build_report(tmp / "eval", tmp / "report", samples=3, log=lambda *_: None).read_text()
    # error-by-age, groups, confusion, signed error per group × bin, t-SNE, Grad-CAM/regions
    assert page.count("data:image/png;base64,") == 6
    assert "Learned region weights" in page and "Grad-CAM" in page
    assert "Age-standardised MAE" in page and "spread (max − min)" in page
    # an evaluate folder from elsewhere: what its metrics.json holds is shown as text, never run as the page's HTML
    import json
    import shutil

    shutil.copytree(tmp / "eval", tmp / "eval_hostile")
    m = json.loads((tmp / "eval_hostile" / "metrics.json").read_text())
    evil = "<script>alert(1)</script>"
    m["n"], m["failed"] = evil, evil
    if m.get("knn"):
        m["knn"]["k"] = evil
    for attr in ("gender", "race"):
        for g in m["standardised"][attr]["by_group"].values():
            g["n"] = evil
    (tmp / "eval_hostile" / "metrics.json").write_text(json.dumps(m))
    hostile = build_report(tmp / "eval_hostile", tmp / "report_hostile", samples=0, log=lambda *_: None).read_text()
    assert "<script>" not in hostile and "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile
    run_page = build_report(run, log=lambda *_: None).read_text()  # a run folder: its test/ part
    # the recipe trained with, from the run's config.yaml, in both pages (the evaluation names the run folder)
    for text in (page, run_page):
        assert "balanced sampler on (by age_bin × gender" in text and "region attention on" in text
        assert "KNN loss on (γ 0.1, k 3)" in text and "group DRO off" in text
    assert run_page.count("data:image/png;base64,") == 5  # no embeddings saved during training


def test_cv_two_folds_is_resumable(tmp_path, utk_folder):
    cfg = load_config(None, _args(tmp_path, utk_folder, "cvt"))
    summary = run_cv(cfg, 2, **QUIET)
    assert run_cv(cfg, 2, **QUIET)["per_fold"] == summary["per_fold"]  # finished folds: read, not made again
    with pytest.raises(ConfigError, match=r"holds folds of another recipe \(train.lr: 0.001 → 0.01\)"):
        run_cv(load_config(None, _args(tmp_path, utk_folder, "cvt", "train.lr=0.01")), 2, **QUIET)
    assert [r["fold"] for r in summary["per_fold"]] == [0, 1]
    assert sum(r["n"] for r in summary["per_fold"]) == 24  # every face tested once
    for k in ("mae", "cmae", "bias_score"):
        vals = [r[k] for r in summary["per_fold"]]
        assert summary["mean"][k] == pytest.approx(np.mean(vals), abs=1e-3)
        assert summary["std"][k] == pytest.approx(np.std(vals, ddof=1), abs=1e-3)
    out = tmp_path / "runs" / "cvt_cv2"
    assert json.loads((out / "cv.json").read_text())["folds"] == 2
    tests = [set(json.loads((out / "splits" / f"fold{i}.json").read_text())["parts"]["test"]) for i in range(2)]
    assert not tests[0] & tests[1]
    logs = []
    again = run_cv(cfg, 2, progress=False, log=logs.append)  # finished folds are skipped
    assert again["mean"] == summary["mean"] and sum("skipped" in x for x in logs) == 2
    assert logs[0].startswith("fold 1/2 (fold0): ") and logs[1].startswith("fold 2/2 (fold1): ")  # before: 0/2, 1/2
    assert "mean" in format_cv(summary)
    # the later folds train at the numerics the first fold's probe chose (before: a probe per fold, fp32 then bf16)
    from agelens.fairness.cv import _pin_numerics

    assert json.loads((out / "fold0" / "test" / "metrics.json").read_text())["numerics"] == "fp32"
    auto = load_config(None, _args(tmp_path, utk_folder, "cvt", "train.numerics=auto"))
    _pin_numerics(auto, {"numerics": "bf16"}, logs.append)
    _pin_numerics(cfg, {"numerics": "bf16"}, logs.append)  # a config that names its numerics keeps them
    assert (auto.train.numerics, cfg.train.numerics) == ("bf16", "fp32") and "the first fold's choice" in logs[-1]
    # records changed since the folds were made: a resume is refused (before: a face added to the dataset went into
    # the folds made anew, and the finished folds, of the old records, were skipped and mixed into one table)
    import shutil

    face = next(utk_folder.glob("*.chip.jpg"))
    added = face.with_name("33_1_0_20990101000000000.jpg.chip.jpg")
    shutil.copy(face, added)
    with pytest.raises(ConfigError, match=r"holds folds of 24 records, the dataset lists 25 now: a resume would mix "
                                          r"old and new folds; remove .*cvt_cv2 \(or give this cv its own name=\)"):
        run_cv(cfg, 2, **QUIET)
    added.unlink()
    age, rest = face.name.split("_", 1)
    face.rename(face.with_name(f"{int(age) + 1}_{rest}"))  # relabelled
    with pytest.raises(ConfigError, match=r"lists 24 now \(the same count: files or labels changed\)"):
        run_cv(cfg, 2, **QUIET)
    assert json.loads((out / "records.json").read_text())["records"] == 24


def test_cv_refuses_more_folds_than_groups_before_any_work(tmp_path, utk_folder):
    """Before: the caches were made and the folds with test records trained, then a fold without any crashed."""
    cfg = load_config(None, _args(tmp_path, utk_folder, "cvt"))
    with pytest.raises(ConfigError, match="30 folds need at least 30 groups; the dataset has 24"):
        run_cv(cfg, 30, **QUIET)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_group_dro_training_logs_checkpoints_and_resumes_q(tmp_path, utk_folder):
    import torch

    from agelens.data.prepare import prepare_caches
    from agelens.train.engine import Trainer

    dro = ["fairness.group_dro=true", "fairness.dro_eta=0.01", "train.log_every=2"]
    cfg = load_config(None, _args(tmp_path, utk_folder, "dro", *dro, "train.epochs=2"))
    train_and_test(cfg, **QUIET)
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    qs = [r["dro_q"] for r in rows if "dro_q" in r]
    assert qs and sum(qs[-1].values()) == pytest.approx(1.0, abs=1e-3)
    assert len(set(qs[-1].values())) > 1  # q has moved away from uniform
    q = load_checkpoint(cfg.run_dir / "last.pt")["group_dro"]["q"]
    assert list(qs[-1]) == sorted(qs[-1]) and q.tolist() == pytest.approx(list(qs[-1].values()), abs=1e-4)
    caches = prepare_caches(cfg.data, ("train", "val"), progress=False)
    resumed = Trainer(cfg, caches["train"], caches["val"], resume=True, **QUIET)
    assert torch.equal(resumed.dro.q.cpu(), q.cpu())
