import math

import pytest
import torch

from agelens.models.heads import (
    CoralHead,
    DLDLHead,
    MWRHead,
    build_head,
    coral_levels,
    coral_losses,
    coral_proba_to_label,
    gaussian_label_distribution,
)


def test_coral_matches_coral_pytorch():
    from coral_pytorch.dataset import levels_from_labelbatch, proba_to_label
    from coral_pytorch.losses import coral_loss as ref_loss

    torch.manual_seed(0)
    ages = torch.tensor([0, 3, 7, 9, 5])
    levels = coral_levels(ages.float(), num_ages=10)
    assert torch.equal(levels, levels_from_labelbatch(ages, num_classes=10).float())
    logits = torch.randn(5, 9)
    assert coral_losses(logits, levels).mean().item() == pytest.approx(ref_loss(logits, levels).item(), rel=1e-6)
    probas = torch.sigmoid(logits)
    assert torch.equal(coral_proba_to_label(probas), proba_to_label(probas))


def test_coral_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0]])
    levels = torch.tensor([[1.0, 0.0]])
    # -[log σ(0)] - [log(1-σ(0))] = 2 log 2
    assert coral_losses(logits, levels).mean().item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())


def test_coral_decode_counts_levels():
    h = CoralHead(4, 0, 10)
    logits = torch.full((1, 10), -20.0)
    logits[0, :6] = 20.0
    age, spread = h.decode({"logits": logits})
    assert age.item() == pytest.approx(6.0, abs=1e-4) and spread.item() < 1e-3


def test_dldl_target_and_decode():
    ages = torch.arange(0, 11).float()
    t = gaussian_label_distribution(torch.tensor([5.0]), ages, 1.0)
    assert t.sum().item() == pytest.approx(1.0) and t.argmax().item() == 5
    h = DLDLHead(4, 0, 10)
    logits = torch.full((1, 11), -30.0)
    logits[0, 3] = logits[0, 5] = 0.0
    age, spread = h.decode({"logits": logits})
    assert age.item() == pytest.approx(4.0, abs=1e-4) and spread.item() == pytest.approx(1.0, abs=1e-4)


def test_mwr_refines_inside_window():
    torch.manual_seed(0)
    h = MWRHead(8, 0, 100, window=10, iterations=2)
    out = h(torch.randn(3, 8))
    age, _ = h.decode(out)
    init = out["logits"].softmax(-1) @ h.ages
    assert ((age - init).abs() <= 5 * 2 + 1).all()


@pytest.mark.parametrize("name", ["coral", "dldl", "mwr", "ce", "regression"])
def test_every_head_learns_a_linear_age(name):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    age = (x[:, 0] * 12 + 40).clamp(1, 90).round()
    head = build_head(name, 8, 0, 100)
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    mae0 = (head.decode(head(x))[0] - age).abs().mean().item()
    for _ in range(300):
        opt.zero_grad()
        head.loss(head(x), age).backward()
        opt.step()
    mae = (head.decode(head(x))[0] - age).abs().mean().item()
    assert mae < 0.5 * mae0 and mae < 6, (name, mae0, mae)


# ---- pinned by hand (a mutation audit found these decodings and losses unguarded; min_age 0 hid offsets) ----


def test_decodes_honour_min_age_and_spreads_are_standard_deviations():
    coral = CoralHead(4, 10, 20)
    age, spread = coral.decode({"logits": torch.full((1, 10), 50.0)})  # every level sure: the top age
    assert age.item() == pytest.approx(20.0)
    _, spread = coral.decode({"logits": torch.zeros(1, 10)})  # each level p = 0.5: sqrt(10 · 0.25)
    assert spread.item() == pytest.approx(math.sqrt(2.5))
    dldl = DLDLHead(4, 0, 10)
    logits = torch.full((1, 11), -1e4)
    logits[0, [3, 7]] = 0.0  # equal mass at 3 and 7: mean 5, std 2 (its variance would read 4)
    age, spread = dldl.decode({"logits": logits})
    assert age.item() == pytest.approx(5.0) and spread.item() == pytest.approx(2.0)
    reg = build_head("regression", 8, 0, 100)  # zero-initialised: the middle of the range, spread b·√2 at log_b 0
    assert reg.decode(reg(torch.zeros(1, 8)))[0].item() == pytest.approx(50.0)
    assert reg.decode({"mean": torch.tensor([150.0]), "log_b": torch.tensor([0.0])})[0].item() == 100.0
    assert reg.decode({"mean": torch.tensor([30.0]), "log_b": torch.tensor([0.0])})[1].item() == pytest.approx(2**0.5)


def test_dldl_target_has_the_configured_width():
    t = gaussian_label_distribution(torch.tensor([5.0]), torch.arange(0.0, 11.0), 2.0)[0]
    assert (t[7] / t[5]).item() == pytest.approx(math.exp(-0.5))  # one sigma away


@pytest.mark.parametrize("name", ["ce", "mwr"])
def test_class_targets_are_counted_from_min_age(name):
    head = build_head(name, 8, 10, 20, window=4)
    logits = torch.full((2, 11), -30.0)
    logits[0, 2] = logits[1, 10] = 30.0  # sure of 12 and of 20
    age = torch.tensor([12.0, 20.0])
    if name == "ce":
        assert head.losses({"logits": logits}, age).max().item() < 1e-6
    else:  # MWR's global term: cross-entropy of the same classes (its window terms are random)
        assert torch.nn.functional.cross_entropy(logits, (age - head.min_age).long()).item() < 1e-6
        assert head.clamp(torch.tensor([25.0])).item() == 20.0


def test_weighted_loss_divides_by_the_batch_size():
    per = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert DLDLHead.reduce(per, torch.tensor([2.0, 0.0, 0.0, 0.0])).item() == pytest.approx(0.5)  # 2·1 / 4
    assert DLDLHead.reduce(per, None).item() == pytest.approx(2.5)


def test_mwr_moves_by_the_relative_step_inside_its_window():
    head = MWRHead(8, 0, 100, window=10, iterations=1)
    logits = torch.full((1, 101), -1e4)
    logits[0, 40] = 0.0  # the global estimate: 40
    head.relative = lambda emb, lo, hi: torch.ones(len(emb))  # ρ = +1: the top of the window [35, 45]
    age, _ = head.decode({"logits": logits, "emb": torch.zeros(1, 8)})
    assert age.item() == pytest.approx(45.0)


def test_binary_head_decodes_the_probability_of_yes():
    from agelens.models.heads import BinaryHead

    p, _ = BinaryHead(4).decode({"logit": torch.tensor([5.0, -5.0])})
    assert p[0].item() > 0.99 and p[1].item() < 0.01
