"""Demographic-aware sampling: a per-epoch weighted draw that balances groups (age bin, × gender, × race), sharded
disjointly across DDP ranks, plus the per-sample probability of tail (strong) augmentation for rare groups."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..evaluate.metrics import age_bin

UNKNOWN = "unknown"


def group_labels(ages: Sequence[float], genders: Sequence[str | None] | None, races: Sequence[str | None] | None,
                 by: Sequence[str]) -> list[str]:
    """One key per sample joining the `by` attributes: age_bin ("21-30"), age (rounded year), gender, race;
    missing gender/race become "unknown". Example: by=[age_bin, gender] → "21-30|female"."""
    n = len(ages)
    genders = genders if genders is not None else [None] * n
    races = races if races is not None else [None] * n
    cols = {"age_bin": lambda i: age_bin(ages[i]), "age": lambda i: str(int(round(float(ages[i])))),
            "gender": lambda i: genders[i] or UNKNOWN, "race": lambda i: races[i] or UNKNOWN}
    for k in by:
        if k not in cols:
            raise ValueError(f"unknown grouping key {k!r}; choose from {', '.join(cols)}")
    return ["|".join(cols[k](i) for k in by) for i in range(n)]


def records_labels(records: Sequence, by: Sequence[str]) -> list[str]:
    """group_labels for FaceRecords."""
    return group_labels([r.age for r in records], [r.gender for r in records], [r.race for r in records], by)


def balanced_probabilities(labels: Sequence[str], power: float = 1.0) -> np.ndarray:
    """Draw probability per sample ∝ count(group)^-power: power=1 gives every group the same total mass."""
    counts = Counter(labels)
    w = np.array([counts[g] ** -float(power) for g in labels], np.float64)
    return w / w.sum()


def tail_probabilities(labels: Sequence[str], strength: float) -> np.ndarray:
    """Per-sample strong-augmentation probability strength·(1 − count(group)/max count): 0 for the most frequent
    group, close to `strength` for the rarest."""
    if strength <= 0 or not len(labels):
        return np.zeros(len(labels), np.float32)
    counts = Counter(labels)
    top = max(counts.values())
    return np.array([strength * (1 - counts[g] / top) for g in labels], np.float32)


class BalancedSampler(Sampler[int]):
    """Each epoch draws `num_samples` positions (default: the dataset size, rounded up to a multiple of the world
    size) with replacement, with probability ∝ count(group)^-power; the draw depends only on (seed, epoch).
    Rank r of `num_replicas` takes draw[r::num_replicas]: disjoint shards of one draw, like DistributedSampler.
    Call set_epoch(e) before each epoch."""

    def __init__(self, labels: Sequence[str], num_samples: int | None = None, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, power: float = 1.0) -> None:
        if not len(labels):
            raise ValueError("BalancedSampler needs at least one sample")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.p = balanced_probabilities(labels, power)
        self.n = len(labels)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.total = int(math.ceil((num_samples or self.n) / num_replicas)) * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self, epoch: int | None = None) -> np.ndarray:
        """The whole epoch's draw (all ranks)."""
        rng = np.random.default_rng((self.seed, self.epoch if epoch is None else epoch, 0xFA1))
        return rng.choice(self.n, size=self.total, replace=True, p=self.p)

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.total // self.num_replicas

    def expected_draws(self) -> np.ndarray:
        """Expected number of times each position is drawn per epoch (all ranks together)."""
        return self.total * self.p
