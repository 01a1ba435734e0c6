"""Age heads on a pooled embedding: CORAL, DLDL, MWR, CE-with-expectation, L1 regression.

Every head has the same calls: `forward(emb) -> dict`, `losses(out, age) -> one loss per sample`,
`loss(out, age, weights=None) -> scalar`, `decode(out) -> (age, spread)`; `spread` is a one-sigma uncertainty in
years. `weights` (one per sample) turns the batch mean into sum(w·loss_i)/N (class-balanced / LDS re-weighting,
agelens.fairness); None keeps the plain mean. Group DRO reads `losses` directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import HEADS


class AgeHead(nn.Module):
    def __init__(self, in_features: int, min_age: int = 0, max_age: int = 100) -> None:
        super().__init__()
        self.in_features, self.min_age, self.max_age = in_features, min_age, max_age
        self.num_ages = max_age - min_age + 1
        self.register_buffer("ages", torch.arange(min_age, max_age + 1, dtype=torch.float32), persistent=False)

    def losses(self, out: dict[str, torch.Tensor], age: torch.Tensor) -> torch.Tensor:
        """The training loss of every sample (shape [N])."""
        raise NotImplementedError

    def loss(self, out: dict[str, torch.Tensor], age: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Batch loss: the mean of `losses`, or sum(w_i·l_i)/N with per-sample weights."""
        return self.reduce(self.losses(out, age), weights)

    @staticmethod
    def reduce(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Batch mean, or the per-sample weighted mean sum(w_i·l_i)/N."""
        if weights is None:
            return per_sample.mean()
        return (per_sample * weights.to(per_sample.device, per_sample.dtype)).sum() / per_sample.shape[0]

    def clamp(self, age: torch.Tensor) -> torch.Tensor:
        return age.float().clamp(self.min_age, self.max_age)

    def distribution_decode(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = logits.float().softmax(-1)
        mean = p @ self.ages
        var = p @ self.ages**2 - mean**2
        return mean, var.clamp_min(0).sqrt()


# ---- CORAL (Cao, Mirjalili, Raschka 2020): one shared weight vector, K-1 ordered biases ----------------------


def coral_levels(age: torch.Tensor, num_ages: int, min_age: int = 0) -> torch.Tensor:
    """Extended binary labels: level k is 1 when age > min_age + k (k = 0..K-2)."""
    ks = torch.arange(num_ages - 1, device=age.device, dtype=torch.float32) + min_age
    return (age.float().round()[:, None] > ks[None, :]).float()


def coral_losses(logits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Per sample, the summed binary cross-entropies of the levels; their batch mean is coral_pytorch's coral_loss."""
    logits = logits.float()
    return -torch.sum(F.logsigmoid(logits) * levels + (F.logsigmoid(logits) - logits) * (1 - levels), dim=1)


def coral_proba_to_label(probas: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Rank index = number of level probabilities above the threshold (coral_pytorch.dataset.proba_to_label)."""
    return (probas > threshold).sum(dim=1)


@HEADS.register("coral")
class CoralHead(AgeHead):
    def __init__(self, in_features: int, min_age: int = 0, max_age: int = 100, **_: object) -> None:
        super().__init__(in_features, min_age, max_age)
        self.fc = nn.Linear(in_features, 1, bias=False)
        self.bias = nn.Parameter(torch.linspace(2.0, -2.0, self.num_ages - 1))

    def forward(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(emb) + self.bias}

    def losses(self, out: dict[str, torch.Tensor], age: torch.Tensor) -> torch.Tensor:
        return coral_losses(out["logits"], coral_levels(age, self.num_ages, self.min_age))

    def decode(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # expected rank (sum of level probabilities): smoother than counting levels > 0.5, same ordering
        p = out["logits"].float().sigmoid()
        return self.min_age + p.sum(1), (p * (1 - p)).sum(1).sqrt()


# ---- DLDL (Gao et al. 2017/2018): Gaussian label distribution, KL loss + expectation L1 -----------------------


def gaussian_label_distribution(age: torch.Tensor, ages: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian of width sigma at each age over the head's ages, normalised (a softmax of the log-densities: an age
    far past the range gets its end, where exp() of each density had underflowed to 0 / 0 = NaN)."""
    return torch.softmax(-0.5 * ((ages[None, :] - age.float()[:, None]) / sigma) ** 2, dim=1)


class DistributionHead(AgeHead):
    """A softmax over the ages, decoded as its expectation (spread = its std)."""

    def __init__(self, in_features: int, min_age: int = 0, max_age: int = 100) -> None:
        super().__init__(in_features, min_age, max_age)
        self.fc = nn.Linear(in_features, self.num_ages)

    def forward(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(emb)}

    def decode(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.distribution_decode(out["logits"])


@HEADS.register("dldl")
class DLDLHead(DistributionHead):
    def __init__(self, in_features: int, min_age: int = 0, max_age: int = 100, sigma: float = 2.0,
                 l1_weight: float = 1.0, **_: object) -> None:
        super().__init__(in_features, min_age, max_age)
        self.sigma, self.l1_weight = sigma, l1_weight

    def losses(self, out: dict[str, torch.Tensor], age: torch.Tensor) -> torch.Tensor:
        logits = out["logits"].float()
        target = gaussian_label_distribution(age, self.ages, self.sigma)
        mean = logits.softmax(-1) @ self.ages
        kl = F.kl_div(logits.log_softmax(-1), target, reduction="none").sum(1)  # its mean is "batchmean"
        return kl + self.l1_weight * (mean - age.float()).abs()


# ---- CE with expectation (DEX, Rothe et al. 2015) -------------------------------------------------------------


@HEADS.register("ce")
class CEHead(DistributionHead):
    def __init__(self, in_features: int, min_age: int = 0, max_age: int = 100, **_: object) -> None:
        super().__init__(in_features, min_age, max_age)

    def losses(self, out: dict[str, torch.Tensor], age: torch.Tensor) -> torch.Tensor:
        target = (self.clamp(age).round() - self.min_age).long()
        return F.cross_entropy(out["logits"].float(), target, reduction="none")


# ---- L1 regression --------------------------------------------------------------------------------------------


@HEADS.register("regression")
class RegressionHead(AgeHead):
    """L1 regression of the age (output scaled to the age range) plus a Laplace scale for the spread."""

    def __init__(self, in_features: int, min_age: int = 0, max_age: int = 100, **_: object) -> None:
        super().__init__(in_features, min_age, max_age)
        self.fc = nn.Linear(in_features, 2)
        self.mid, self.half_range = (min_age + max_age) / 2, (max_age - min_age) / 2
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.fc(emb).float()
        return {"mean": self.mid + self.half_range * z[:, 0], "log_b": (z[:, 1] + 1.5).clamp(-3, 5)}

    def losses(self, out: dict[str, torch.Tensor], age: torch.Tensor) -> torch.Tensor:
        err = (out["mean"] - age.float()).abs()
        # L1 drives the mean; the Laplace NLL on the detached error only fits the spread
        nll = err.detach() / out["log_b"].exp() + out["log_b"]
        return err + 0.1 * nll

    def decode(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clamp(out["mean"]), out["log_b"].exp() * 2**0.5


@HEADS.register("binary")
class BinaryHead(AgeHead):
    """One logit for a yes/no target (the occlusion detector): BCE loss, decode → (probability, 0)."""

    def __init__(self, in_features: int, min_age: int = 0, max_age: int = 100, **_: object) -> None:
        super().__init__(in_features, min_age, max_age)
        self.fc = nn.Linear(in_features, 1)

    def forward(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logit": self.fc(emb).float()[:, 0]}

    def losses(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out["logit"], target.float(), reduction="none")

    def decode(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        p = out["logit"].sigmoid()
        return p, torch.zeros_like(p)


# ---- MWR (Shin, Lee, Kim 2022, "Moving Window Regression") ----------------------------------------------------


@HEADS.register("mwr")
class MWRHead(AgeHead):
    """Moving-window relative regression.

    As in MWR, an initial global estimate is refined by a ρ-regressor that places the face inside a window
    [lo, hi] of reference ages: age = (lo + hi)/2 + ρ·(hi − lo)/2, ρ ∈ [−1, 1]; the window is re-centred on
    the new estimate and the step repeated. MWR compares against reference *images*; here each reference
    age has a learned reference embedding (a prototype), so inference needs no reference set on disk.
    Training samples a random window around the true age for the ρ-loss and trains the global estimate
    with CE + expectation L1.
    """

    def __init__(self, in_features: int, min_age: int = 0, max_age: int = 100, window: int = 10,
                 iterations: int = 3, hidden: int = 256, **_: object) -> None:
        super().__init__(in_features, min_age, max_age)
        self.half = max(1, window // 2)
        self.iterations = iterations
        self.global_fc = nn.Linear(in_features, self.num_ages)
        self.proj = nn.Linear(in_features, hidden)
        self.refs = nn.Embedding(self.num_ages, hidden)
        self.rho = nn.Sequential(nn.ReLU(), nn.Linear(3 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Tanh())

    def forward(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.global_fc(emb), "emb": emb}

    def _window(self, center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = center.round().clamp(self.min_age + self.half, self.max_age - self.half)
        return c - self.half, c + self.half

    def relative(self, emb: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        i_lo, i_hi = (lo - self.min_age).long(), (hi - self.min_age).long()
        z = torch.cat([self.proj(emb), self.refs(i_lo), self.refs(i_hi)], 1)
        return self.rho(z).squeeze(1).float()

    def losses(self, out: dict[str, torch.Tensor], age: torch.Tensor) -> torch.Tensor:
        logits = out["logits"].float()
        a = self.clamp(age)
        jitter = torch.randint(-self.half, self.half + 1, a.shape, device=a.device).float()
        lo, hi = self._window(a + jitter)
        target = ((2 * a - lo - hi) / (hi - lo)).clamp(-1, 1)
        per = (F.cross_entropy(logits, (a.round() - self.min_age).long(), reduction="none")
               + (logits.softmax(-1) @ self.ages - a).abs() + (self.relative(out["emb"], lo, hi) - target).abs() * self.half)
        return per

    def decode(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        est, spread = self.distribution_decode(out["logits"])
        for _ in range(self.iterations):
            lo, hi = self._window(est)
            est = (lo + hi) / 2 + self.relative(out["emb"], lo, hi) * (hi - lo) / 2
        return self.clamp(est), spread


def build_head(name: str, in_features: int, min_age: int, max_age: int, *, sigma: float = 2.0, window: int = 10,
               iterations: int = 3, **head_args: object) -> AgeHead:
    return HEADS.build(name, in_features, min_age, max_age, sigma=sigma, window=window, iterations=iterations,
                       **head_args)
