"""Components of the user's own, registered by a plugin module (AGELENS_PLUGINS): trained by the CLI, then loaded
back in fresh processes that never imported the plugin themselves (docs/extending.md)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

PLUGIN = '''
import torch
from torch import nn

from agelens.models.backbones import Backbone, BackboneInfo
from agelens.models.heads import AgeHead
from agelens.registry import BACKBONES, HEADS


@BACKBONES.register("tinycnn")
def tinycnn(pretrained=None, width=8):
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())

    c = [width, 2 * width, 2 * width, 4 * width]
    info = BackboneInfo("tinycnn", tuple(c), c[-1], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "random init")
    return Backbone(block(3, c[0]), [nn.Identity(), block(c[0], c[1]), block(c[1], c[2]), block(c[2], c[3])],
                    nn.Identity(), info)


@HEADS.register("l1")
class L1Head(AgeHead):
    def __init__(self, in_features, min_age=0, max_age=100, scale=1.0, **_):
        super().__init__(in_features, min_age, max_age)
        self.scale = scale
        self.fc = nn.Linear(in_features, 1)

    def forward(self, emb):
        return {"age": self.fc(emb)[:, 0] * self.scale + 35.0}

    def losses(self, out, age):
        return (out["age"] - age.float()).abs()

    def decode(self, out):
        return self.clamp(out["age"]), torch.full_like(out["age"], 5.0)
'''


def _run(*args, env):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def test_a_plugins_backbone_and_head_train_and_load_in_fresh_processes(tmp_path):
    from conftest import utk_faces

    (tmp_path / "myplug.py").write_text(textwrap.dedent(PLUGIN))
    d = utk_faces(tmp_path / "utk", 24)
    base = {**os.environ, "GLOG_minloglevel": "3", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    args = [f"data.root={d}", f"data.split_file={tmp_path}/split.json", f"data.cache_dir={tmp_path}/cache",
            "data.cache_size=48", "data.crop_size=40", "data.input_size=32", "model.backbone=tinycnn",
            "model.head=l1", "model.backbone_args={width: 4}", "model.head_args={scale: 2.0}", "train.batch_size=8",
            "train.epochs=1", "train.freeze_backbone_epochs=0", "train.numerics=fp32", f"out_dir={tmp_path}/runs",
            "name=mine"]
    # without the plugin named, the CLI says how to name it
    r = _run("-m", "agelens.cli", "train", "--quiet", *args, env=base)
    assert r.returncode == 2 and "unknown backbone 'tinycnn'" in r.stderr and "AGELENS_PLUGINS" in r.stderr
    env = {**base, "AGELENS_PLUGINS": "myplug"}
    r = _run("-m", "agelens.cli", "train", "--quiet", *args, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "mine"
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    assert cfg["model"]["backbone_args"] == {"width": 4} and cfg["model"]["head_args"] == {"scale": 2.0}
    # a fresh process that never imports the plugin itself: the registry imports it when the name is asked for
    code = (f"from agelens import AgeEstimator; est = AgeEstimator.from_pretrained({str(run)!r}); "
            f"print(est.teacher.model.head.scale, est.predict({str(next(d.iterdir()))!r}, detect=False)[0].age)")
    r = _run("-c", code, env=env)
    assert r.returncode == 0 and r.stdout.split()[0] == "2.0", r.stderr[-2000:]
    r = _run("-c", code, env=base)  # and without it named: the message says what to do
    assert r.returncode != 0 and "AGELENS_PLUGINS" in r.stderr and f"{run / 'best.pt'}: unknown backbone" in r.stderr
    # worker processes import it too
    r = _run("-m", "agelens.cli", "predict", d, "--model", run, "--no-detect", "--workers", "2", "-f", "jsonl", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len([json.loads(x) for x in r.stdout.splitlines()]) == 24


def test_registering_the_same_builder_again_is_fine_and_another_is_refused():
    from agelens.errors import ConfigError
    from agelens.registry import Registry

    reg = Registry("thing")

    def make():
        return 1

    reg.register("a")(make)
    reg.register("a")(make)  # a module reloaded, a notebook cell run again
    with pytest.raises(ConfigError, match="'a' is registered twice"):
        reg.register("a")(lambda: 2)


def test_a_broken_plugin_is_named():
    code = "from agelens.registry import BACKBONES; BACKBONES.get('nope')"
    r = _run("-c", code, env={**os.environ, "AGELENS_PLUGINS": "no_such_plugin_module"})
    assert r.returncode != 0 and "agelens plugin 'no_such_plugin_module'" in r.stderr and "could not be imported" in r.stderr


OCCLUDER_PLUGIN = '''
import cv2
import numpy as np

from agelens.occlusion.families import register_occluder

COLOURS = {"red": (200, 30, 40), "navy": (20, 30, 90)}


@register_occluder("bandana", styles=list(COLOURS))
def bandana(img, fr, rng, style):
    """A flat band from the nose tip to the chin, the face's width."""
    top, chin = fr.pt["nose"][1], fr.pt["chin"][1]
    poly = np.array([[-1.6, top], [1.6, top], [1.6, chin + 0.2], [-1.6, chin + 0.2]])
    alpha = np.zeros(img.shape[:2], np.float32)
    cv2.fillPoly(alpha, [np.round(fr.to_px(poly)).astype(np.int32)], 1.0)
    out = img * (1 - alpha[..., None]) + np.array(COLOURS[style], np.float32) * alpha[..., None]
    return out, alpha, fr.covered(alpha)
'''


def test_a_plugins_occluder_is_drawn_alone_and_combined_by_the_cli_workers_and_the_api(tmp_path, astronaut_path):
    import csv
    import shutil

    (tmp_path / "occplug.py").write_text(textwrap.dedent(OCCLUDER_PLUGIN))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        shutil.copy(astronaut_path, src / f"a{i}.jpg")
    base = {**os.environ, "GLOG_minloglevel": "3", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = _run("-m", "agelens.cli", "occlude", src, tmp_path / "no", "--mix", "bandana=1", "--quiet", env=base)
    assert r.returncode == 2 and "unknown occlusion type 'bandana'" in r.stderr and "extending.md" in r.stderr
    env = {**base, "AGELENS_PLUGINS": "occplug"}
    # worker processes (forkserver) import the plugin when the name is asked for
    r = _run("-m", "agelens.cli", "occlude", src, tmp_path / "out", "--mix", "bandana=1,bandana+sunglasses=1",
             "--workers", "2", "--quiet", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "out" / "occlusions.csv").open()))
    assert {row["status"] for row in rows} == {"ok"} and len(rows) == 3
    assert {row["type"] for row in rows} <= {"bandana", "bandana+sunglasses"}
    for row in rows:
        assert row["style"].split("+")[0] in ("red", "navy") and 0.15 < float(row["area_fraction"]) < 0.8
    code = '''
import numpy as np
from skimage import data
from agelens.faces.detect import FaceAnalyzer
from agelens.occlusion.synth import OcclusionMix, occlude, styles_for
from agelens.occlusion.families import register_occluder
img = data.astronaut()
lm = FaceAnalyzer().mesh(img)
o = occlude(img, lm, "cap+bandana", np.random.default_rng(0))
covered = o.alpha > 0.5
print(o.kind, sorted(o.parts), round(float(np.abs(o.image[covered].astype(int) - img[covered]).mean()), 1))
print(len(styles_for("bandana+cap")), OcclusionMix({"bandana": 1.0}).types)
for bad in ("bandanna", "bandana+bandana", "bandana+mask", "bandana+cap+hair"):
    try:
        OcclusionMix({bad: 1.0})
    except ValueError as e:
        print("refused", bad, "bandana" in str(e), "only sunglasses combines" in str(e))
try:
    register_occluder("mask", ["x"])(lambda *a: None)
except Exception as e:
    print(type(e).__name__, "paper's types" in str(e))
try:
    register_occluder("a,b", ["x"])(lambda *a: None)  # `--mix TYPE=P,...` could not name it
except Exception as e:
    print(type(e).__name__, "',' or '='" in str(e))
register_occluder("broken", ["x"])(lambda img, fr, rng, style: (img[:10], img[..., 0], 0.1))
try:
    occlude(img, lm, "broken", np.random.default_rng(0))
except Exception as e:
    print(type(e).__name__, "occluder 'broken' must return" in str(e))
'''
    r = _run("-c", code, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    kind, parts, change = lines[0].split(" ", 1)[0], lines[0].split("[")[1].split("]")[0], float(lines[0].split()[-1])
    assert kind == "cap+bandana" and parts == "'bandana', 'cap'" and change > 20  # both drawn, pixels changed
    from agelens.occlusion.families import CAP_STYLES

    assert lines[1] == f"{2 * len(CAP_STYLES)} ['bandana']"
    assert lines[2:6] == ["refused bandanna True False", "refused bandana+bandana True False",
                          "refused bandana+mask True True", "refused bandana+cap+hair True False"]
    assert lines[6:] == ["ConfigError True", "ConfigError True", "ConfigError True"]
