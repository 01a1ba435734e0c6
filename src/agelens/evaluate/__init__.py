"""Metrics (pure functions), prediction tables and metrics.json."""

from .metrics import AGE_BINS, age_bin, compute_metrics

__all__ = ["AGE_BINS", "age_bin", "compute_metrics"]
