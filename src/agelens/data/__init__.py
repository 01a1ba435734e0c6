"""Dataset adapters, group-safe splits, preprocessing cache and the training Dataset."""
