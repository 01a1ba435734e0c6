"""Inference: the AgeEstimator pipeline (detector → alignment → age model)."""
