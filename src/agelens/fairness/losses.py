"""Fairness-aware loss terms: class-balanced (effective number) and LDS per-sample weights, the KNN-adjustment
loss and online group DRO. Total training loss (docs/fairness.md): L = L_head(1 + λ·w) + γ·L_knn, where with group
DRO on the batch mean of L_head(1 + λ·w) becomes Σ_g q_g·(mean over group g)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d

from ..config import FairnessConfig


def effective_number_weights(counts: Sequence[float], beta: float) -> np.ndarray:
    """Cui et al. 2019: class weight (1 − β) / (1 − β^n) = 1 / effective number of samples E_n (unnormalised)."""
    n = np.asarray(counts, np.float64)
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    return (1.0 - beta) / np.maximum(1.0 - np.power(beta, n), 1e-12)


def class_balanced_weights(labels: Sequence[str], beta: float, draws: np.ndarray | None = None) -> np.ndarray:
    """Per-sample effective-number weights of each sample's class; class sizes are the summed `draws` (expected
    draws per epoch, default 1 each), so the weights correct the distribution the sampler really shows."""
    draws = np.ones(len(labels)) if draws is None else np.asarray(draws, np.float64)
    counts: dict[str, float] = defaultdict(float)
    for g, d in zip(labels, draws):
        counts[g] += float(d)
    classes = sorted(counts)
    w = dict(zip(classes, effective_number_weights([counts[c] for c in classes], beta)))
    return np.array([w[g] for g in labels], np.float64)


def lds_kernel_window(ks: int, sigma: float) -> np.ndarray:
    """Yang et al. 2021 Gaussian LDS window of odd size ks, peak 1."""
    half = (ks - 1) // 2
    base = np.zeros(2 * half + 1)
    base[half] = 1.0
    win = gaussian_filter1d(base, sigma=sigma)
    return win / win.max()


def lds_weights(ages: Sequence[float], ks: int = 5, sigma: float = 2.0, mode: str = "inverse_sqrt",
                draws: np.ndarray | None = None, max_age: int = 120) -> np.ndarray:
    """Label-distribution smoothing (Yang et al. 2021, DIR): the per-year label histogram (counts of expected
    draws; square-rooted for inverse_sqrt, clipped to [5, 1000] for inverse, as in their code) is convolved with a
    Gaussian window; each sample's weight is 1 / smoothed density at its (rounded) age. Unnormalised."""
    if mode not in ("inverse_sqrt", "inverse"):
        raise ValueError(f"mode must be inverse_sqrt|inverse, got {mode!r}")
    a = np.clip(np.round(np.asarray(ages, np.float64)).astype(int), 0, max_age)
    draws = np.ones(len(a)) if draws is None else np.asarray(draws, np.float64)
    hist = np.bincount(a, weights=draws, minlength=max_age + 1).astype(np.float64)
    hist = np.sqrt(hist) if mode == "inverse_sqrt" else np.clip(hist, 5, 1000)
    smoothed = np.convolve(hist, lds_kernel_window(ks, sigma), mode="same")
    return 1.0 / np.maximum(smoothed[a], 1e-12)


def normalise(w: np.ndarray, draws: np.ndarray | None = None, max_weight: float | None = None) -> np.ndarray:
    """Scale so the draw-weighted mean is 1 (the loss keeps its scale), then clip to max_weight."""
    d = np.ones(len(w)) if draws is None else np.asarray(draws, np.float64)
    w = np.asarray(w, np.float64) * d.sum() / max(float((w * d).sum()), 1e-12)
    return np.minimum(w, max_weight) if max_weight else w


def sample_weights(cfg: FairnessConfig, ages: Sequence[float], genders: Sequence[str | None],
                   races: Sequence[str | None], draws: np.ndarray | None = None) -> np.ndarray | None:
    """Per-sample loss weights from the config (CB, LDS or their product), normalised; None when both are off."""
    from .sampling import group_labels

    if not (cfg.cb_beta > 0 or cfg.lds):
        return None
    w = np.ones(len(ages))
    if cfg.cb_beta > 0:
        w *= class_balanced_weights(group_labels(ages, genders, races, cfg.cb_by), cfg.cb_beta, draws)
    if cfg.lds:
        w *= lds_weights(ages, cfg.lds_kernel, cfg.lds_sigma, cfg.lds_mode, draws)
    return normalise(w, draws, cfg.max_weight).astype(np.float32)


class KnnAdjustment(torch.nn.Module):
    """γ·KNN term: pulls each prediction towards the similarity-weighted mean true age of its k nearest neighbours
    (cosine similarity of detached embeddings) among a FIFO memory bank of recent training samples and the rest of
    the batch (never itself: with the faces' dataset indices given, none of its own copies either, which a balanced
    sampler drawing with replacement puts in the bank and the batch). Loss = mean |pred_i − Σ_j s_ij·age_j /
    Σ_j s_ij| with s clipped at 0 over the k nearest others; 0 while there are fewer than 2 samples. The bank is a
    buffer, so it is saved in checkpoints."""

    def __init__(self, k: int = 10, bank_size: int = 2048) -> None:
        super().__init__()
        self.k, self.bank_size = k, bank_size
        self.register_buffer("bank_emb", torch.zeros(0))
        self.register_buffer("bank_age", torch.zeros(0))
        self.register_buffer("bank_idx", torch.zeros(0, dtype=torch.long))  # -1: index not known

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("bank_emb", "bank_age", "bank_idx"):  # the bank's size varies: adopt the saved shape
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        if prefix + "bank_idx" not in state_dict and prefix + "bank_age" in state_dict:  # a checkpoint from before
            state_dict[prefix + "bank_idx"] = torch.full(state_dict[prefix + "bank_age"].shape, -1, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def targets(self, emb: torch.Tensor, ages: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor | None:
        """Neighbour targets for a batch (no gradient), then the batch joins the bank. idx: the faces' dataset
        indices (their own copies are not neighbours)."""
        z = F.normalize(emb.detach().float(), dim=1)
        a = ages.detach().float().to(z.device)
        b = len(z)
        ids = torch.full((b,), -1, dtype=torch.long, device=z.device) if idx is None else idx.long().to(z.device)
        bank_e = self.bank_emb.to(z.device) if self.bank_emb.numel() and self.bank_emb.shape[1] == z.shape[1] else z[:0]
        bank_a = self.bank_age.to(z.device)[: len(bank_e)]
        bank_i = self.bank_idx.to(z.device)[: len(bank_e)]  # as long as the bank (a checkpoint without it: -1s)
        keys, vals, key_ids = torch.cat([bank_e, z]), torch.cat([bank_a, a]), torch.cat([bank_i, ids])
        sims = z @ keys.T
        sims[torch.arange(b, device=z.device), len(bank_e) + torch.arange(b, device=z.device)] = -float("inf")
        same = (ids[:, None] == key_ids[None, :]) & (ids[:, None] >= 0)
        sims[same] = -float("inf")
        out = None
        k = min(self.k, int(torch.isfinite(sims).sum(1).min()) if b else 0)
        if k >= 1:
            top, nn = sims.topk(k, dim=1)
            w = top.clamp_min(0) + 1e-6
            out = (w * vals[nn]).sum(1) / w.sum(1)
        if self.bank_size > 0:
            self.bank_emb = torch.cat([bank_e, z])[-self.bank_size:]
            self.bank_age = torch.cat([bank_a, a])[-self.bank_size:]
            self.bank_idx = torch.cat([bank_i, ids])[-self.bank_size:]
        return out

    def forward(self, pred: torch.Tensor, emb: torch.Tensor, ages: torch.Tensor,
                idx: torch.Tensor | None = None) -> torch.Tensor:
        t = self.targets(emb, ages, idx)
        if t is None:
            return pred.sum() * 0.0
        return (pred.float() - t).abs().mean()


class GroupDRO(torch.nn.Module):
    """Online group DRO (Sagawa et al. 2020, "Distributionally Robust Neural Networks", Algorithm 1): a distribution
    q over the groups (e.g. age bins) is moved towards the groups with the highest batch loss, q_g ← q_g·exp(η·L_g)
    renormalised, and the batch loss is Σ_g q_g·L_g / Σ_g q_g over the groups present in the batch (L_g: mean loss of
    the batch's members of g). With η = 0, q stays uniform: a group-balanced mean. q is a buffer (checkpointed);
    under DDP every rank keeps its own.

    `strata` (one stratum index per group, e.g. the age bin of an age-bin × race × gender group) makes it DRO
    *within* strata: q is renormalised inside each stratum and each stratum keeps the mass `stratum_mass` (its
    share of the training data), so q moves weight between groups of the same age, never between ages."""

    def __init__(self, groups: np.ndarray, n_groups: int, eta: float, strata: np.ndarray | None = None,
                 stratum_mass: np.ndarray | None = None) -> None:
        super().__init__()
        self.eta = eta
        self.groups = torch.as_tensor(np.asarray(groups), dtype=torch.long)
        strata = np.zeros(n_groups, np.int64) if strata is None else np.asarray(strata, np.int64)
        if len(strata) != n_groups:
            raise ValueError(f"strata must give one stratum per group ({n_groups}), got {len(strata)}")
        n_strata = int(strata.max()) + 1 if n_groups else 1
        mass = np.ones(n_strata) if stratum_mass is None else np.asarray(stratum_mass, np.float64)
        self.strata = torch.as_tensor(strata)
        per_group = np.bincount(strata, minlength=n_strata)[strata]
        self.register_buffer("q", torch.as_tensor(mass[strata] / mass.sum() / per_group, dtype=torch.float32))
        self.mass = torch.as_tensor(mass / mass.sum(), dtype=torch.float32)

    def _normalise(self, q: torch.Tensor) -> torch.Tensor:
        strata = self.strata.to(q.device)
        totals = torch.zeros(len(self.mass), device=q.device, dtype=q.dtype).index_add(0, strata, q)
        return q / totals[strata] * self.mass.to(q.device, q.dtype)[strata]

    def forward(self, per_sample: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        g = self.groups[idx.long().cpu()].to(per_sample.device)
        n = torch.bincount(g, minlength=len(self.q)).to(per_sample.dtype)
        sums = torch.zeros(len(self.q), device=per_sample.device, dtype=per_sample.dtype).index_add(0, g, per_sample)
        mean = sums / n.clamp_min(1)
        present = n > 0
        with torch.no_grad():
            q = self.q.to(per_sample.device) * torch.exp(self.eta * mean.detach() * present)
            q = self._normalise(q)
            self.q = q.to(self.q.device)
        w = q * present
        return (w * mean).sum() / w.sum()


class FairLoss:
    """The training loss with the fairness terms: head.loss(out, y, 1 + λ·w[idx]) + γ·KNN(out); with group DRO the
    batch mean of the (re-weighted) per-sample losses becomes GroupDRO's q-weighted mean over groups."""

    def __init__(self, head, weights: np.ndarray | None, lambda_cb: float, knn: KnnAdjustment | None,
                 gamma_knn: float, dro: GroupDRO | None = None) -> None:
        self.head = head
        self.weights = None if weights is None or lambda_cb == 0 else torch.from_numpy(1.0 + lambda_cb * weights)
        self.knn, self.gamma = (knn, gamma_knn) if gamma_knn > 0 else (None, 0.0)
        self.dro = dro

    @property
    def active(self) -> bool:
        return self.weights is not None or self.knn is not None or self.dro is not None

    def __call__(self, out: dict, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        w = None if self.weights is None else self.weights[idx.long().cpu()].to(y.device)
        if self.dro is None:
            loss = self.head.loss(out, y, w)
        else:
            per = self.head.losses(out, y)
            loss = self.dro(per if w is None else per * w.to(per.dtype), idx)
        if self.knn is not None:
            loss = loss + self.gamma * self.knn(self.head.decode(out)[0], out["embedding"], y, idx)
        return loss
