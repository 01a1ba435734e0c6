"""The teacher's front re-fit: what trains, the views it trains on, and apply writing the front back."""

import numpy as np
import pytest
import torch

from agelens.models.weights import load_weights, weights_dir
from agelens.train.front_refit import FRONT_STAGES, apply, forward, front_modules, views


@pytest.fixture(scope="module")
def teacher():
    model, _, card = load_weights(weights_dir() / "teacher.safetensors")
    return model.float().eval(), card


def test_front_modules_hold_the_stem_and_first_stages_only(teacher):
    model, _ = teacher
    front = {id(p) for m in front_modules(model) for p in m.parameters()}
    assert {id(p) for p in model.backbone.stem.parameters()} <= front
    assert {id(p) for p in model.backbone.stages[FRONT_STAGES - 1].parameters()} <= front
    assert not front & {id(p) for p in model.backbone.stages[FRONT_STAGES].parameters()}
    assert not front & {id(p) for p in model.head.parameters()} and not front & {id(p) for p in model.guards.parameters()}


def test_forward_gives_the_models_age_and_what_the_guards_read(teacher):
    model, _ = teacher
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        age, guard_in, emb = forward(model, x)
        ref_age, _, ref_emb = model.predict(x, tta_flip=False)
        assert torch.allclose(age, ref_age, atol=1e-4) and torch.allclose(emb, ref_emb, atol=1e-5)
        assert torch.allclose(model.guards(guard_in), model(x)["guards"], atol=1e-5)


def test_views_are_the_face_and_its_small_resaved_copies():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    imgs = np.stack([np.dstack([(xx * 4 + k) % 256, (yy * 4) % 256, np.full((64, 64), 90)]) for k in range(3)])
    imgs = imgs.astype(np.uint8)
    x, r, a, b = views(imgs, rng)
    assert all(v.shape == imgs.shape and v.dtype == np.uint8 for v in (x, r, a, b))
    assert np.array_equal(x, imgs)  # without an occluder mix, the identity view is the face as it is
    assert not np.array_equal(r, imgs)  # brought down to a small working resolution and back
    assert np.abs(a.astype(int) - r.astype(int)).mean() > 0 and np.abs(b.astype(int) - a.astype(int)).mean() > 0


def test_apply_writes_the_teacher_with_the_new_front(tmp_path, teacher):
    from agelens.train.head_refit import STALE

    model, card = teacher
    state = {k: v.clone() for k, v in front_modules(model).state_dict().items()}
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    state[key] = state[key] * 0.5
    torch.save({"front": state, "step": 3, "front_stages": FRONT_STAGES}, tmp_path / "front.pt")
    new, _, new_card = load_weights(apply(tmp_path, tmp_path / "weights"))
    got = front_modules(new).state_dict()[key].float()
    assert torch.allclose(got, state[key].float(), atol=1e-3, rtol=1e-2)
    assert torch.equal(new.head.fc.weight.detach(), model.head.fc.weight.detach().half().float())
    assert new_card["front_refit"]["steps"] == 3 and not set(STALE) & set(new_card)
    assert new_card["config"] == card["config"]


def test_apply_follows_the_stage_count_the_front_was_trained_with(tmp_path, teacher):
    model, _ = teacher
    state = {k: v.clone() for k, v in front_modules(model, FRONT_STAGES + 1).state_dict().items()}
    key = next(k for k in state if k.startswith(f"{FRONT_STAGES + 1}.") and k.endswith("weight") and state[k].ndim == 4)
    state[key] = state[key] * 0.5  # a weight of the extra stage
    torch.save({"front": state, "step": 1, "front_stages": FRONT_STAGES + 1}, tmp_path / "front.pt")
    new, _, card = load_weights(apply(tmp_path, tmp_path / "weights"))
    assert torch.allclose(front_modules(new, FRONT_STAGES + 1).state_dict()[key].float(), state[key].float(),
                          atol=1e-3, rtol=1e-2)
    assert card["front_refit"]["front_stages"] == FRONT_STAGES + 1
    torch.save({"front": state, "step": 1}, tmp_path / "front.pt")  # no stage count: refused
    with pytest.raises(SystemExit, match="not a front re-fit"):
        apply(tmp_path, tmp_path / "weights")


def test_a_fit_folder_without_a_front_is_refused_clearly(tmp_path):
    with pytest.raises(SystemExit, match="front.pt not found"):
        apply(tmp_path, tmp_path / "weights")
