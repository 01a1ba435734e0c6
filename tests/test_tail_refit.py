"""The student's tail re-fit: the cut reproduces the network, the tail trains alone, apply writes it back."""

import json

import pytest
import torch

from agelens.models.weights import load_weights, weights_dir
from agelens.train.tail_refit import apply, front_and_tail, tail_modules


@pytest.fixture(scope="module")
def student():
    model, _, card = load_weights(weights_dir() / "student.safetensors")
    return model.float().eval(), card


def test_front_then_tail_is_the_network(student):
    model, _ = student
    x = torch.randn(2, 3, 160, 160)
    front, tail = front_and_tail(model)
    with torch.no_grad():
        maps = front(x)
        assert maps.shape == (2, 192, 5, 5)
        assert torch.allclose(model(x)["logits"], tail(maps)["logits"], atol=1e-5)


def test_a_cut_before_the_whole_last_stage_is_the_network_too(student):
    """tail_from=0: the front ends after stage 3's adapter (112 x 10 x 10 at 160 px), the tail holds the whole last
    stage."""
    model, _ = student
    x = torch.randn(2, 3, 160, 160)
    front, tail = front_and_tail(model, 0)
    with torch.no_grad():
        maps = front(x)
        assert maps.shape == (2, 112, 10, 10)
        assert torch.allclose(model(x)["logits"], tail(maps)["logits"], atol=1e-5)
    deep = {id(p) for m in tail_modules(model, 0) for p in m.parameters()}
    assert {id(p) for p in model.backbone.stages[-1].parameters()} <= deep
    assert {id(p) for m in tail_modules(model) for p in m.parameters()} < deep


def test_fit_refuses_maps_of_different_cuts(tmp_path):
    import numpy as np

    from agelens.train.tail_refit import fit

    _random_parts(tmp_path, "student", 3, 2, n=8)
    d = dict(np.load(tmp_path / "aaf_val.npz"))
    np.savez(tmp_path / "aaf_val.npz", **d, tail_from=np.array(0))
    with pytest.raises(SystemExit, match="different cuts"):
        fit(tmp_path, tmp_path / "fit", epochs=1, batch=8)


def test_tail_modules_hold_the_tail_and_not_the_front(student):
    model, _ = student
    tail = {id(p) for m in tail_modules(model) for p in m.parameters()}
    assert {id(p) for p in model.head.parameters()} <= tail
    assert not tail & {id(p) for p in model.backbone.stem.parameters()}
    assert not tail & {id(p) for p in model.backbone.stages[0].parameters()}
    n = sum(p.numel() for p in model.parameters())
    assert 0.3 * n < sum(p.numel() for m in tail_modules(model) for p in m.parameters()) < 0.6 * n


def test_apply_writes_the_student_with_the_new_tail(tmp_path, student):
    from agelens.train.head_refit import STALE

    model, card = student
    keep = {}
    for i, m in enumerate(tail_modules(model)):
        for k, v in m.state_dict().items():
            keep[f"{i}.{k}"] = v.clone()
    keep["0.conv_pw.weight"] = keep["0.conv_pw.weight"] * 0.5  # the tail's first block changed
    torch.save(keep, tmp_path / "tail.pt")
    (tmp_path / "scores.json").write_text(json.dumps({"recipe": {"epochs": 1}}))
    new, _, new_card = load_weights(apply(tmp_path, tmp_path / "weights"))
    got = tail_modules(new)[0].conv_pw.weight.detach().float()
    assert torch.allclose(got, keep["0.conv_pw.weight"].float(), atol=1e-3, rtol=1e-2)
    assert torch.equal(new.backbone.stem[0].weight.detach().float(),
                       model.backbone.stem[0].weight.detach().float().half().float())
    assert new_card["tail_refit"]["recipe"] == {"epochs": 1} and not set(STALE) & set(new_card)
    assert new_card["config"] == card["config"]


def test_fit_trains_the_tail_and_writes_its_outputs(tmp_path):
    """A one-epoch fit on random maps: tail.pt and scores.json are written, with the shipped student's scores on
    the same maps beside the re-fit's."""
    import numpy as np

    from agelens.train.head_refit import DATASETS
    from agelens.train.tail_refit import fit

    rng = np.random.default_rng(0)
    for ds in DATASETS:
        for part, views in (("train", 3), ("val", 2), ("test", 2)):
            n = 24
            np.savez(tmp_path / f"{ds}_{part}.npz", maps=rng.uniform(0, 2, (n, views, 192, 5, 5)).astype(np.float16),
                     age=rng.uniform(1, 80, n).astype(np.float32), gender=np.array(["male"] * n),
                     race=np.array(["white" if ds == "utkface" else ""] * n))
    res = fit(tmp_path, tmp_path / "fit", epochs=1, batch=16)
    assert (tmp_path / "fit" / "tail.pt").is_file() and (tmp_path / "fit" / "scores.json").is_file()
    assert set(res["refit"]["test"]) == set(DATASETS) and len(res["refit"]["test"]["aaf"]["paired_change"]) == 3
    assert [e["epoch"] for e in res["log"]] == [-1, 0] and res["best_epoch"] in (-1, 0)
    keep = torch.load(tmp_path / "fit" / "tail.pt")
    assert any(k.endswith("conv_pw.weight") for k in keep)


def _random_parts(path, model, train_views, held_views, n=24):
    import numpy as np

    from agelens.train.head_refit import DATASETS

    rng = np.random.default_rng(0)
    for ds in DATASETS:
        for part, views in (("train", train_views), ("val", held_views), ("test", held_views)):
            np.savez(path / f"{ds}_{part}.npz", maps=rng.uniform(0, 2, (n, views, 192, 5, 5)).astype(np.float16),
                     age=rng.uniform(1, 80, n).astype(np.float32), gender=np.array(["male"] * n),
                     race=np.array(["white" if ds == "utkface" else ""] * n), model=np.array(model))


@pytest.mark.parametrize("label_views", [None, 2])
def test_teacher_fit_scores_grain_and_resave_views_and_trains_for_consistency(tmp_path, label_views):
    """The teacher's held-out parts carry plain, mirror, grain and a JPEG pair: the fit reports grain MAE and the
    pair's age change, selects on clean and grain MAE, and trains with the consistency term (every view fitted to
    the label, or only the first two)."""
    from agelens.train.tail_refit import TEACHER_VIEWS_HELD, TEACHER_VIEWS_TRAIN, fit, score

    _random_parts(tmp_path, "teacher", len(TEACHER_VIEWS_TRAIN), len(TEACHER_VIEWS_HELD))
    res = fit(tmp_path, tmp_path / "fit", epochs=1, batch=12, model_name="teacher", consistency=1.0,
              label_views=label_views)
    assert res["recipe"]["label_views"] == label_views
    val = res["refit"]["val"]["aaf"]
    assert {"grain_mae", "grain_bin_signed", "resave_change"} <= set(val) and len(val["resave_change"]) == 3
    assert res["recipe"]["model"] == "teacher" and res["recipe"]["consistency"] == 1.0
    assert score({"a": {"mae": 4.0, "grain_mae": 6.0}, "b": {"mae": 5.0}}) == 5.0
    tail = torch.load(tmp_path / "fit" / "tail.pt")
    if res["best_epoch"] == 0:  # the kept tail is the trained one, not the shipped
        from agelens.models.weights import load_weights, weights_dir

        shipped = tail_modules(load_weights(weights_dir() / "teacher.safetensors")[0]).state_dict()
        assert any(not torch.allclose(tail[k].float(), shipped[k].float()) for k in tail if k.endswith("weight"))


def test_fit_refuses_maps_of_another_model(tmp_path):
    from agelens.train.tail_refit import fit

    _random_parts(tmp_path, "student", 3, 2, n=8)
    with pytest.raises(SystemExit, match="run `features --model teacher`"):
        fit(tmp_path, tmp_path / "fit", epochs=1, batch=8, model_name="teacher")


def test_apply_to_the_teacher_drops_what_reads_its_tail(tmp_path):
    """The teacher's guard heads and age prior read the tail's output: apply drops them with the stale metrics."""
    from agelens.train.head_refit import STALE
    from agelens.train.tail_refit import GUARD_ENTRIES

    model, _, card = load_weights(weights_dir() / "teacher.safetensors")
    torch.save(tail_modules(model.float()).state_dict(), tmp_path / "tail.pt")
    (tmp_path / "scores.json").write_text(json.dumps({"recipe": {"model": "teacher", "epochs": 1}}))
    new, _, new_card = load_weights(apply(tmp_path, tmp_path / "weights"))
    assert (tmp_path / "weights" / "teacher.safetensors").is_file()
    assert new.guards is not None and new_card["config"] == card["config"]
    assert not (set(STALE) | set(GUARD_ENTRIES)) & set(new_card) and new_card["tail_refit"]["recipe"]["epochs"] == 1


def test_label_views_needs_consistency_and_a_view_count_that_exists(tmp_path):
    from agelens.train.tail_refit import fit

    _random_parts(tmp_path, "teacher", 3, 5, n=8)
    with pytest.raises(SystemExit, match="needs --consistency"):
        fit(tmp_path, tmp_path / "fit", epochs=1, batch=6, model_name="teacher", label_views=2)
    with pytest.raises(SystemExit, match="hold 3 views"):
        fit(tmp_path, tmp_path / "fit", epochs=1, batch=6, model_name="teacher", consistency=1.0, label_views=4)


def test_kd_pulls_the_student_towards_the_teachers_answers(tmp_path):
    """`fit --kd`: the teacher's clean-face distributions (here all at age 70) pull the tail's answers towards them,
    against labels drawn at random; without targets, or for the teacher, it refuses."""
    import numpy as np

    from agelens.train.head_refit import DATASETS
    from agelens.train.tail_refit import fit

    _random_parts(tmp_path, "student", 3, 2, n=16)
    with pytest.raises(SystemExit, match="run `targets` first"):
        fit(tmp_path, tmp_path / "fit", epochs=1, batch=8, kd=1.0)
    with pytest.raises(SystemExit, match="--model student"):
        fit(tmp_path, tmp_path / "fit", epochs=1, batch=8, kd=1.0, model_name="teacher")
    probs = np.zeros((16, 2, 101), np.float16)
    probs[:, :, 70] = 1
    for ds in DATASETS:
        np.savez(tmp_path / f"{ds}_train.teacher.npz", probs=probs)
    means = {}
    for kd in (0.0, 20.0):
        res = fit(tmp_path, tmp_path / f"fit_{kd}", epochs=3, batch=8, lr=3e-3, head_lr=1e-2, kd=kd)
        assert res["recipe"]["kd"] == kd
        train = dict(np.load(tmp_path / "aaf_train.npz"))
        from agelens.inference.backends.torch import TorchModel
        from agelens.train.tail_refit import _ages

        model = TorchModel.load("student", tta_flip=False).model.float().eval()
        _, tail = front_and_tail(model)
        tail_modules(model).load_state_dict(torch.load(tmp_path / f"fit_{kd}" / "tail.pt"))
        means[kd] = float(_ages(tail, model.head, train["maps"][:, 0]).mean())
    assert means[20.0] > means[0.0] + 3
