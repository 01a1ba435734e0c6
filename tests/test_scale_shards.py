"""Sharded caches: writer/reader round trip, streamed DDP slots (disjoint, equal, seeded, resumable by epoch), the
same augmentation as the memory-mapped path, and a 2-process torchrun (gloo) training run over shards."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from agelens.data.adapters import load_dataset
from agelens.data.cache import build_cache
from agelens.data.dataset import CachedFaceDataset
from agelens.data.shards import MANIFEST, ShardCache, ShardSet, ShardStream, write_shards
from agelens.errors import DataError


@pytest.fixture()
def cache(tmp_path, utk_folder):
    return build_cache(load_dataset("utkface", utk_folder).records, tmp_path / "cache", 48, True, workers=1,
                       progress=False)


def test_shards_round_trip(tmp_path, cache):
    out = write_shards(cache, tmp_path / "shards", shard_size=5, seed=0)
    s = ShardSet(out)
    assert len(s.shards) == 5 and [r.path for r in s.records] == [r.path for r in cache.records]
    assert sorted(i for sh in s.shards for i in sh["indices"]) == list(range(len(cache)))
    back = ShardCache(out)
    assert np.array_equal(back.images, cache.images) and np.array_equal(back.ages, cache.ages)
    assert np.array_equal(np.isnan(back.landmarks), np.isnan(cache.landmarks))
    assert np.allclose(np.nan_to_num(back.landmarks), np.nan_to_num(cache.landmarks))
    stamp = (out / MANIFEST).stat().st_mtime_ns
    write_shards(cache, out, shard_size=5, seed=0)  # up to date: kept as is
    assert (out / MANIFEST).stat().st_mtime_ns == stamp
    (out / MANIFEST).unlink()  # what a killed writer leaves: shards but no manifest
    with pytest.raises(DataError, match="not a complete shard folder"):
        ShardSet(out)


def test_stream_slots_are_disjoint_equal_and_seeded(tmp_path, cache):
    s = ShardSet(write_shards(cache, tmp_path / "shards", shard_size=3, seed=0))
    kw = {"crop_size": 40, "input_size": 32}

    def epoch_indices(rank: int, epoch: int, limit: int = len(cache)) -> list[int]:
        ds = ShardStream(s, limit, batch_size=2, rank=rank, world=2, seed=7, **kw)
        ds.set_epoch(epoch)
        got = [int(idx) for _, _, idx in ds]
        assert len(got) == len(ds)
        return got

    r0, r1 = epoch_indices(0, 0), epoch_indices(1, 0)
    assert len(r0) == len(r1) > 0 and len(r0) % 2 == 0 and not set(r0) & set(r1)
    assert epoch_indices(0, 0) == r0  # seeded: an epoch replays exactly (resume by epoch)
    assert epoch_indices(0, 1) != r0
    assert max(epoch_indices(0, 0, limit=12) + epoch_indices(1, 0, limit=12)) < 12  # data.max_train
    # the same record in the same epoch gets the same augmented view as from the memory-mapped cache
    ds = ShardStream(s, len(cache), batch_size=2, seed=7, **kw)
    ds.set_epoch(3)
    ref = CachedFaceDataset(cache, True, seed=7, **kw)
    ref.set_epoch(3)
    for img, age, idx in list(ds)[:4]:
        want = ref[int(idx)]
        assert torch.equal(img, want[0]) and float(age) == float(want[1])
    with pytest.raises(DataError, match="shard"):
        ShardStream(s, len(cache), 2, world=4, num_workers=4, **kw)
    # under DataLoader workers each worker reads its own shards: every face at most once, len() batches in all
    from torch.utils.data import DataLoader

    ds = ShardStream(s, len(cache), batch_size=2, num_workers=2, seed=7, **kw)
    got = [int(i) for batch in DataLoader(ds, batch_size=2, num_workers=2) for i in batch[2]]
    assert len(got) == len(ds) == len(set(got)) > 0


def test_torchrun_two_ranks_stream_shards(tmp_path, utk_folder):
    shards = tmp_path / "shards"
    args = [f"data.root={utk_folder}", f"data.split_file={tmp_path}/split.json", f"data.cache_dir={tmp_path}/cache",
            "data.cache_size=48", "data.crop_size=40", "data.input_size=32", "data.shard_size=4",
            "model.backbone=resnet18", "model.pretrained=false", "train.batch_size=4", "train.epochs=1",
            "train.freeze_backbone_epochs=0", "train.numerics=fp32", "train.channels_last=off", "train.log_every=1",
            f"out_dir={tmp_path}/runs", "name=shards"]
    from agelens.config import load_config
    from agelens.data.prepare import prepare_caches

    prepare_caches(load_config(None, [*args, f"data.shards={shards}"]).data, workers=1, progress=False)
    # the ranks read only the shards (the memory-mapped caches are gone, as on a node without them)
    import shutil

    shutil.rmtree(tmp_path / "cache")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOG_minloglevel": "3"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "agelens.cli", "train", "--quiet", f"data.shards={shards}", *args],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from agelens.models.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "runs" / "shards" / "last.pt")
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert all("val_mae" in h for h in ck["history"])
    assert (tmp_path / "runs" / "shards" / "test" / "metrics.json").is_file()


def _cfg(tmp_path, utk_folder, *extra):
    from agelens.config import load_config

    return load_config(None, [f"data.root={utk_folder}", f"data.split_file={tmp_path}/split.json",
                              f"data.cache_dir={tmp_path}/cache", "data.cache_size=48", "data.crop_size=40",
                              "data.input_size=32", "data.shard_size=4", f"data.shards={tmp_path}/shards",
                              "model.backbone=resnet18", "model.pretrained=false", "train.batch_size=4",
                              "train.epochs=1", "train.freeze_backbone_epochs=0", "train.numerics=fp32",
                              "train.channels_last=off", f"out_dir={tmp_path}/runs", "name=shards", *extra])


def test_shards_with_extra_data_are_refused_at_prepare_and_train(tmp_path, utk_folder):
    """Before: prepare sharded the main dataset only (and printed shard folders for the extra one too), and train
    streamed those shards, leaving the extra datasets out without a word."""
    import copy

    from agelens.data.prepare import prepare_all
    from agelens.errors import ConfigError
    from agelens.train.run import train_and_test

    cfg = _cfg(tmp_path, utk_folder)
    extra = copy.deepcopy(cfg.data)
    extra.dataset, extra.shards = "csv", None
    extra.root, extra.split_file, extra.cache_dir = f"{tmp_path}/b.csv", f"{tmp_path}/b.json", f"{tmp_path}/bc"
    cfg.extra_data = [extra]
    with pytest.raises(ConfigError, match=r"would leave extra_data \(csv\) out: unset data.shards"):
        prepare_all(cfg.data, cfg.extra_data, workers=1, progress=False, log=None)
    with pytest.raises(ConfigError, match=r"would leave extra_data \(csv\) out"):
        train_and_test(cfg, progress=False, log=lambda *_: None)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_shards_are_checked_against_the_config_and_the_loader_slots_before_the_run_folder(tmp_path, utk_folder):
    """Before: shards of another split or dataset trained without a word, and too few shards for the loader workers
    were found after config.yaml and env.json had replaced an earlier run's."""
    import json

    from agelens.data.prepare import make_or_load_split, prepare_caches
    from agelens.data.shards import check_shards
    from agelens.errors import ConfigError
    from agelens.train.run import train_and_test

    cfg = _cfg(tmp_path, utk_folder)
    prepare_caches(cfg.data, workers=1, progress=False, log=None)
    m = json.loads((tmp_path / "shards" / "train" / MANIFEST).read_text())
    assert (m["dataset"], m["root"], m["split_file"], m["part"]) == ("utkface", str(utk_folder),
                                                                     f"{tmp_path}/split.json", "train")
    said: list[str] = []
    check_shards(cfg.data, said.append)
    assert said == []
    earlier = tmp_path / "runs" / "shards"
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text("an: earlier run\n")
    with pytest.raises(DataError, match=r"shard\(s\) for 1 rank\(s\) x 8 loader worker\(s\)"):
        train_and_test(_cfg(tmp_path, utk_folder, "data.num_workers=8"), progress=False, log=lambda *_: None)
    assert (earlier / "config.yaml").read_text() == "an: earlier run\n" and not (earlier / "env.json").exists()
    with pytest.raises(ConfigError, match=r"shards/train was written from split_file .*/split.json \(the config: "
                                          r".*/other.json\): rewrite it with `agelens prepare"):
        check_shards(_cfg(tmp_path, utk_folder, f"data.split_file={tmp_path}/other.json").data)
    make_or_load_split(_cfg(tmp_path, utk_folder, "data.split_seed=5").data, force=True, log=None)  # same file, anew
    with pytest.raises(ConfigError, match=r"holds other faces than part \w+ of .*/split.json gives now"):
        train_and_test(cfg, progress=False, log=lambda *_: None)
    for k in ("train", "val", "test"):  # shards written before the manifest recorded its source
        p = tmp_path / "shards" / k / MANIFEST
        p.write_text(json.dumps({key: v for key, v in json.loads(p.read_text()).items()
                                 if key not in ("dataset", "root", "split_file", "part")}))
    check_shards(cfg.data, said.append)
    assert len(said) == 1 and "not checked against the config" in said[0]
