"""Specific exceptions; the CLI turns each into a one-line message and a non-zero exit."""


class AgelensError(Exception):
    """Base class for every error agelens raises on purpose."""


class ConfigError(AgelensError):
    """A configuration key or value is invalid."""


class DataError(AgelensError):
    """A dataset, file or cache is missing, unreadable or malformed."""


class ImageError(DataError):
    """An image cannot be decoded or is unusable."""


class NoFaceError(AgelensError):
    """No face was found in an image."""


class CheckpointError(AgelensError):
    """A checkpoint is missing, corrupt or incompatible."""


class ImageTooLargeError(ImageError):
    """An image's dimensions exceed the pixel limit (decompression-bomb guard)."""


class NonFiniteLossError(AgelensError, FloatingPointError):
    """Training diverged: the loss became NaN or infinite."""
