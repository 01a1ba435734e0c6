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
