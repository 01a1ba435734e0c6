import json

import pytest
import torch

from agelens import numerics as num
from agelens.config import load_config
from agelens.errors import CheckpointError
from agelens.models.checkpoint import load_checkpoint
from agelens.train.run import train_and_test


def _cfg(tmp_path, utk_folder, name, *extra):
    return load_config(None, [
        f"data.root={utk_folder}", f"data.split_file={tmp_path}/split.json", f"data.cache_dir={tmp_path}/cache",
        "data.cache_size=48", "data.crop_size=40", "data.input_size=32", "data.val_frac=0.2", "data.test_frac=0.2",
        "model.backbone=resnet18", "model.head=dldl", "train.batch_size=8", "train.lr=1e-3", "train.numerics=fp32",
        "train.channels_last=off", "train.freeze_backbone_epochs=1", "train.scheduler=plateau", "train.log_every=1",
        f"out_dir={tmp_path}/runs", f"name={name}", *extra])


def test_train_writes_run_dir_and_resume_matches_uninterrupted(tmp_path, utk_folder):
    train_and_test(_cfg(tmp_path, utk_folder, "full", "train.epochs=3"), progress=False, log=lambda *_: None)
    run = tmp_path / "runs" / "full"
    for f in ("config.yaml", "env.json", "metrics.jsonl", "last.pt", "best.pt", "test/metrics.json", "test/predictions.csv"):
        assert (run / f).is_file(), f
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "val_mae" in r] == [0, 1, 2]
    assert rows[0]["frozen_backbone"] is True
    env = json.loads((run / "env.json").read_text())
    assert env["numerics"]["dtype"] == "fp32"
    assert env["init"] == "random init (no offline ResNet weights)"  # what the run started from, said where it ran
    test = json.loads((run / "test/metrics.json").read_text())
    assert {"n", "mae", "cs5", "cmae", "acc5", "bias_score", "per_bin", "per_gender", "per_race"} <= set(test)

    # same seed, interrupted after 2 epochs, resumed to 3: identical weights
    train_and_test(_cfg(tmp_path, utk_folder, "part", "train.epochs=2"), progress=False, log=lambda *_: None)
    train_and_test(_cfg(tmp_path, utk_folder, "part", "train.epochs=3"), resume=True, progress=False, log=lambda *_: None)
    a = load_checkpoint(run / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "runs" / "part" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    said = []  # resumed with fewer epochs than it has: it says that nothing runs
    train_and_test(_cfg(tmp_path, utk_folder, "part", "train.epochs=2"), resume=True, progress=False, log=said.append)
    assert any("already reach train.epochs=2, so no epoch runs" in m for m in said), said


def test_resume_without_checkpoint_and_corrupt_checkpoint(tmp_path, utk_folder):
    said: list[str] = []  # nothing to resume yet (a requeued job killed early): the run starts, saying so
    train_and_test(_cfg(tmp_path, utk_folder, "none", "train.epochs=1"), resume=True, progress=False, log=said.append)
    assert any("no checkpoint in" in s for s in said) and (tmp_path / "runs" / "none" / "last.pt").is_file()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)


def test_numerics_choice(monkeypatch):
    cfg = load_config(None, ["train.channels_last=on"]).train
    monkeypatch.setattr(num, "cpu_flags", lambda: {"avx2"})
    n = num.choose_numerics(cfg)
    assert n.dtype == "fp32" and n.channels_last and "no native bf16" in n.reason
    cfg.numerics = "bf16"
    assert num.choose_numerics(cfg).dtype == "bf16"  # forcing wins
    cfg.numerics = "fp16"
    with pytest.raises(Exception, match="only supported on CUDA"):
        num.choose_numerics(cfg)
    # with native bf16 and a model, the probe measures and records every candidate
    monkeypatch.setattr(num, "cpu_flags", lambda: {"avx512_bf16"})
    cfg.numerics, cfg.channels_last = "auto", "auto"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    n = num.choose_numerics(cfg, model, lambda m, x, y: m(x).float().mean(), input_size=16, probe_batch=2)
    assert set(n.probe) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}


def test_output_distillation_fine_tunes_a_student_from_a_teacher_run(tmp_path, utk_folder):
    """train.kd_weight: the trainer loads distill.teacher, shows it the clean faces and adds its term (the loss
    differs from the same run without it); a head without an age distribution is refused."""
    from agelens.errors import ConfigError

    quiet = {"progress": False, "log": lambda *_: None}
    train_and_test(_cfg(tmp_path, utk_folder, "teacher", "train.epochs=1", "train.freeze_backbone_epochs=0"), **quiet)
    occ = ["train.epochs=1", "train.freeze_backbone_epochs=0", "occlusion.enabled=true",
           f"model.init_from={tmp_path}/runs/teacher", f"distill.teacher={tmp_path}/runs/teacher"]
    logs: list[str] = []
    train_and_test(_cfg(tmp_path, utk_folder, "kd", *occ, "train.kd_weight=1.0"), progress=False, log=logs.append)
    train_and_test(_cfg(tmp_path, utk_folder, "plain", *occ), **quiet)
    assert any("output distillation" in x for x in logs)

    def losses(name):
        rows = [json.loads(x) for x in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    assert losses("kd") and losses("kd") != losses("plain")
    assert (tmp_path / "runs" / "kd" / "best.pt").is_file()
    with pytest.raises(ConfigError, match="kd_weight needs a distribution head"):
        _cfg(tmp_path, utk_folder, "bad", "train.kd_weight=1.0", "model.head=regression")
    with pytest.raises(ConfigError, match="same ages"):  # the teacher answers 0-100, this model 0-90
        train_and_test(_cfg(tmp_path, utk_folder, "ages", *occ[:3], f"distill.teacher={tmp_path}/runs/teacher",
                            "model.max_age=90", "train.kd_weight=1.0"), **quiet)
    # fine-tuning a model to another age range takes its trunk and starts the head afresh (before: "weights do not
    # fit this model (Error(s) in loading state_dict for AgeModel:)")
    logs.clear()
    train_and_test(_cfg(tmp_path, utk_folder, "wider", *occ[:2], f"model.init_from={tmp_path}/runs/teacher",
                        "model.max_age=110"), progress=False, log=logs.append)
    assert any("its age head left out, trained afresh" in x and "(101, 512) → (111, 512)" in x for x in logs), logs


def test_a_fresh_run_under_an_old_name_says_so_and_resume_names_another_architecture(tmp_path, utk_folder):
    said: list[str] = []
    train_and_test(_cfg(tmp_path, utk_folder, "mine", "train.epochs=1"), progress=False, log=said.append)
    run = tmp_path / "runs" / "mine"
    (run / "report").mkdir()  # made from the first model by `agelens report`
    assert not any("earlier run" in s for s in said)
    train_and_test(_cfg(tmp_path, utk_folder, "mine", "train.epochs=1", "train.seed=3"), progress=False, log=said.append)
    assert any("holds an earlier run" in s and "report/" in s for s in said), said
    assert not (run / "report").exists() and (run / "test" / "metrics.json").is_file()  # the new run's test
    with pytest.raises(CheckpointError, match="holds a resnet18 \\+ dldl model, the config resnet34 \\+ dldl"):
        train_and_test(_cfg(tmp_path, utk_folder, "mine", "train.epochs=2", "model.backbone=resnet34"), resume=True,
                       progress=False, log=lambda *_: None)


def test_ages_past_the_heads_range_are_fitted_at_its_end_and_said(tmp_path, utk_folder):
    """UTKFace holds 17 training faces aged 101-116 for the 0-100 heads: a run trains and says so (for a day every
    UTKFace recipe was refused); a distribution head's target for an age far past its end is its last age, where it
    had been 0 / 0 (a NaN loss)."""
    import numpy as np

    from agelens.models.heads import gaussian_label_distribution

    said: list[str] = []
    res = train_and_test(_cfg(tmp_path, utk_folder, "narrow", "train.epochs=1", "model.max_age=40"), progress=False,
                         log=said.append)
    assert any("aged outside model.min_age..max_age (0-40)" in s and "nearest end" in s for s in said), said
    assert np.isfinite(res["best_val_mae"]) and (tmp_path / "runs" / "narrow" / "best.pt").is_file()
    d = gaussian_label_distribution(torch.tensor([200.0, 116.0, 20.0]), torch.arange(0, 101).float(), 2.0)
    assert torch.isfinite(d).all() and int(d[0].argmax()) == 100 and int(d[1].argmax()) == 100
    old = torch.exp(-0.5 * ((torch.arange(0, 101).float() - 20.0) / 2.0) ** 2)
    assert torch.allclose(d[2], old / old.sum(), atol=1e-6)  # inside the range: the same target as before


def test_a_diverged_loss_is_an_agelens_error_naming_the_lever(tmp_path, utk_folder, monkeypatch):
    from agelens.errors import AgelensError, NonFiniteLossError
    from agelens.train import engine

    monkeypatch.setattr(engine, "train_step", lambda *a, **k: float("nan"))
    with pytest.raises(NonFiniteLossError, match="lower train.lr") as e:
        train_and_test(_cfg(tmp_path, utk_folder, "nan", "train.epochs=1"), progress=False, log=lambda *_: None)
    assert isinstance(e.value, AgelensError) and isinstance(e.value, FloatingPointError)


def test_resume_keeps_the_runs_own_recipe_and_record(tmp_path, utk_folder, monkeypatch):
    """--resume: another recipe is refused (before: the new lr was ignored, another dataset trained on, config.yaml
    rewritten); an early-stopped run stays stopped (before: it trained on); metrics.jsonl is cut back to the
    checkpoint (before: an interrupted epoch's rows twice); one run folder, one training process (before: two
    interleaved); a fresh run under the name removes the earlier checkpoints at once."""
    import os

    from agelens.errors import CheckpointError, ConfigError
    from agelens.train.engine import Trainer

    quiet = {"progress": False, "log": lambda *_: None}
    stop = ["train.epochs=6", "train.early_stop_patience=1", "train.freeze_backbone_epochs=0", "train.lr=1e-6"]
    monkeypatch.setattr(Trainer, "validate", lambda self, idx: 10.0)  # no gain after the first epoch: it stops
    res = train_and_test(_cfg(tmp_path, utk_folder, "r", *stop), **quiet)
    run = tmp_path / "runs" / "r"
    assert res["epochs_run"] < 6  # it stopped early
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(rows) + '\n{"epoch": 99, "step": 1}\n{"epoch": 3, "ste')  # a kill
    said: list[str] = []
    again = train_and_test(_cfg(tmp_path, utk_folder, "r", *stop), resume=True, progress=False, log=said.append)
    assert any("had stopped early" in s for s in said) and again["epochs_run"] == res["epochs_run"]
    assert (run / "metrics.jsonl").read_text().splitlines() == rows
    with pytest.raises(ConfigError, match=r"--resume: .* was trained with other settings \(train.lr: 1e-06 → 0.01\)"):
        train_and_test(_cfg(tmp_path, utk_folder, "r", *stop[:-1], "train.lr=0.01"), resume=True, **quiet)
    from agelens.data.prepare import prepare_caches

    cfg = _cfg(tmp_path, utk_folder, "r", *stop)
    caches = prepare_caches(cfg.data, ("train", "val"), progress=False, log=None)
    first = Trainer(cfg, caches["train"], caches["val"], **quiet)
    first._hold_run_dir()
    (run / ".last.pt.abc123.tmp").write_bytes(b"x" * 10)
    with pytest.raises(CheckpointError, match="being written by another training process"):
        Trainer(cfg, caches["train"], caches["val"], **quiet).fit()
    first.release()
    assert (run / "best.pt").is_file()
    fresh = Trainer(_cfg(tmp_path, utk_folder, "r", *stop[:-1], "train.lr=0.01"), caches["train"], caches["val"],
                    **quiet)
    monkeypatch.setattr(fresh, "_fairness_setup", lambda n: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed before its first checkpoint
        fresh.fit()
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()
    assert not list(run.glob(".*.tmp")) and not os.path.exists(run / ".last.pt.abc123.tmp")
    said.clear()  # a requeued job killed before its first checkpoint: --resume starts it (before: an error)
    train_and_test(_cfg(tmp_path, utk_folder, "r", *stop), resume=True, progress=False, log=said.append)
    assert any("no checkpoint in" in s and "starts from the beginning" in s for s in said) and (run / "best.pt").is_file()


def test_loader_workers_draw_new_augmentations_each_epoch(tmp_path, utk_folder, monkeypatch):
    """With data.num_workers > 0 the workers were kept across epochs with the first epoch's dataset, so every epoch
    drew the same crops, flips and occluders (and a resume did not reproduce the run): the epoch the workers' dataset
    reads is recorded from inside them."""
    from agelens.data.dataset import CachedFaceDataset

    log = tmp_path / "epochs.txt"
    real = CachedFaceDataset.item

    def item(self, i):
        with open(log, "a") as f:  # written from the loader's worker process
            f.write(f"{self.epoch}\n")
        return real(self, i)

    monkeypatch.setattr(CachedFaceDataset, "item", item)
    cfg = _cfg(tmp_path, utk_folder, "w", "train.epochs=2", "train.freeze_backbone_epochs=0", "data.num_workers=1")
    train_and_test(cfg, progress=False, log=lambda *_: None)
    assert set(log.read_text().split()) == {"0", "1"}


def test_best_checkpoint_plateau_and_early_stopping_follow_the_validation_maes(tmp_path, utk_folder, monkeypatch):
    """Validation MAEs 5, 4, 4.5, 4.5, ... (stubbed): the best is epoch 1 (best.pt holds it), two epochs without a
    gain halve the lr once (plateau) and stop the run at patience 2, after 4 epochs of 6."""
    from agelens.train import engine

    maes = iter([5.0, 4.0, 4.5, 4.5, 4.5, 4.5])
    monkeypatch.setattr(engine.Trainer, "validate", lambda self, idx: next(maes))
    cfg = _cfg(tmp_path, utk_folder, "stop", "train.epochs=6", "train.early_stop_patience=2",
               "train.freeze_backbone_epochs=0", "train.max_steps_per_epoch=2")
    result = train_and_test(cfg, progress=False, log=lambda *_: None)
    assert result["best_epoch"] == 1 and result["best_val_mae"] == 4.0 and result["epochs_run"] == 4
    run = tmp_path / "runs" / "stop"
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 3 and last["stopped_early"] and last["best_mae"] == 4.0 and last["bad_epochs"] == 2
    assert last["scheduler"]["lr_scale"] == 0.5
