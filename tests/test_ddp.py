"""DDP under torchrun on CPU (gloo): two ranks train one epoch and agree on the weights."""

import os
import subprocess
import sys

import torch

from agelens.models.checkpoint import load_checkpoint


def test_torchrun_two_cpu_ranks(tmp_path, utk_folder):
    args = [f"data.root={utk_folder}", f"data.split_file={tmp_path}/split.json", f"data.cache_dir={tmp_path}/cache",
            "data.cache_size=48", "data.crop_size=40", "data.input_size=32", "model.backbone=resnet18",
            "train.batch_size=4", "train.epochs=1", "train.freeze_backbone_epochs=0", "train.numerics=fp32",
            "train.channels_last=off", f"out_dir={tmp_path}/runs", "name=ddp"]
    # the split and caches are made once, before the ranks start
    subprocess.run([sys.executable, "-m", "agelens.cli", "prepare", "--workers", "1", *args], check=True,
                   capture_output=True, timeout=300)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOG_minloglevel": "3"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "agelens.cli", "train", "--quiet", *args], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "runs" / "ddp" / "last.pt")
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert (tmp_path / "runs" / "ddp" / "test" / "metrics.json").is_file()
