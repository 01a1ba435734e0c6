"""The shared training engine and its numerics selection."""
